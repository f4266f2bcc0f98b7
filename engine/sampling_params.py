"""Per-request sampling settings, validated on construction."""
from __future__ import annotations

import math
from dataclasses import dataclass

from baton.errors import InvalidRequestError

# Temperatures below this are greedy (as in vLLM): dividing logits by 1e-45 overflows to inf.
GREEDY_EPSILON = 1e-5
# What torch.Generator.manual_seed accepts: one 64-bit word, signed or unsigned.
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


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

        if (not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool)
                or not math.isfinite(self.temperature) or self.temperature < 0):
            bad("temperature", f"must be a finite number >= 0 (below {GREEDY_EPSILON} is greedy)")
        if (not isinstance(self.top_p, (int, float)) or isinstance(self.top_p, bool)
                or not 0 < self.top_p <= 1):
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
        if self.stop is not None and not all(_encodable(s) for s in self.stop):
            bad("stop", "must be valid Unicode (no lone surrogates)")
        if self.stop_token_ids is not None and (
            not isinstance(self.stop_token_ids, (list, tuple))
            or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids)
        ):
            bad("stop_token_ids", "must be a list of non-negative token ids")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            bad("seed", "must be an integer or None")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            bad("seed", f"must fit in 64 bits, [{SEED_MIN}, {SEED_MAX}]")
        if self.logprobs is not None and (
            not isinstance(self.logprobs, int) or isinstance(self.logprobs, bool) or self.logprobs < 0
        ):
            bad("logprobs", "must be a non-negative integer or None")
        if not isinstance(self.token_stats, bool):
            bad("token_stats", "must be True or False")
        self.stop_token_ids = list(self.stop_token_ids or [])

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPSILON
