"""Request state as the scheduler, block manager and runner see it."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass

import torch

from baton.engine.outputs import RequestMetrics
from baton.engine.sampling_params import SamplingParams

# SamplingParams(token_stats=True): the per-token values, in the sampler's tuple order
TOKEN_STATS = ("entropy", "max_prob", "margin", "logprob")


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class ImageSpan:
    """Where an image's tokens sit in a sequence, and what identifies its pixels."""

    offset: int  # index of its first image-pad token
    num_tokens: int
    content_hash: str

    @property
    def end(self) -> int:
        return self.offset + self.num_tokens


class Sequence:
    """token_ids holds the prompt followed by the generated tokens. num_computed_tokens of them
    have their K/V in the cache (prefix-cache hits included)."""

    def __init__(self, request_id: str, processed, params: SamplingParams, block_size: int):
        self.request_id = request_id
        self.token_ids: list[int] = list(processed.token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.images = list(processed.images)  # models.processor.ImageInput
        self.image_spans = [ImageSpan(im.offset, im.num_tokens, im.content_hash) for im in self.images]
        self.token_positions = processed.positions  # models.interface.TokenPositions
        self.params = params
        self.block_size = block_size
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served by the prefix cache (first admission)
        self.num_hashed_blocks = 0  # leading blocks already registered with the prefix cache
        self.num_preemptions = 0
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.logprobs: list[dict[int, float]] | None = [] if params.logprobs is not None else None
        # per generated token (entropy, max_prob, margin, logprob), with SamplingParams(token_stats=True)
        # kept as columns, one value appended per token, so each output copies lists (C speed)
        # instead of transposing rows in Python on every step
        self.token_stats: dict[str, list[float]] | None = (
            {name: [] for name in TOKEN_STATS} if params.token_stats else None)
        self.vision_encoder_calls = 0
        self.metrics = RequestMetrics(arrival_time=time.perf_counter())
        self.generator: torch.Generator | None = None  # created by the sampler on first use (seeded)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    @property
    def num_blocks_needed(self) -> int:
        return (len(self.token_ids) + self.block_size - 1) // self.block_size

    def positions(self, start: int, end: int) -> torch.Tensor:
        """int64 [R, end - start] positions of tokens [start, end), as the model family defines them."""
        return self.token_positions.positions(start, end)

    def block_extra_keys(self, block_index: int) -> tuple:
        """Image identities of the image tokens inside a block: (content hash, image offset
        relative to the block start). Part of the block's prefix-cache key."""
        start = block_index * self.block_size
        end = start + self.block_size
        return tuple(
            (span.content_hash, span.offset - start)
            for span in self.image_spans
            if span.offset < end and span.end > start
        )

    def block_tokens(self, block_index: int) -> tuple[int, ...]:
        start = block_index * self.block_size
        return tuple(self.token_ids[start:start + self.block_size])
