"""Small builders shared by the engine tests (no model needed)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from baton.engine.sampling_params import SamplingParams
from baton.engine.sequence import Sequence
from baton.models.processor import MRopePositions


@dataclass
class FakeImage:
    offset: int
    num_tokens: int
    content_hash: str
    pixel_values: torch.Tensor | None = None
    grid_thw: tuple = (1, 2, 2)


@dataclass
class FakeProcessed:
    token_ids: list[int]
    images: list = field(default_factory=list)
    mrope_positions: torch.Tensor | None = None
    mrope_delta: int = 0

    def __post_init__(self):
        if self.mrope_positions is None:
            self.mrope_positions = torch.arange(len(self.token_ids)).expand(3, -1)
        self.positions = MRopePositions(self.mrope_positions, self.mrope_delta)


def make_seq(rid: str, tokens: list[int], block_size: int, images=(), **params) -> Sequence:
    return Sequence(rid, FakeProcessed(list(tokens), list(images)), SamplingParams(**params), block_size)
