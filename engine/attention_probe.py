"""The attention probe behind `LLM.score`: how much of the last decoder layer's attention from
some prompt tokens lands on each token of an earlier span (the "attention" reasoning-token
selector reads it).

It runs beside the scheduler, not through it: the prompt gets a temporary sequence that pins
its cached prefix (never past the first query, whose attention has to be computed), one
`ModelRunner.execute` computes the rest into fresh blocks while a forward hook on the last
attention layer reads the queries, and every block is released before returning. Requests in
flight keep their blocks and their state.
"""
from __future__ import annotations

import uuid

import torch

from baton.engine.block_manager import BlockManager, PrefixMatch
from baton.engine.sampling_params import SamplingParams
from baton.engine.scheduler import ScheduledBatch
from baton.engine.sequence import Sequence
from baton.errors import BatonError, InvalidRequestError
from baton.models.attention import PagedAttention


def probe_attention(runner, block_manager: BlockManager, processed, query_start: int, key_start: int,
                    key_end: int, max_len: int | None = None) -> torch.Tensor:
    """float32 [key_end - key_start] on the CPU: the attention probabilities of prompt tokens
    [query_start, end) onto keys [key_start, key_end), summed over heads and queries.
    `processed` is a processed prompt (as LLM.add_request builds it)."""
    n = len(processed.token_ids)
    _validate(n, query_start, key_start, key_end, max_len, block_manager)
    bm = block_manager
    seq = Sequence(f"probe-{uuid.uuid4().hex}", processed, SamplingParams(temperature=0, max_tokens=1),
                   bm.block_size)
    match = bm.match_prefix(seq)
    if match.num_tokens > query_start:
        keep = query_start // bm.block_size
        match = PrefixMatch(match.blocks[:keep], num_tokens=keep * bm.block_size)
    if match.partial_block is not None and not bm.can_admit(seq, match, n - match.num_tokens):
        match = match.whole_blocks()
    if not bm.can_admit(seq, match, n - match.num_tokens):
        raise BatonError("not enough free KV blocks to score this prompt while other requests hold them; "
                         "retry when fewer are in flight or raise kv_cache_bytes")
    bm.admit(seq, match)
    try:
        start = seq.num_computed_tokens
        bm.append_slots(seq, n - start)
        scores = _run_probed(runner, seq, start, query_start, key_start, key_end)
        seq.num_computed_tokens = n
        bm.commit(seq)  # the prompt's blocks stay reusable, like a finished request's
    finally:
        bm.free(seq)
    return scores


def _validate(n, query_start, key_start, key_end, max_len, bm) -> None:
    args = (query_start, key_start, key_end)
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        raise InvalidRequestError(f"query_start, key_start, key_end must be ints, got {args!r}")
    if not 0 <= key_start < key_end <= query_start < n:
        raise InvalidRequestError(
            f"score needs 0 <= key_start < key_end <= query_start < prompt length {n}, got "
            f"key_start={key_start}, key_end={key_end}, query_start={query_start}"
        )
    if max_len is not None and n > max_len:
        raise InvalidRequestError(f"prompt has {n} tokens, more than this engine's {max_len}")
    if -(-n // bm.block_size) > bm.num_blocks:
        raise InvalidRequestError(f"prompt needs more KV blocks than the pool's {bm.num_blocks}; "
                                  "raise kv_cache_bytes")


def _run_probed(runner, seq: Sequence, start: int, query_start, key_start, key_end) -> torch.Tensor:
    """Computes seq's tokens [start, end) in one step; the last layer's hook scores the rows."""
    layer = max((m for m in runner.model.modules() if isinstance(m, PagedAttention)), key=lambda m: m.layer_idx)
    found = []

    def hook(module, args, output):
        q, kv_cache = args[0], args[3]
        # rows of this step are positions [start, end); by now the cache holds every key
        found.append(_scores(q[query_start - start:], kv_cache[0], seq.block_table, query_start,
                             key_start, key_end, module.scale))

    handle = layer.register_forward_hook(hook)
    # eager even for a one-token step: a hook never runs inside a replayed CUDA graph
    static, runner.static_decode = runner.static_decode, None
    try:
        runner.execute(ScheduledBatch([seq], [len(seq) - start]))
    finally:
        runner.static_decode = static
        handle.remove()
    return found[0].cpu()


def _scores(q, k_cache, block_table: list[int], pos_start: int, key_start: int, key_end: int,
            scale: float) -> torch.Tensor:
    """Plain-torch softmax of q rows [n, H, D] (positions pos_start..) over their causal
    context, summed over heads and queries on keys [key_start, key_end). Only a few rows, so
    clarity wins over speed."""
    n, num_heads, _ = q.shape
    ctx = pos_start + n
    block_size = k_cache.shape[1]
    blocks = torch.tensor(block_table[: -(-ctx // block_size)], dtype=torch.long, device=k_cache.device)
    keys = k_cache.index_select(0, blocks).flatten(0, 1)[:ctx]  # [ctx, Hkv, D]
    keys = keys.repeat_interleave(num_heads // keys.shape[1], dim=1).float()
    logits = torch.einsum("qhd,khd->hqk", q.float(), keys) * scale
    future = torch.arange(ctx, device=q.device)[None, :] > torch.arange(pos_start, ctx, device=q.device)[:, None]
    probs = logits.masked_fill(future, float("-inf")).softmax(dim=-1)
    return probs[:, :, key_start:key_end].sum(dim=(0, 1))
