"""Parameter counts of a model, read off the model itself built on the meta device (no
memory), so the cost model can never drift from the architecture it prices."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable

from torch import nn

from baton.models.config import ModelConfig


@dataclass(frozen=True)
class ParameterCounts:
    """Element counts (not bytes). A tied LM head shares the embedding's tensor: it is read by
    every step (lm_head) but stored once (text_total, total)."""

    embedding: int      # token embedding table
    layers: int         # all decoder layers
    layers_linear: int  # the decoder layers' matrix-product weights and biases (nn.Linear)
    final_norm: int
    lm_head: int        # the LM head matrix, tied or not
    lm_head_tied: bool
    vision: int         # the whole vision tower (patch embedding to the last merger)

    @property
    def text_total(self) -> int:
        return self.embedding + self.layers + self.final_norm + (0 if self.lm_head_tied else self.lm_head)

    @property
    def total(self) -> int:
        return self.text_total + self.vision


def _numel(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())


@functools.lru_cache(maxsize=64)
def parameter_counts(cfg: ModelConfig) -> ParameterCounts:
    """Counts of the model registered for cfg.model_type, from its parameter_groups()."""
    from baton.kernels.registry import get_ops
    from baton.models.factory import build_meta

    groups = build_meta(cfg, get_ops("torch")).parameter_groups()
    layers = groups["layers"]
    linears = (m for m in layers.modules() if isinstance(m, nn.Linear))
    embed_ids = {id(p) for p in groups["embedding"].parameters()}
    head = list(groups["lm_head"].parameters())
    return ParameterCounts(
        embedding=_numel(groups["embedding"].parameters()),
        layers=_numel(layers.parameters()),
        layers_linear=_numel(p for m in linears for p in m.parameters()),
        final_norm=_numel(groups["final_norm"].parameters()),
        lm_head=_numel(head),
        lm_head_tied=any(id(p) in embed_ids for p in head),
        vision=_numel(groups["vision"].parameters()),
    )
