"""Per-request sampling settings, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass

from baton.errors import InvalidRequestError


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None
    # per generated token: entropy, max_prob, margin, logprob of the raw distribution
    token_stats: bool = False

    def __post_init__(self):
        def bad(field, why):
            raise InvalidRequestError(f"SamplingParams.{field} {why}, got {getattr(self, field)!r}")

        if not isinstance(self.temperature, (int, float)) or self.temperature < 0 or self.temperature != self.temperature:
            bad("temperature", "must be a number >= 0 (0 is greedy)")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or (self.top_k < 1 and self.top_k != -1):
            bad("top_k", "must be -1 (disabled) or a positive integer")
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            bad("max_tokens", "must be a positive integer")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is not None and (
            not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop)
        ):
            bad("stop", "must be a non-empty string or a list of non-empty strings")
        if self.stop_token_ids is not None and (
            not isinstance(self.stop_token_ids, (list, tuple))
            or not all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids)
        ):
            bad("stop_token_ids", "must be a list of non-negative token ids")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            bad("seed", "must be an integer or None")
        if self.logprobs is not None and (
            not isinstance(self.logprobs, int) or isinstance(self.logprobs, bool) or self.logprobs < 0
        ):
            bad("logprobs", "must be a non-negative integer or None")
        if not isinstance(self.token_stats, bool):
            bad("token_stats", "must be True or False")
        self.stop_token_ids = list(self.stop_token_ids or [])

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
