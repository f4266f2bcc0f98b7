"""The streaming key-token selector ("entropy-stream"): reasoning tokens are committed chunk
by chunk while the small model is still generating, so the large model can prefill them early.

Rule (deterministic, a function of the per-token entropies alone):
- The reasoning is cut into chunks of `chunk` tokens: [0, chunk), [chunk, 2 chunk), ...; the
  last chunk may be shorter.
- Each chunk keeps its q highest-entropy tokens (ties: the earlier token first), in their
  original order. q = len(chunk) with no budget; q = max(1, round(f * len(chunk))) for a
  fractional budget f; for a token budget k, f = k / max_tokens (the reasoning's token
  limit) and selection stops once k tokens are kept.
- A chunk is decided once the model has generated `holdback` tokens past its end (or
  stopped), so the tokens of a stop marker are never committed before the stop is seen.

`stream_select` computes the whole selection at once; `ChunkCommitter` produces the same
indices incrementally. Both are plain Python: chunks are small.
"""
from __future__ import annotations

from baton.engine.selection import resolve_budget
from baton.errors import InvalidRequestError

DEFAULT_CHUNK = 16
DEFAULT_HOLDBACK = 8


def _fraction(budget, max_tokens: int) -> tuple[float, int | None]:
    """(fraction kept per chunk, total cap or None)."""
    if budget is None:
        return 1.0, None
    resolve_budget(budget, 1)  # validates
    if isinstance(budget, float):
        return budget, None
    return min(1.0, budget / max(1, max_tokens)), budget


def _chunk_pick(entropy: list[float], start: int, end: int, fraction: float) -> list[int]:
    n = end - start
    q = n if fraction >= 1.0 else max(1, round(fraction * n))
    best = sorted(range(start, end), key=lambda i: (-entropy[i], i))[:q]
    return sorted(best)


class ChunkCommitter:
    """Feeds on the entropies of a growing reasoning; returns newly committed indices."""

    def __init__(self, budget, max_tokens: int, chunk: int = DEFAULT_CHUNK, holdback: int = DEFAULT_HOLDBACK):
        if chunk < 1 or holdback < 0:
            raise InvalidRequestError("entropy-stream needs chunk >= 1 and holdback >= 0")
        self.fraction, self.cap = _fraction(budget, max_tokens)
        self.chunk, self.holdback = chunk, holdback
        self.decided = 0  # tokens whose chunk is decided
        self.kept: list[int] = []

    def feed(self, entropy: list[float], final_len: int | None = None) -> list[int]:
        """entropy: one value per token generated so far. final_len: the reasoning's length once
        the model stopped (its chunks are then all decided, the last one possibly short)."""
        new = []
        while True:
            end = self.decided + self.chunk
            if final_len is not None:
                if self.decided >= final_len:
                    break
                end = min(end, final_len)
            elif end + self.holdback > len(entropy):
                break
            picked = _chunk_pick(entropy, self.decided, end, self.fraction)
            if self.cap is not None:
                picked = picked[: max(0, self.cap - len(self.kept))]
            self.kept += picked
            new += picked
            self.decided = end
        return new


def stream_select(entropy: list[float], n: int, budget, max_tokens: int, chunk: int = DEFAULT_CHUNK) -> list[int]:
    """Indices (ascending) the streaming selector keeps of a finished reasoning of n tokens."""
    if len(entropy) < n:
        raise InvalidRequestError("the entropy-stream selector needs per-token stats of the reasoning")
    return ChunkCommitter(budget, max_tokens, chunk).feed(list(entropy[:n]), final_len=n)
