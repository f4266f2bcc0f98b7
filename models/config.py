"""Qwen3-VL architecture hyper-parameters, parsed from a Hugging Face config.json.

Accepts both spellings transformers has written: `rope_scaling` + `rope_theta` (4.57) and
`rope_parameters` (5.x). Anything we cannot run raises CheckpointError naming the field.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from baton.errors import CheckpointError

SUPPORTED_MODEL_TYPES = ("qwen3_vl",)


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, int, int]
    max_position_embeddings: int
    attention_bias: bool = False
    hidden_act: str = "silu"


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    out_hidden_size: int
    num_position_embeddings: int
    deepstack_visual_indexes: tuple[int, ...]
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened pixel patch: C * T * P * P."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class ModelConfig:
    text: TextConfig
    vision: VisionConfig
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    tie_word_embeddings: bool
    torch_dtype: str = "float32"
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    model_type: str = "qwen3_vl"  # config.json's; picks the model class (models.registry)


def rope_inv_freq(dim: int, theta: float) -> torch.Tensor:
    """Rotary inverse frequencies for a rotated width of `dim`, float32 on the CPU."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim))


def _need(cfg: dict, key: str, where: str):
    if key not in cfg:
        raise CheckpointError(f"{where} has no '{key}'")
    return cfg[key]


def _rope(text: dict, where: str) -> tuple[float, tuple[int, int, int]]:
    params = text.get("rope_parameters") or text.get("rope_scaling") or {}
    theta = params.get("rope_theta", text.get("rope_theta"))
    if theta is None:
        raise CheckpointError(f"{where} has no rope_theta (in text_config or its rope parameters)")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise CheckpointError(f"{where}: rope_type {rope_type!r} is not supported (only 'default')")
    section = params.get("mrope_section", [24, 20, 20])
    if len(section) != 3:
        raise CheckpointError(f"{where}: mrope_section must have 3 entries, got {section}")
    if params.get("mrope_interleaved") is False:
        raise CheckpointError(f"{where}: non-interleaved M-RoPE is not supported")
    return float(theta), tuple(int(s) for s in section)


def parse_config(cfg: dict, where: str = "config.json") -> ModelConfig:
    """Builds a ModelConfig from the dict of a Qwen3-VL config.json."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        archs = cfg.get("architectures")
        raise CheckpointError(
            f"{where}: unsupported model_type {model_type!r} (architectures {archs}); "
            f"Baton runs {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    text = _need(cfg, "text_config", where)
    vision = _need(cfg, "vision_config", where)
    tw = f"{where} text_config"
    vw = f"{where} vision_config"
    theta, section = _rope(text, tw)
    heads = int(_need(text, "num_attention_heads", tw))
    hidden = int(_need(text, "hidden_size", tw))
    head_dim = int(text.get("head_dim") or hidden // heads)
    if sum(section) != head_dim // 2:
        raise CheckpointError(f"{tw}: mrope_section {list(section)} must sum to head_dim/2 = {head_dim // 2}")
    text_cfg = TextConfig(
        vocab_size=int(_need(text, "vocab_size", tw)),
        hidden_size=hidden,
        intermediate_size=int(_need(text, "intermediate_size", tw)),
        num_hidden_layers=int(_need(text, "num_hidden_layers", tw)),
        num_attention_heads=heads,
        num_key_value_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        mrope_section=section,
        max_position_embeddings=int(text.get("max_position_embeddings", 262144)),
        attention_bias=bool(text.get("attention_bias", False)),
        hidden_act=text.get("hidden_act", "silu"),
    )
    if text_cfg.num_attention_heads % text_cfg.num_key_value_heads:
        raise CheckpointError(f"{tw}: num_attention_heads must be a multiple of num_key_value_heads")
    if text_cfg.hidden_act != "silu":
        raise CheckpointError(f"{tw}: hidden_act {text_cfg.hidden_act!r} is not supported (only 'silu')")
    vrope = vision.get("rope_parameters") or {}
    vision_cfg = VisionConfig(
        depth=int(_need(vision, "depth", vw)),
        hidden_size=int(_need(vision, "hidden_size", vw)),
        intermediate_size=int(_need(vision, "intermediate_size", vw)),
        num_heads=int(_need(vision, "num_heads", vw)),
        in_channels=int(vision.get("in_channels", 3)),
        patch_size=int(vision.get("patch_size", 16)),
        temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
        spatial_merge_size=int(vision.get("spatial_merge_size", 2)),
        out_hidden_size=int(_need(vision, "out_hidden_size", vw)),
        num_position_embeddings=int(vision.get("num_position_embeddings", 2304)),
        deepstack_visual_indexes=tuple(int(i) for i in vision.get("deepstack_visual_indexes", ())),
        hidden_act=vision.get("hidden_act", "gelu_pytorch_tanh"),
        rope_theta=float(vrope.get("rope_theta", 10000.0)),
    )
    if vision_cfg.out_hidden_size != text_cfg.hidden_size:
        raise CheckpointError(
            f"{vw}: out_hidden_size {vision_cfg.out_hidden_size} != text hidden_size {text_cfg.hidden_size}"
        )
    if any(i >= vision_cfg.depth for i in vision_cfg.deepstack_visual_indexes):
        raise CheckpointError(f"{vw}: deepstack_visual_indexes must be < depth {vision_cfg.depth}")
    if len(vision_cfg.deepstack_visual_indexes) > text_cfg.num_hidden_layers:
        raise CheckpointError(f"{vw}: more deepstack layers than text decoder layers")
    tie = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    eos = text.get("eos_token_id", cfg.get("eos_token_id"))
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    return ModelConfig(
        text=text_cfg,
        vision=vision_cfg,
        image_token_id=int(cfg.get("image_token_id", 151655)),
        video_token_id=int(cfg.get("video_token_id", 151656)),
        vision_start_token_id=int(cfg.get("vision_start_token_id", 151652)),
        vision_end_token_id=int(cfg.get("vision_end_token_id", 151653)),
        tie_word_embeddings=bool(tie),
        torch_dtype=str(text.get("dtype") or text.get("torch_dtype") or cfg.get("torch_dtype") or "float32"),
        eos_token_ids=eos_ids,
        model_type=model_type,
    )


def load_config(checkpoint_dir: str | Path) -> ModelConfig:
    path = Path(checkpoint_dir) / "config.json"
    if not Path(checkpoint_dir).is_dir():
        raise CheckpointError(f"checkpoint dir {checkpoint_dir} does not exist or is not a directory")
    if not path.is_file():
        raise CheckpointError(f"checkpoint dir {checkpoint_dir} has no config.json")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return parse_config(cfg, where=str(path))
