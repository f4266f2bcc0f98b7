"""The Qwen3-VL sizes the analysis knows, and scaled-down variants of them for short sweeps.

A scaled variant keeps every width of the real config (hidden sizes, heads, MLP, vocabulary,
patch and merge sizes) and only drops layers: fewer text decoder layers and vision blocks, and
the deepstack levels remapped into the shorter tower. Per-layer costs, the LM head and the
mergers are therefore the real ones; the cost model reads the variant's own config.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from baton.models.config import ModelConfig, parse_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "models" / "configs"
REAL_SIZES = ("2b", "4b", "8b", "32b")


@dataclass(frozen=True)
class ModelVariant:
    name: str          # "qwen3-vl-2b" or "qwen3-vl-2b[L2/V2]" for a scaled one
    size: str          # "2b", ...
    config: dict       # config.json dict
    scaled: bool

    @property
    def model_config(self) -> ModelConfig:
        return parse_config(self.config, where=self.name)

    @property
    def note(self) -> str:
        if not self.scaled:
            return "real size"
        t, v = self.config["text_config"], self.config["vision_config"]
        real = real_config(self.size)
        return (f"scaled: {t['num_hidden_layers']}/{real['text_config']['num_hidden_layers']} text layers, "
                f"{v['depth']}/{real['vision_config']['depth']} vision blocks, same widths")


def real_config(size: str) -> dict:
    path = CONFIG_DIR / f"qwen3-vl-{size}.config.json"
    if not path.is_file():
        raise ValueError(f"unknown Qwen3-VL size {size!r}; known: {', '.join(REAL_SIZES)}")
    return json.loads(path.read_text())


def real_variant(size: str) -> ModelVariant:
    return ModelVariant(f"qwen3-vl-{size}", size, real_config(size), scaled=False)


def scaled_variant(size: str, text_layers: int, vision_depth: int) -> ModelVariant:
    """The real config of `size` with `text_layers` decoder layers and `vision_depth` vision blocks."""
    cfg = copy.deepcopy(real_config(size))
    text, vision = cfg["text_config"], cfg["vision_config"]
    if not (1 <= text_layers <= text["num_hidden_layers"] and 1 <= vision_depth <= vision["depth"]):
        raise ValueError(f"scaled {size}: need 1 <= text_layers <= {text['num_hidden_layers']} "
                         f"and 1 <= vision_depth <= {vision['depth']}")
    depth = vision["depth"]
    if (text_layers, vision_depth) == (text["num_hidden_layers"], depth):
        return real_variant(size)
    levels = sorted({i * vision_depth // depth for i in vision.get("deepstack_visual_indexes", [])})
    vision["deepstack_visual_indexes"] = levels[:text_layers]
    vision["depth"] = vision_depth
    text["num_hidden_layers"] = text_layers
    return ModelVariant(f"qwen3-vl-{size}[L{text_layers}/V{vision_depth}]", size, cfg, scaled=True)


def parse_variant(text: str) -> ModelVariant:
    """"2b" (real size) or "2b:L2/V2" (2 text layers, 2 vision blocks)."""
    size, _, scale = text.lower().partition(":")
    if not scale:
        return real_variant(size)
    try:
        layers, depth = scale.split("/")
        return scaled_variant(size, int(layers.lstrip("l")), int(depth.lstrip("v")))
    except ValueError as e:
        raise ValueError(f"model {text!r}: expected SIZE or SIZE:L<text layers>/V<vision blocks> ({e})") from None
