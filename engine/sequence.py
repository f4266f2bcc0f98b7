"""Request state as the scheduler, block manager and runner see it."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass

import torch

from baton.engine.outputs import RequestMetrics
from baton.engine.sampling_params import SamplingParams


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

    def __init__(self, request_id: str, processed, params: SamplingParams, block_size: int,
                 record_stats: bool = False, attention_probe: tuple[int, int, int] | None = None):
        self.request_id = request_id
        self.token_ids: list[int] = list(processed.token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.images = list(processed.images)  # models.processor.ImageInput
        self.image_spans = [ImageSpan(im.offset, im.num_tokens, im.content_hash) for im in self.images]
        self.mrope_positions: torch.Tensor = processed.mrope_positions  # [3, num_prompt_tokens]
        self.mrope_delta: int = int(processed.mrope_delta)
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
        self.output_text = ""
        # per generated token (entropy, max_prob, margin, logprob), when the caller asked
        self.token_stats: list[tuple[float, float, float, float]] | None = [] if record_stats else None
        # (query_start, key_start, key_end): sum the last layer's attention of prompt tokens
        # [query_start, end) onto keys [key_start, key_end); those queries are never served
        # from the prefix cache, since their attention has to be computed
        self.attention_probe = attention_probe
        self.probe_scores = None
        self.max_prefix_tokens = attention_probe[0] if attention_probe else None
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
        """M-RoPE positions [3, end - start] of tokens [start, end)."""
        p = self.num_prompt_tokens
        parts = []
        if start < p:
            parts.append(self.mrope_positions[:, start:min(end, p)])
        if end > p:
            gen = torch.arange(max(start, p), end, dtype=torch.long) + self.mrope_delta
            parts.append(gen.expand(3, -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

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
