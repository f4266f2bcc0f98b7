"""What a request returns: one output per step that gave it a token (streaming), the last
one with finished=True."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestMetrics:
    """Wall-clock times (time.perf_counter seconds) and component durations (seconds)."""

    arrival_time: float = 0.0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    vision_encoder_time: float = 0.0
    prefill_time: float = 0.0
    decode_time: float = 0.0
    decode_steps: int = 0        # steps that gave this request a decode token
    decode_batch_total: int = 0  # sequences in those steps, summed (see mean_decode_batch)

    @property
    def ttft(self) -> float | None:
        """Time to first token, seconds since arrival."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def mean_decode_batch(self) -> float:
        """Sequences per decode step this request ran in, on average (1.0 before any)."""
        return self.decode_batch_total / self.decode_steps if self.decode_steps else 1.0

    @property
    def e2e(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None  # "stop" | "length" | "abort" | "error"; None while running
    error: str | None = None
    num_cached_tokens: int = 0
    logprobs: list[dict[int, float]] | None = None
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    num_vision_encoder_calls: int = 0
    # with SamplingParams(token_stats=True), on every output (the tokens so far): one value per
    # generated token under each of "entropy", "max_prob", "margin", "logprob"
    token_stats: dict[str, list[float]] | None = None

    # text new since this request's previous output (step / stream); never half a character
    delta: str = ""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
