"""Key-token selection: which of the small model's reasoning tokens go to the large model.

Policies: "full" (all), "truncate" (the first k), "entropy" (the k tokens where the small
model was least certain, from the per-token statistics it recorded while generating),
"attention" (the k tokens its answer attended to most). The budget is a token count (int)
or a fraction of the reasoning (float in (0, 1]); segments ("word" or "step") keep whole
words or reasoning steps when a policy picks any of their tokens. Selected tokens keep their
original order.
"""
from __future__ import annotations

import torch

from baton.errors import InvalidRequestError

POLICIES = ("full", "truncate", "entropy", "attention")
SEGMENTS = ("none", "word", "step")


def resolve_budget(budget, n: int) -> int:
    if budget is None:
        return n
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise InvalidRequestError(f"budget must be a token count or a fraction, got {budget!r}")
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise InvalidRequestError(f"a fractional budget must be in (0, 1], got {budget}")
        return max(1, round(budget * n)) if n else 0
    if budget < 0:
        raise InvalidRequestError(f"budget must be >= 0, got {budget}")
    return min(budget, n)


def segment_ids(pieces: list[str], kind: str) -> torch.Tensor | None:
    """Segment id per token from its decoded text: a word starts at a token beginning with
    whitespace; a step ends after a token holding a newline or sentence-ending punctuation."""
    if kind == "none":
        return None
    if kind not in SEGMENTS:
        raise InvalidRequestError(f"segments must be one of {SEGMENTS}, got {kind!r}")
    ids, current = [], 0
    for i, piece in enumerate(pieces):
        if kind == "word" and i and piece[:1].isspace():
            current += 1
        ids.append(current)
        if kind == "step" and ("\n" in piece or piece.rstrip().endswith((".", "!", "?"))):
            current += 1
    return torch.tensor(ids, dtype=torch.long)


def select(policy: str, n: int, budget, *, stats: dict | None = None, attention: torch.Tensor | None = None,
           segments: torch.Tensor | None = None) -> list[int]:
    """Indices (ascending) of the reasoning tokens to transfer."""
    if policy not in POLICIES:
        raise InvalidRequestError(f"selector must be one of {POLICIES}, got {policy!r}")
    k = resolve_budget(budget, n)
    if policy == "full" or k >= n:
        return list(range(n))
    if policy == "truncate":
        return list(range(k))
    if policy == "entropy":
        if stats is None or len(stats["entropy"]) < n:
            raise InvalidRequestError("the entropy selector needs per-token stats of the reasoning")
        scores = torch.tensor(stats["entropy"][:n], dtype=torch.float32)
    else:
        if attention is None or attention.numel() != n:
            raise InvalidRequestError("the attention selector needs one attention score per reasoning token")
        scores = attention.float()
    from baton.kernels import select_tokens

    picked = select_tokens(scores, k, segments, expand_segments=segments is not None)
    return picked.tolist()
