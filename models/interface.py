"""What the engine asks of a model, and of a processed prompt. The engine talks only to these
contracts; anything architecture-specific (Qwen3-VL's deepstack features, M-RoPE) stays
behind them in the model's own files."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from baton.models.attention import AttentionMetadata


@runtime_checkable
class VisualFeatures(Protocol):
    """One image's (or a row range of one image's) vision-encoder output. Opaque to the engine:
    it caches, sizes and slices it, and hands slices back to the model that made it."""

    @property
    def num_tokens(self) -> int:
        """Rows: one per visual token of the prompt (the image's pad tokens)."""

    @property
    def nbytes(self) -> int:
        """Bytes held by the features (the encoder cache's budget unit)."""

    def rows(self, start: int, end: int) -> "VisualFeatures":
        """Rows [start, end): the features of visual tokens start .. end-1 (a view, no copy)."""


@runtime_checkable
class TokenPositions(Protocol):
    """Positions of a sequence's tokens, prompt and generated ones alike, made by the
    processor of the model family (the engine never computes a position itself)."""

    def positions(self, start: int, end: int) -> torch.Tensor:
        """int64 [R, end - start] on the CPU, for tokens [start, end) of the sequence (end may
        lie past the prompt). R is the model's number of position rows (1 for plain RoPE)."""


@dataclass
class StepInputs:
    """Everything one forward step reads: N flat tokens of all scheduled sequences.

    input_ids: int64 [N]; positions: int64 [R, N] (rows of TokenPositions.positions);
    attn: slot mapping / block tables of the step; kv_caches: per layer (K, V) paged caches;
    visual_rows: int64 [M] indices into the N tokens that take visual features instead of a
    token embedding (None: no visual token this step); visual: the features of those rows,
    in row order, as slices of encode_images outputs (sum of num_tokens == M).
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    attn: AttentionMetadata
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    visual_rows: torch.Tensor | None = None
    visual: list[VisualFeatures] = field(default_factory=list)


class GenerativeModel(Protocol):
    """A vision-language model the engine can run (an nn.Module, built by models.factory)."""

    def encode_images(self, pixel_values: torch.Tensor,
                      grids: Sequence[tuple[int, int, int]]) -> list[VisualFeatures]:
        """pixel_values: float32 [num_patches, patch_dim], the images' patches concatenated in
        order; grids: each image's (t, h, w) patch grid. Returns one VisualFeatures per image."""

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Runs the decoder over the step, writing K/V into the paged caches; hidden [N, hidden]
        in the model's dtype."""

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, hidden] -> float32 logits [B, vocab]."""

    def parameter_groups(self) -> dict[str, nn.Module]:
        """Modules models.param_counts counts apart: "embedding", "layers" (the decoder
        layers), "final_norm", "lm_head" and "vision"."""
