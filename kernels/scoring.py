"""Token scoring ops for reasoning transfer: which of the small model's reasoning tokens matter.

The ops run in the native extension `baton.kernels._native` (C++ on CPU tensors, CUDA on CUDA
tensors; sources in csrc/). There is deliberately no torch fallback: without the extension,
importing this module raises ImportError naming the build command. The plain-torch
references (`*_reference`) define the contracts; tests and benchmarks compare against them.
"""
import operator
from typing import NamedTuple, Optional

import torch

from baton.errors import InvalidRequestError

BUILD_COMMAND = "pip install -e . --no-build-isolation"

try:
    from baton.kernels import _native
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        f"Baton's native scoring ops (baton.kernels._native) are not built or failed to load ({exc}). "
        f"Build them from the repository root with: {BUILD_COMMAND}"
    ) from exc


class TokenStats(NamedTuple):
    """Per-token statistics of a logits row, float32 [T] each (natural log units)."""

    entropy: torch.Tensor  # -sum p log p
    max_prob: torch.Tensor  # top-1 probability
    margin: torch.Tensor  # top-1 minus top-2 probability (equal maxima: 0)
    logprob: torch.Tensor  # log p(token_ids)


def token_stats(logits: torch.Tensor, token_ids: torch.Tensor) -> TokenStats:
    """Entropy, max probability, top-1/top-2 margin and log p(token) of each logits row.

    logits: [T, V] float32 or bfloat16 (any strides); token_ids: [T] int64 in [0, V), same
    device. One pass over each row with a running max / log-sum-exp; softmax is never
    materialised. -inf logits have probability 0 (a row with one finite entry has entropy 0,
    max_prob 1, margin 1). A row that is all -inf, or holds NaN or +inf, has no distribution:
    its four statistics are NaN. With V = 1 the top-2 probability is 0.
    """
    _check_tensor(logits, "logits")
    _check_tensor(token_ids, "token_ids")
    if logits.dim() != 2:
        raise InvalidRequestError(f"logits must be [T, V], got shape {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.bfloat16):
        raise InvalidRequestError(f"logits must be float32 or bfloat16, got {logits.dtype}")
    num_tokens, vocab = logits.shape
    if vocab == 0:
        raise InvalidRequestError("logits has an empty vocabulary (V = 0)")
    if token_ids.dim() != 1 or token_ids.shape[0] != num_tokens:
        raise InvalidRequestError(
            f"token_ids must be [T] with T = {num_tokens}, got shape {tuple(token_ids.shape)}"
        )
    if token_ids.dtype != torch.int64:
        raise InvalidRequestError(f"token_ids must be int64, got {token_ids.dtype}")
    _check_same_device(logits, token_ids)
    _check_device(logits)
    if num_tokens and bool(((token_ids < 0) | (token_ids >= vocab)).any()):
        bad = token_ids[(token_ids < 0) | (token_ids >= vocab)][0].item()
        raise InvalidRequestError(f"token_ids must lie in [0, {vocab}), got {bad}")
    return TokenStats(*_native.token_stats(logits.detach(), token_ids.detach()))


def attention_scores(attn: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """One score per key: attn [H, Q, K] reduced over heads and queries -> float32 [K].

    attn: attention probabilities (or per-head scores) of H heads and Q queries over K keys,
    float32, float64, bfloat16 or float16; H * Q > 0. reduce: "sum" (accumulated in float64
    on CPU, float32 on CUDA) or "max". NaN propagates; -inf (a masked score) is a value.
    """
    _check_tensor(attn, "attn")
    if attn.dim() != 3:
        raise InvalidRequestError(f"attn must be [H, Q, K], got shape {tuple(attn.shape)}")
    if not attn.dtype.is_floating_point:
        raise InvalidRequestError(f"attn must be a floating dtype, got {attn.dtype}")
    if attn.shape[0] * attn.shape[1] == 0:
        raise InvalidRequestError(f"attn has no heads or no queries: shape {tuple(attn.shape)}")
    if reduce not in ("sum", "max"):
        raise InvalidRequestError(f"reduce must be 'sum' or 'max', got {reduce!r}")
    _check_device(attn)
    return _native.attention_scores(attn.detach(), reduce)


def select_tokens(
    scores: torch.Tensor,
    budget: int,
    segment_ids: Optional[torch.Tensor] = None,
    expand_segments: bool = False,
) -> torch.Tensor:
    """Indices of at most `budget` tokens, int64, ascending (original order), on scores' device.

    scores: [N] floating, no NaN. Tokens rank by score descending, ties by lower index first.
    Without expand_segments: the min(budget, N) best tokens.
    With expand_segments (segment_ids required): segment_ids [N] integer, non-decreasing; a
    segment is the run of tokens sharing an id (a word, a reasoning step). Segments rank by
    their best token (same order as above) and are taken greedily in that order whenever the
    whole segment fits in what is left of the budget; one that does not fit is skipped and
    smaller ones after it may still be taken. The total never exceeds `budget`, and every
    returned segment is complete. segment_ids without expand_segments are validated and
    otherwise ignored.
    """
    _check_tensor(scores, "scores")
    if scores.dim() != 1:
        raise InvalidRequestError(f"scores must be [N], got shape {tuple(scores.shape)}")
    if not scores.dtype.is_floating_point:
        raise InvalidRequestError(f"scores must be a floating dtype, got {scores.dtype}")
    if isinstance(budget, bool):
        raise InvalidRequestError("budget must be an int, got a bool")
    try:
        budget = operator.index(budget)
    except TypeError:
        raise InvalidRequestError(f"budget must be an int, got {type(budget).__name__}") from None
    if budget < 0:
        raise InvalidRequestError(f"budget must be >= 0, got {budget}")
    _check_device(scores)
    if bool(torch.isnan(scores).any()):
        raise InvalidRequestError("scores contain NaN; score every token with a number")
    if segment_ids is not None:
        _check_tensor(segment_ids, "segment_ids")
        if segment_ids.dim() != 1 or segment_ids.shape[0] != scores.shape[0]:
            raise InvalidRequestError(
                f"segment_ids must be [N] with N = {scores.shape[0]}, "
                f"got shape {tuple(segment_ids.shape)}"
            )
        if segment_ids.dtype.is_floating_point or segment_ids.dtype.is_complex:
            raise InvalidRequestError(f"segment_ids must be integers, got {segment_ids.dtype}")
        _check_same_device(scores, segment_ids)
        segment_ids = segment_ids.detach().to(torch.int64)
        if bool((segment_ids[1:] < segment_ids[:-1]).any()):
            raise InvalidRequestError(
                "segment_ids must be non-decreasing (each segment a contiguous run of tokens)"
            )
    elif expand_segments:
        raise InvalidRequestError("expand_segments=True needs segment_ids")
    return _native.select_tokens(scores.detach(), budget, segment_ids, bool(expand_segments))


def _check_tensor(value, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise InvalidRequestError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _check_same_device(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise InvalidRequestError(f"tensors on different devices: {a.device} and {b.device}")


def _check_device(t: torch.Tensor) -> None:
    if t.device.type == "cuda":
        if not _native.with_cuda():
            raise RuntimeError(
                "got a CUDA tensor but baton.kernels._native was built without CUDA; rebuild it with "
                f"a CUDA build of torch and nvcc on PATH: {BUILD_COMMAND}"
            )
    elif t.device.type != "cpu":
        raise InvalidRequestError(f"unsupported device {t.device}: the scoring ops run on cpu or cuda")


# --- plain-torch references ------------------------------------------------------------------


def token_stats_reference(
    logits: torch.Tensor, token_ids: torch.Tensor, dtype: torch.dtype = torch.float64
) -> TokenStats:
    """The obvious torch composition of `token_stats`, computed in `dtype`, returned as float32.

    Materialises several [T, V] temporaries; that is what the native op avoids.
    """
    logp = torch.log_softmax(logits.to(dtype), dim=-1)
    p = logp.exp()
    entropy = -torch.where(p == 0, torch.zeros((), dtype=dtype), p * logp).sum(-1)  # NaN stays
    top = p.topk(min(2, p.shape[-1]), dim=-1).values
    second = top[:, 1] if top.shape[-1] > 1 else torch.zeros_like(top[:, 0])
    logprob = logp.gather(-1, token_ids.view(-1, 1)).squeeze(-1)
    return TokenStats(
        entropy.float(), top[:, 0].float(), (top[:, 0] - second).float(), logprob.float()
    )


def attention_scores_reference(attn: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """attn [H, Q, K] -> [K]: float64 sum or max over heads and queries, as float32."""
    flat = attn.to(torch.float64).reshape(-1, attn.shape[-1])
    out = flat.sum(0) if reduce == "sum" else flat.amax(0)
    return out.float()


def select_tokens_reference(
    scores: torch.Tensor,
    budget: int,
    segment_ids: Optional[torch.Tensor] = None,
    expand_segments: bool = False,
) -> torch.Tensor:
    """Slow, obvious version of `select_tokens` (stable sort, then a Python greedy loop)."""
    n = scores.shape[0]
    order = torch.sort(scores.double(), descending=True, stable=True).indices.tolist()
    if not expand_segments:
        return torch.tensor(sorted(order[:budget]), dtype=torch.int64)
    ids = segment_ids.tolist()
    members = {}
    for i in range(n):
        members.setdefault(ids[i], []).append(i)
    taken, seen, remaining = [], set(), budget
    for i in order:  # a segment's first appearance in score order is its best token
        if ids[i] in seen:
            continue
        seen.add(ids[i])
        if len(members[ids[i]]) <= remaining:
            taken.extend(members[ids[i]])
            remaining -= len(members[ids[i]])
    return torch.tensor(sorted(taken), dtype=torch.int64)
