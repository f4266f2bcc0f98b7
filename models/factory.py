"""Builds the model class registered for the config's model_type in the target dtype and
device without an fp32 detour: parameters are created on the meta device, materialised in
place, then loaded or randomly initialised."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from baton.models.config import ModelConfig
from baton.models.huge_pages import move_parameters_to_huge_pages
from baton.models.loader import load_weights
from baton.models.registry import model_class


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_meta(cfg: ModelConfig, ops, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model on the meta device: shapes and dtypes only, no memory. CheckpointError
    naming the model_type when no class is registered for it."""
    cls = model_class(cfg.model_type)
    with _default_dtype(dtype), torch.device("meta"):
        return cls(cfg, ops)


def _tied(model: nn.Module) -> list[tuple[str, str]]:
    """(alias, owner) names of parameters that share one tensor."""
    owners: dict[int, str] = {}
    ties = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in owners:
            ties.append((name, owners[id(p)]))
        else:
            owners[id(p)] = name
    return ties


def build_empty(cfg: ModelConfig, ops, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    """Uninitialised weights (memory allocated, contents undefined)."""
    model = build_meta(cfg, ops, dtype)
    ties = _tied(model)
    model.to_empty(device=device)
    for alias, owner in ties:  # to_empty replaces parameters one by one, which unties them
        mod, _, leaf = alias.rpartition(".")
        setattr(model.get_submodule(mod), leaf, model.get_parameter(owner))
    # read by llm.stats(); 0 when the weights stay on torch's allocator
    model.huge_page_bytes = move_parameters_to_huge_pages(model, copy=False) if torch.device(device).type == "cpu" else 0
    with torch.no_grad():
        for module in model.modules():  # buffers computed from the config (rotary frequencies)
            if hasattr(module, "reset_buffers"):
                module.reset_buffers()
    return model.eval()


def load_model(checkpoint_dir: str | Path, cfg: ModelConfig, ops, dtype, device,
               check_weights: bool = True) -> nn.Module:
    """check_weights: CheckpointError naming the tensor for a NaN or inf in the weights."""
    model = build_empty(cfg, ops, dtype, device)
    load_weights(model, checkpoint_dir, check_finite=check_weights)
    return model


@torch.no_grad()
def random_model(cfg: ModelConfig, ops, dtype, device, seed: int = 0, std: float = 0.02) -> nn.Module:
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
