"""Qwen3-VL architecture hyper-parameters, parsed from a Hugging Face config.json.

Accepts both spellings transformers has written: `rope_scaling` + `rope_theta` (4.57) and
`rope_parameters` (5.x). Anything we cannot run raises CheckpointError naming the field.
"""
from __future__ import annotations

import json
import math
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


_MISSING = object()


def _need(cfg: dict, key: str, where: str):
    if key not in cfg:
        raise CheckpointError(f"{where} has no '{key}'")
    return cfg[key]


def _section(cfg: dict, key: str, where: str) -> dict:
    value = _need(cfg, key, where)
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: {key} must be a JSON object, got {value!r}")
    return value


def _int(cfg: dict, key: str, where: str, default=_MISSING, minimum: int = 1) -> int:
    """An integer field >= minimum; null counts as absent (HF writes null for unset fields)."""
    value = cfg.get(key)
    if value is None:
        if default is _MISSING:
            raise CheckpointError(f"{where} has no '{key}'")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CheckpointError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _float(cfg: dict, key: str, where: str, default: float) -> float:
    """A positive finite number (epsilons, rotary bases)."""
    value = cfg.get(key)
    if value is None:
        return default
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or value <= 0):
        raise CheckpointError(f"{where}: {key} must be a positive finite number, got {value!r}")
    return float(value)


def _typed(cfg: dict, key: str, where: str, kind: type, default):
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise CheckpointError(f"{where}: {key} must be a {kind.__name__}, got {value!r}")
    return value


def _int_list(value, key: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise CheckpointError(f"{where}: {key} must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def _rope(text: dict, where: str) -> tuple[float, tuple[int, int, int]]:
    params = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise CheckpointError(f"{where}: rope_parameters / rope_scaling must be a JSON object, got {params!r}")
    theta = _float(params, "rope_theta", where, None) or _float(text, "rope_theta", where, None)
    if theta is None:
        raise CheckpointError(f"{where} has no rope_theta (in text_config or its rope parameters)")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise CheckpointError(f"{where}: rope_type {rope_type!r} is not supported (only 'default')")
    section = _int_list(params.get("mrope_section", [24, 20, 20]), "mrope_section", where)
    if len(section) != 3:
        raise CheckpointError(f"{where}: mrope_section must have 3 entries, got {list(section)}")
    if params.get("mrope_interleaved") is False:
        raise CheckpointError(f"{where}: non-interleaved M-RoPE is not supported")
    return theta, section


def parse_config(cfg: dict, where: str = "config.json") -> ModelConfig:
    """Builds a ModelConfig from the dict of a Qwen3-VL config.json. CheckpointError naming
    `where` and the field for a missing field, a wrong type or a value out of range."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where} must hold a JSON object")
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        archs = cfg.get("architectures")
        raise CheckpointError(
            f"{where}: unsupported model_type {model_type!r} (architectures {archs}); "
            f"Baton runs {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    text = _section(cfg, "text_config", where)
    vision = _section(cfg, "vision_config", where)
    tw = f"{where} text_config"
    vw = f"{where} vision_config"
    theta, section = _rope(text, tw)
    heads = _int(text, "num_attention_heads", tw)
    hidden = _int(text, "hidden_size", tw)
    head_dim = _int(text, "head_dim", tw, default=hidden // heads)
    if head_dim < 2 or head_dim % 2:
        raise CheckpointError(f"{tw}: head_dim must be an even integer >= 2, got {head_dim}")
    if sum(section) != head_dim // 2:
        raise CheckpointError(f"{tw}: mrope_section {list(section)} must sum to head_dim/2 = {head_dim // 2}")
    text_cfg = TextConfig(
        vocab_size=_int(text, "vocab_size", tw),
        hidden_size=hidden,
        intermediate_size=_int(text, "intermediate_size", tw),
        num_hidden_layers=_int(text, "num_hidden_layers", tw),
        num_attention_heads=heads,
        num_key_value_heads=_int(text, "num_key_value_heads", tw, default=heads),
        head_dim=head_dim,
        rms_norm_eps=_float(text, "rms_norm_eps", tw, 1e-6),
        rope_theta=theta,
        mrope_section=section,
        max_position_embeddings=_int(text, "max_position_embeddings", tw, default=262144),
        attention_bias=_typed(text, "attention_bias", tw, bool, False),
        hidden_act=_typed(text, "hidden_act", tw, str, "silu"),
    )
    if text_cfg.num_attention_heads % text_cfg.num_key_value_heads:
        raise CheckpointError(f"{tw}: num_attention_heads must be a multiple of num_key_value_heads")
    if text_cfg.hidden_act != "silu":
        raise CheckpointError(f"{tw}: hidden_act {text_cfg.hidden_act!r} is not supported (only 'silu')")
    vrope = _typed(vision, "rope_parameters", vw, dict, {})
    vision_cfg = VisionConfig(
        depth=_int(vision, "depth", vw),
        hidden_size=_int(vision, "hidden_size", vw),
        intermediate_size=_int(vision, "intermediate_size", vw),
        num_heads=_int(vision, "num_heads", vw),
        in_channels=_int(vision, "in_channels", vw, default=3),
        patch_size=_int(vision, "patch_size", vw, default=16),
        temporal_patch_size=_int(vision, "temporal_patch_size", vw, default=2),
        spatial_merge_size=_int(vision, "spatial_merge_size", vw, default=2),
        out_hidden_size=_int(vision, "out_hidden_size", vw),
        num_position_embeddings=_int(vision, "num_position_embeddings", vw, default=2304),
        deepstack_visual_indexes=_int_list(vision.get("deepstack_visual_indexes", ()),
                                           "deepstack_visual_indexes", vw),
        hidden_act=_typed(vision, "hidden_act", vw, str, "gelu_pytorch_tanh"),
        rope_theta=_float(vrope, "rope_theta", f"{vw} rope_parameters", 10000.0),
    )
    if vision_cfg.hidden_size % vision_cfg.num_heads:
        raise CheckpointError(f"{vw}: hidden_size {vision_cfg.hidden_size} is not a multiple of "
                              f"num_heads {vision_cfg.num_heads}")
    if math.isqrt(vision_cfg.num_position_embeddings) ** 2 != vision_cfg.num_position_embeddings:
        raise CheckpointError(f"{vw}: num_position_embeddings must be a square (a grid of positions), "
                              f"got {vision_cfg.num_position_embeddings}")
    if vision_cfg.out_hidden_size != text_cfg.hidden_size:
        raise CheckpointError(
            f"{vw}: out_hidden_size {vision_cfg.out_hidden_size} != text hidden_size {text_cfg.hidden_size}"
        )
    if any(i >= vision_cfg.depth for i in vision_cfg.deepstack_visual_indexes):
        raise CheckpointError(f"{vw}: deepstack_visual_indexes must be < depth {vision_cfg.depth}")
    if len(vision_cfg.deepstack_visual_indexes) > text_cfg.num_hidden_layers:
        raise CheckpointError(f"{vw}: more deepstack layers than text decoder layers")
    tie = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    if not isinstance(tie, bool):
        raise CheckpointError(f"{where}: tie_word_embeddings must be true or false, got {tie!r}")
    eos = text.get("eos_token_id", cfg.get("eos_token_id"))
    eos_ids = () if eos is None else _int_list(eos if isinstance(eos, list) else [eos], "eos_token_id", where)
    dtype = text.get("dtype") or text.get("torch_dtype") or cfg.get("torch_dtype") or "float32"
    if not isinstance(dtype, str):
        raise CheckpointError(f"{where}: dtype must be a string such as 'bfloat16', got {dtype!r}")
    return ModelConfig(
        text=text_cfg,
        vision=vision_cfg,
        image_token_id=_int(cfg, "image_token_id", where, default=151655, minimum=0),
        video_token_id=_int(cfg, "video_token_id", where, default=151656, minimum=0),
        vision_start_token_id=_int(cfg, "vision_start_token_id", where, default=151652, minimum=0),
        vision_end_token_id=_int(cfg, "vision_end_token_id", where, default=151653, minimum=0),
        tie_word_embeddings=tie,
        torch_dtype=dtype,
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
