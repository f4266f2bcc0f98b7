"""Builds a Qwen3-VL in the target dtype and device without an fp32 detour: parameters are
created on the meta device, materialised in place, then loaded or randomly initialised."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from baton.models.config import ModelConfig
from baton.models.loader import load_weights
from baton.models.qwen3_vl import Qwen3VL


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_empty(cfg: ModelConfig, ops, dtype: torch.dtype, device: torch.device | str) -> Qwen3VL:
    """Uninitialised weights (memory allocated, contents undefined)."""
    with _default_dtype(dtype), torch.device("meta"):
        model = Qwen3VL(cfg, ops)
    model.to_empty(device=device)
    if cfg.tie_word_embeddings:  # to_empty replaces parameters one by one, which unties them
        model.lm_head.weight = model.language_model.embed_tokens.weight
    return model.eval()


def load_model(checkpoint_dir: str | Path, cfg: ModelConfig, ops, dtype, device) -> Qwen3VL:
    model = build_empty(cfg, ops, dtype, device)
    load_weights(model, checkpoint_dir)
    return model


@torch.no_grad()
def random_model(cfg: ModelConfig, ops, dtype, device, seed: int = 0, std: float = 0.02) -> Qwen3VL:
    """Random weights directly in `dtype` (for latency work on real architectures)."""
    model = build_empty(cfg, ops, dtype, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1 and name.endswith("weight"):  # every 1-D weight is a norm scale
            p.fill_(1.0)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.normal_(0.0, std, generator=gen)
    return model
