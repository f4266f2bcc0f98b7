"""Random paged-cache cases and slow, obviously correct attention loops.

Shared by the kernel tests and benchmarks. The loops here walk tokens one by one in float64,
so they check the fast references independently of how those gather and mask.
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

# Block-table padding: deliberately an invalid block id, so a kernel that dereferences padding
# reads out of range instead of silently hitting a real block.
PAD_BLOCK = -7


def blocks_for(num_tokens: int, block_size: int) -> int:
    return (num_tokens + block_size - 1) // block_size


def random_block_tables(
    seq_lens: Sequence[int], block_size: int, generator: torch.Generator, spare_blocks: int = 3
):
    """Distinct, shuffled block ids for sequences of `seq_lens` tokens.

    Returns (block_tables int32 [B, max_blocks] padded with PAD_BLOCK, num_blocks).
    The cache gets `spare_blocks` blocks no sequence owns, so stray reads see foreign data.
    """
    counts = [blocks_for(n, block_size) for n in seq_lens]
    num_blocks = sum(counts) + spare_blocks
    perm = torch.randperm(num_blocks, generator=generator)
    max_blocks = max(max(counts), 1) + 1  # one padding column beyond the longest
    tables = torch.full((len(seq_lens), max_blocks), PAD_BLOCK, dtype=torch.int32)
    used = 0
    for b, c in enumerate(counts):
        tables[b, :c] = perm[used:used + c].to(torch.int32)
        used += c
    return tables, num_blocks


def slot_of(block_table: torch.Tensor, position: int, block_size: int) -> int:
    return int(block_table[position // block_size]) * block_size + position % block_size


@dataclass
class DecodeCase:
    q: torch.Tensor  # [B, Hq, D]
    k_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # int32 [B, max_blocks]
    context_lens: torch.Tensor  # int32 [B]
    scale: float


def make_decode_case(
    context_lens: Sequence[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str = "cpu",
) -> DecodeCase:
    g = torch.Generator().manual_seed(seed)
    tables, num_blocks = random_block_tables(context_lens, block_size, g)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    return DecodeCase(
        q=torch.randn(len(context_lens), num_heads, head_dim, generator=g).to(device, dtype),
        k_cache=torch.randn(shape, generator=g).to(device, dtype),
        v_cache=torch.randn(shape, generator=g).to(device, dtype),
        block_tables=tables.to(device),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
        scale=1.0 / math.sqrt(head_dim),
    )


@dataclass
class ExtendCase:
    q: torch.Tensor  # [Nq, Hq, D]
    k: torch.Tensor  # [Nq, Hkv, D], also stored in the cache
    v: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # int32 [B, max_blocks]
    cu_seqlens_q: torch.Tensor  # int32 [B + 1]
    prefix_lens: torch.Tensor  # int32 [B]
    slot_mapping: torch.Tensor  # int64 [Nq], where the new tokens were stored
    max_seqlen_q: int
    scale: float


def make_extend_case(
    prefix_lens: Sequence[int],
    new_lens: Sequence[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str = "cpu",
) -> ExtendCase:
    """A batch whose prefixes are cached and whose new tokens' K/V are stored as well."""
    g = torch.Generator().manual_seed(seed)
    totals = [p + n for p, n in zip(prefix_lens, new_lens)]
    tables, num_blocks = random_block_tables(totals, block_size, g)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=g).to(dtype)
    v_cache = torch.randn(shape, generator=g).to(dtype)
    num_q = sum(new_lens)
    q = torch.randn(num_q, num_heads, head_dim, generator=g).to(dtype)
    k = torch.randn(num_q, num_kv_heads, head_dim, generator=g).to(dtype)
    v = torch.randn(num_q, num_kv_heads, head_dim, generator=g).to(dtype)
    slots: List[int] = []
    for b, (p, n) in enumerate(zip(prefix_lens, new_lens)):
        slots += [slot_of(tables[b], p + i, block_size) for i in range(n)]
    slot_mapping = torch.tensor(slots, dtype=torch.int64)
    k_cache.view(-1, num_kv_heads, head_dim)[slot_mapping] = k
    v_cache.view(-1, num_kv_heads, head_dim)[slot_mapping] = v
    cu = torch.tensor([0] + list(torch.tensor(new_lens).cumsum(0)), dtype=torch.int32)
    to = lambda t: t.to(device)  # noqa: E731
    return ExtendCase(
        q=to(q), k=to(k), v=to(v), k_cache=to(k_cache), v_cache=to(v_cache),
        block_tables=to(tables), cu_seqlens_q=to(cu),
        prefix_lens=to(torch.tensor(prefix_lens, dtype=torch.int32)),
        slot_mapping=to(slot_mapping), max_seqlen_q=max(new_lens), scale=1.0 / math.sqrt(head_dim),
    )


def _attend(q_row: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float):
    """One query row [D] over keys/values [n, D] in float64."""
    scores = keys.double() @ q_row.double() * scale
    return torch.softmax(scores, dim=0) @ values.double()


def naive_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale):
    """Token-by-token, head-by-head decode attention in float64; returns [B, Hq, D] float64."""
    batch, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.zeros(batch, num_heads, head_dim, dtype=torch.float64)
    for b in range(batch):
        n = int(context_lens[b])
        keys = torch.stack([k_cache[int(block_tables[b, t // block_size]), t % block_size] for t in range(n)])
        values = torch.stack([v_cache[int(block_tables[b, t // block_size]), t % block_size] for t in range(n)])
        for h in range(num_heads):
            out[b, h] = _attend(q[b, h], keys[:, h // group], values[:, h // group], scale)
    return out


def naive_prefix_extend_attention(
    q, k, v, k_cache, v_cache, block_tables, cu_seqlens_q, prefix_lens, scale,
    max_seqlen_q: Optional[int] = None,
):
    """Query-by-query prefix + extend attention in float64; returns [Nq, Hq, D] float64.

    Prefix keys come from the cache via the block table, new keys from k/v.
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.zeros(q.shape[0], num_heads, head_dim, dtype=torch.float64)
    for b in range(len(prefix_lens)):
        start, end, p = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]), int(prefix_lens[b])
        cached_k = [k_cache[int(block_tables[b, t // block_size]), t % block_size] for t in range(p)]
        cached_v = [v_cache[int(block_tables[b, t // block_size]), t % block_size] for t in range(p)]
        for i in range(end - start):
            keys = torch.stack(cached_k + [k[start + j] for j in range(i + 1)])
            values = torch.stack(cached_v + [v[start + j] for j in range(i + 1)])
            for h in range(num_heads):
                out[start + i, h] = _attend(q[start + i, h], keys[:, h // group], values[:, h // group], scale)
    return out
