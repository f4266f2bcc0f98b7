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


PAD = "<|vision_start|><|image_pad|><|vision_end|>"


def chat_prompt(text: str, images: int = 0) -> str:
    """A formatted single-turn prompt with `images` image placeholders before the text."""
    return f"<|im_start|>user\n{PAD * images}{text}<|im_end|>\n<|im_start|>assistant\n"


def assert_pool_clean(llm) -> None:
    """Idle engine: every KV block free, nothing running or waiting."""
    s = llm.stats()
    assert s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == 0 and s["waiting"] == 0


def same_at_1_and_2_threads(fn, *args):
    """fn(*args) with 1 and with 2 torch threads, which must agree bit for bit (which thread
    computes an output must not change it); returns the result."""
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(fn(*args))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1])
    return outs[1]
