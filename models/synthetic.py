"""Random-weight Qwen3-VL checkpoints in the real Hugging Face layout.

Tests, the demo and the benchmarks run on these: nothing is downloaded. A checkpoint dir holds
config.json (the spelling real Qwen3-VL checkpoints use: `rope_scaling` + `rope_theta`),
model.safetensors (or shards + model.safetensors.index.json) with exactly the parameter names
`Qwen3VLForConditionalGeneration.save_pretrained` writes, tokenizer.json + tokenizer_config.json
(Qwen special tokens, chat template), generation_config.json and preprocessor_config.json.

Weights are drawn per tensor from a generator seeded by (seed, parameter name), so a
checkpoint is reproducible whatever the shard layout or dtype. Scales are chosen so greedy
decoding is neither flat nor stuck on one token: matrices ~ N(0, 1/fan_in); token embeddings
and the LM head ~ N(0, (LOGIT_STD^2)/hidden), so logits have std ~LOGIT_STD; the projections
that write into the residual stream are scaled so the stream grows to ~RESIDUAL_STD per
element, which keeps a tied head from mostly predicting the input token again; the text
attention's q/k norm weights ~ QK_NORM_SCALE * (1 + N(0, 0.1^2)), so attention is sharp
rather than a near-uniform average (which makes deep random stacks loop on a few tokens);
other norm weights ~ 1 + N(0, 0.1^2); biases ~ N(0, 0.02^2).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from baton.models import tokenizer_builder
from baton.models.config import parse_config
from baton.models.param_counts import parameter_counts

GENERATOR_VERSION = 3  # bump when weights / files for the same preset change

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Presets: overrides of the architecture (same keys as config.json) plus three extras,
# "image_processor" (min_pixels / max_pixels), "max_shard_size" (default sharding) and
# "vocab_size" (embedding rows beyond the tokenizer's, as in a real checkpoint).
_TINY_PIXELS = {"min_pixels": 32 * 32 * 4, "max_pixels": 32 * 32 * 64}  # 4..64 image tokens
_DEMO_PIXELS = {"min_pixels": 32 * 32 * 4, "max_pixels": 32 * 32 * 256}  # 4..256 image tokens
_REAL_PIXELS = {"min_pixels": 256 * 256, "max_pixels": 32 * 32 * 1024}  # 64..1024 image tokens

_VISION_2B = {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
              "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17]}

PRESETS: dict[str, dict] = {
    # Tests. Variants cover GQA ratio (2, 4, 1 = MHA, MQA), head_dim 16/32, tied and untied
    # embeddings, and different deepstack indexes / vision depths.
    "tiny": {
        "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                        "max_position_embeddings": 4096},
        "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                          "num_position_embeddings": 576, "deepstack_visual_indexes": [0, 1]},
        "tie_word_embeddings": True,
        "image_processor": _TINY_PIXELS,
    },
    "tiny-gqa4": {
        "text_config": {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3,
                        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 16,
                        "max_position_embeddings": 4096},
        "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                          "num_position_embeddings": 256, "deepstack_visual_indexes": [1]},
        "tie_word_embeddings": False,
        "image_processor": _TINY_PIXELS,
    },
    "tiny-hd32": {
        "text_config": {"hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 4,
                        "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 32,
                        "max_position_embeddings": 4096},
        "vision_config": {"depth": 3, "hidden_size": 48, "intermediate_size": 96, "num_heads": 3,
                          "num_position_embeddings": 576, "deepstack_visual_indexes": [0, 2]},
        "tie_word_embeddings": True,
        "image_processor": _TINY_PIXELS,
    },
    "tiny-mqa": {
        "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32,
                        "max_position_embeddings": 4096},
        "vision_config": {"depth": 3, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4,
                          "num_position_embeddings": 1024, "deepstack_visual_indexes": [0, 1, 2]},
        "tie_word_embeddings": False,
        "image_processor": _TINY_PIXELS,
    },
    # Demo pair: one tokenizer, two sizes, seconds to build, quick on CPU.
    "demo-small": {
        "text_config": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                        "max_position_embeddings": 32768},
        "vision_config": {"depth": 4, "hidden_size": 128, "intermediate_size": 512, "num_heads": 4,
                          "num_position_embeddings": 1024, "deepstack_visual_indexes": [1, 2]},
        "tie_word_embeddings": True,
        "image_processor": _DEMO_PIXELS,
    },
    "demo-large": {
        "text_config": {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
                        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64,
                        "max_position_embeddings": 32768},
        "vision_config": {"depth": 6, "hidden_size": 256, "intermediate_size": 1024, "num_heads": 4,
                          "num_position_embeddings": 2304, "deepstack_visual_indexes": [1, 3, 5]},
        "tie_word_embeddings": False,
        "image_processor": _DEMO_PIXELS,
    },
    # Benchmarks: realistic shapes (Qwen3 attention, head_dim 128), small vocabulary.
    "bench-0.5b": {
        "text_config": {"hidden_size": 1024, "intermediate_size": 3584, "num_hidden_layers": 28,
                        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                        "max_position_embeddings": 262144},
        "vision_config": dict(_VISION_2B),
        "tie_word_embeddings": True,
        "image_processor": _REAL_PIXELS,
        "max_shard_size": "1GB",
    },
    # The real Qwen3-VL-2B architecture and vocabulary (151,936 rows, tied head: 0.3B of the
    # 1.7B decoder parameters) with random weights: the CPU real-size rows.
    "real-2b": {
        "text_config": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
                        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                        "max_position_embeddings": 262144, "rope_scaling": {"mrope_section": [24, 20, 20]}},
        "vision_config": dict(_VISION_2B),
        "tie_word_embeddings": True,
        "image_processor": _REAL_PIXELS,
        "max_shard_size": "1GB",
        "vocab_size": 151936,
    },
    "pair-0.3b": {
        "text_config": {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 20,
                        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                        "max_position_embeddings": 262144},
        "vision_config": {"depth": 12, "hidden_size": 768, "intermediate_size": 3072, "num_heads": 12,
                          "num_position_embeddings": 2304, "deepstack_visual_indexes": [2, 5, 8]},
        "tie_word_embeddings": True,
        "image_processor": _REAL_PIXELS,
        "max_shard_size": "1GB",
    },
    "pair-1.5b": {
        "text_config": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 30,
                        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                        "max_position_embeddings": 262144},
        "vision_config": dict(_VISION_2B),
        "tie_word_embeddings": False,
        "image_processor": _REAL_PIXELS,
        "max_shard_size": "1GB",
    },
}

_TEXT_DEFAULTS = {
    "attention_bias": False, "attention_dropout": 0.0, "hidden_act": "silu", "initializer_range": 0.02,
    "max_position_embeddings": 262144, "model_type": "qwen3_vl_text", "rms_norm_eps": 1e-6,
    "rope_theta": 5000000, "use_cache": True,
}
_VISION_DEFAULTS = {
    "hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "initializer_range": 0.02,
    "model_type": "qwen3_vl", "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
}


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def default_mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (t, h, w) in Qwen3-VL's 24:20:20 proportions."""
    half = head_dim // 2
    hw = max(1, (half * 20) // 64)
    return [half - 2 * hw, hw, hw]


def resolve_spec(config: dict | str = "tiny") -> dict:
    """A preset name, or a dict of overrides deep-merged over "tiny" (a full config.json works)."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown synthetic preset {config!r}; known: {', '.join(PRESETS)}")
        return copy.deepcopy(PRESETS[config])
    if not isinstance(config, dict):
        raise TypeError(f"config must be a preset name or a dict, got {type(config).__name__}")
    return _deep_merge(PRESETS["tiny"], config)


def make_hf_config(spec: dict, token_ids: dict[str, int], vocab_size: int, dtype: str = "float32") -> dict:
    """The config.json dict for a spec, in the spelling real Qwen3-VL checkpoints use."""
    text = {**_TEXT_DEFAULTS, **spec.get("text_config", {})}
    vision = {**_VISION_DEFAULTS, **spec.get("vision_config", {})}
    tie = bool(spec.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))

    # Fields that must agree with the tokenizer or with each other.
    for stale in ("rope_parameters", "pad_token_id"):
        text.pop(stale, None)
    rope_scaling = dict(text.get("rope_scaling") or {})
    rope_scaling.setdefault("mrope_interleaved", True)
    rope_scaling.setdefault("mrope_section", default_mrope_section(text["head_dim"]))
    rope_scaling.setdefault("rope_type", "default")
    text["rope_scaling"] = rope_scaling
    text.update(vocab_size=vocab_size, tie_word_embeddings=tie, dtype=dtype,
                bos_token_id=token_ids["<|endoftext|>"], eos_token_id=token_ids["<|im_end|>"])
    vision["out_hidden_size"] = text["hidden_size"]
    vision.pop("rope_parameters", None)
    _validate(text, vision)

    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "dtype": dtype,
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "tie_word_embeddings": tie,
        "text_config": dict(sorted(text.items())),
        "vision_config": dict(sorted(vision.items())),
    }


def _validate(text: dict, vision: dict) -> None:
    if text["num_attention_heads"] % text["num_key_value_heads"]:
        raise ValueError("text num_attention_heads must be a multiple of num_key_value_heads")
    if sum(text["rope_scaling"]["mrope_section"]) != text["head_dim"] // 2:
        raise ValueError(f"mrope_section {text['rope_scaling']['mrope_section']} must sum to head_dim/2")
    if vision["hidden_size"] % vision["num_heads"] or (vision["hidden_size"] // vision["num_heads"]) % 4:
        raise ValueError("vision hidden_size / num_heads must be an integer divisible by 4 (2-D rotary)")
    side = math.isqrt(vision["num_position_embeddings"])
    if side * side != vision["num_position_embeddings"]:
        raise ValueError("vision num_position_embeddings must be a perfect square")
    ds = list(vision.get("deepstack_visual_indexes", []))
    if any(not 0 <= i < vision["depth"] for i in ds) or len(set(ds)) != len(ds):
        raise ValueError(f"deepstack_visual_indexes {ds} must be distinct layers of a depth-{vision['depth']} tower")
    if len(ds) > text["num_hidden_layers"]:
        raise ValueError("more deepstack levels than text layers")


def parameter_shapes(hf_config: dict) -> dict[str, tuple[int, ...]]:
    """Checkpoint parameter names -> shapes, as save_pretrained writes them (tied lm_head omitted)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    cfg = Qwen3VLConfig(**copy.deepcopy(hf_config))
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(cfg)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}
    if hf_config["tie_word_embeddings"]:
        shapes.pop("lm_head.weight", None)
    return shapes


def count_parameters(config: dict | str = "tiny", vocab_size: int | None = None) -> dict[str, int]:
    """Parameter counts {"text", "vision", "total"} of a preset / spec (tied head counted once)."""
    spec = resolve_spec(config)
    ids = tokenizer_builder.special_token_ids(tokenizer_builder.build_tokenizer())
    hf = make_hf_config(spec, ids, vocab_size or spec.get("vocab_size")
                        or _padded_vocab(tokenizer_builder.DEFAULT_VOCAB_SIZE))
    counts = parameter_counts(parse_config(hf))
    return {"text": counts.text_total, "vision": counts.vision, "total": counts.total}


def _padded_vocab(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


LOGIT_STD = 2.5
RESIDUAL_STD = 8.0
QK_NORM_SCALE = 1.5


def _init_tensor(name: str, shape: tuple[int, ...], seed: int, hf_config: dict) -> torch.Tensor:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith(("q_norm.weight", "k_norm.weight")):
        return QK_NORM_SCALE * (1.0 + 0.1 * noise)
    if len(shape) == 1 and leaf == "weight":  # RMSNorm / LayerNorm scales
        return 1.0 + 0.1 * noise
    if leaf == "bias":
        return 0.02 * noise
    text = hf_config["text_config"]
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):
        return (LOGIT_STD / math.sqrt(text["hidden_size"])) * noise
    std = 1.0 / math.sqrt(math.prod(shape[1:]))
    if re.search(r"language_model\.layers\.\d+\.(self_attn\.o_proj|mlp\.down_proj)\.weight$", name):
        # ~0.6 is the per-element std of what these project (attention mix, silu(g) * u).
        std *= RESIDUAL_STD / (0.6 * math.sqrt(2 * text["num_hidden_layers"]))
    elif re.search(r"blocks\.\d+\.(attn\.proj|mlp\.linear_fc2)\.weight$", name):
        std /= math.sqrt(2 * hf_config["vision_config"]["depth"])
    return std * noise


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", size, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size {size!r}: expected bytes or a string like '500MB' / '2GiB'")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * mult)


def _write_weights(out: Path, hf_config: dict, seed: int, dtype: torch.dtype, max_shard_size: int | None) -> None:
    from safetensors.torch import save_file

    shapes = parameter_shapes(hf_config)
    elem = torch.empty((), dtype=dtype).element_size()

    # Group names into shards in module order (HF's greedy rule: a tensor that does not fit
    # starts a new shard; one larger than the limit gets a shard of its own).
    shards: list[list[str]] = [[]]
    used = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * elem
        if max_shard_size is not None and shards[-1] and used + nbytes > max_shard_size:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes

    weight_map = {}
    for i, names in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: _init_tensor(n, shapes[n], seed, hf_config).to(dtype).contiguous() for n in names}
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        del tensors
        weight_map.update({n: fname for n in names})
    if len(shards) > 1:
        total = sum(math.prod(s) for s in shapes.values())
        index = {"metadata": {"total_parameters": total, "total_size": total * elem}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def preprocessor_config(min_pixels: int, max_pixels: int, patch_size: int = 16, merge_size: int = 2,
                        temporal_patch_size: int = 2) -> dict:
    """preprocessor_config.json for Qwen3-VL (PIL backend: works without torchvision)."""
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen3VLProcessor",
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "merge_size": merge_size,
        "patch_size": patch_size,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": max_pixels, "shortest_edge": min_pixels},
        "temporal_patch_size": temporal_patch_size,
    }


def _copy_tokenizer(src: Path, out: Path) -> tuple[dict[str, int], int]:
    from tokenizers import Tokenizer

    if not (src / "tokenizer.json").is_file():
        raise FileNotFoundError(f"tokenizer_dir {src} has no tokenizer.json")
    for fname in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                  "vocab.json", "merges.txt", "special_tokens_map.json"):
        if (src / fname).is_file():
            shutil.copy2(src / fname, out / fname)
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    return tokenizer_builder.special_token_ids(tok), tok.get_vocab_size(with_added_tokens=True)


def build_synthetic_checkpoint(out_dir: str | os.PathLike, config: dict | str = "tiny", *, seed: int = 0,
                               dtype: str = "float32", max_shard_size: int | str | None = None,
                               tokenizer_dir: str | os.PathLike | None = None, vocab_size: int | None = None,
                               min_pixels: int | None = None, max_pixels: int | None = None) -> Path:
    """Write a random-weight Qwen3-VL checkpoint into out_dir (created if needed) and return it.

    config: a preset name (see PRESETS) or a dict of config.json-style overrides merged over
    "tiny". Token ids always come from the tokenizer; vision out_hidden_size always equals the
    text hidden size. vocab_size defaults to the tokenizer size rounded up to a multiple of 64.
    max_shard_size (bytes or "500MB"-style; None = the preset's default, usually unsharded)
    splits weights into model-0000i-of-0000n.safetensors + model.safetensors.index.json.
    tokenizer_dir: copy the tokenizer files from there instead of the built-in tokenizer.
    min_pixels / max_pixels override the image processor's resize bounds.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    spec = resolve_spec(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    if tokenizer_dir is not None:
        token_ids, tok_size = _copy_tokenizer(Path(tokenizer_dir), out)
    else:
        written = tokenizer_builder.write_tokenizer_files(out)
        tok_size = written.pop("vocab_size")
        token_ids = written
    if vocab_size is None:
        vocab_size = spec.get("vocab_size") or _padded_vocab(tok_size)
    if vocab_size < tok_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer ({tok_size} tokens)")

    hf_config = make_hf_config(spec, token_ids, vocab_size, dtype)
    import transformers

    hf_config["transformers_version"] = transformers.__version__
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")

    generation = {
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": [token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
        "pad_token_id": token_ids["<|endoftext|>"],
        "do_sample": False,
        "transformers_version": transformers.__version__,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")

    pixels = {**spec.get("image_processor", _TINY_PIXELS)}
    if min_pixels is not None:
        pixels["min_pixels"] = min_pixels
    if max_pixels is not None:
        pixels["max_pixels"] = max_pixels
    if pixels["min_pixels"] > pixels["max_pixels"]:
        raise ValueError("min_pixels must not exceed max_pixels")
    vis = hf_config["vision_config"]
    pre = preprocessor_config(pixels["min_pixels"], pixels["max_pixels"], vis["patch_size"],
                              vis["spatial_merge_size"], vis["temporal_patch_size"])
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")

    shard = max_shard_size if max_shard_size is not None else spec.get("max_shard_size")
    _write_weights(out, hf_config, seed, _DTYPES[dtype], _parse_size(shard) if shard is not None else None)
    return out


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get("BATON_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "baton") / "checkpoints"


_STAMP = "baton_synthetic.json"


def ensure_checkpoint(name: str, cache_dir: str | os.PathLike | None = None, *, seed: int = 0,
                      dtype: str = "float32") -> Path:
    """Path of preset `name` under the cache (`$BATON_CACHE_DIR/checkpoints` or
    ~/.cache/baton/checkpoints), building it first if absent or stale.

    Safe against concurrent callers and interruptions: the checkpoint is written to a temp
    dir beside the target and renamed into place only when complete.
    """
    spec = resolve_spec(name)  # validates the name
    stamp = {"preset": name, "seed": seed, "dtype": dtype, "generator_version": GENERATOR_VERSION,
             "tokenizer_version": tokenizer_builder.TOKENIZER_VERSION,
             "spec": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()}
    suffix = "" if (seed, dtype) == (0, "float32") else f"-seed{seed}-{dtype}"
    root = _cache_dir(cache_dir)
    target = root / f"{name}{suffix}"
    if _stamp_matches(target, stamp):
        return target

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
    try:
        build_synthetic_checkpoint(tmp, name, seed=seed, dtype=dtype)
        (tmp / _STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        if target.exists():
            if _stamp_matches(target, stamp):  # another process finished first
                return target
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".stale", dir=root))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _stamp_matches(target, stamp):
                raise
        return target
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _stamp_matches(path: Path, stamp: dict) -> bool:
    try:
        return json.loads((path / _STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False
