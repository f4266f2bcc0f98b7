"""Triton paged decode attention: split-KV flash-decoding with a log-sum-exp merge.

Stage 1 runs one program per (sequence, KV head, split). It loads the whole GQA group's
queries as one tile (so each K/V tile read from the cache serves every query head that
shares it), walks its share of the sequence's keys through the block table with an online
softmax, and writes its normalised partial output plus its log-sum-exp. Stage 2 runs
one program per (sequence, query head) and merges the splits. Splitting keeps the GPU busy
when the batch is small and contexts are long; programs never read each other's results
except through the merge stage. Reference: kernels.paged_decode_ref.paged_decode_attention.
"""
import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from baton.kernels.triton_utils import dot_precision, interpreting, load_paged_kv, next_pow2

LOG2E = 1.4426950408889634


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr,
    part_out_ptr, part_lse_ptr,
    stride_qb, stride_qh,
    stride_cb, stride_cs, stride_ch,  # cache: per block, per slot in block, per head
    stride_bt,
    stride_pb, stride_ph, stride_ps,  # partial out [B, Hq, S, D]; lse is contiguous [B, Hq, S]
    num_heads, num_splits, tokens_per_split, qk_scale,  # qk_scale includes log2(e)
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    context_len = tl.load(context_lens_ptr + seq)
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, context_len)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    heads = kv_head * GROUP + g
    g_mask = g < GROUP
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    # Finite floor instead of -inf so empty rows and splits never compute inf - inf.
    m_i = tl.full([BLOCK_G], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    n_offs = tl.arange(0, BLOCK_N)
    for tile in range(start, end, BLOCK_N):
        pos = tile + n_offs
        n_mask = pos < end
        k, v = load_paged_kv(k_cache_ptr, v_cache_ptr, block_tables_ptr + seq * stride_bt, pos, n_mask, d, d_mask,
                             kv_head, stride_cb, stride_cs, stride_ch, BLOCK_SIZE, UPCAST)
        # [BLOCK_G, BLOCK_N] scores in log2 units (qk_scale carries log2(e)).
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        scores = tl.where(n_mask[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    nonempty = l_i > 0
    out = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), float("-inf"))
    part = seq * stride_pb + heads * stride_ph + split * stride_ps
    tl.store(part_out_ptr + part[:, None] + d[None, :], out, mask=g_mask[:, None] & d_mask[None, :])
    tl.store(part_lse_ptr + (seq * num_heads + heads) * num_splits + split, lse, mask=g_mask)


@triton.jit
def _decode_merge_kernel(
    part_out_ptr, part_lse_ptr, out_ptr,
    stride_pb, stride_ph, stride_ps, stride_ob, stride_oh,
    num_heads, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_mask = s < num_splits
    d_mask = d < HEAD_DIM
    base = seq * stride_pb + head * stride_ph
    lse = tl.load(part_lse_ptr + (seq * num_heads + head) * num_splits + s, mask=s_mask, other=float("-inf"))
    m = tl.max(lse, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)  # all splits empty: weights become 0
    w = tl.exp2(lse - m)
    parts = tl.load(part_out_ptr + base + s[:, None] * stride_ps + d[None, :],
                    mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    total = tl.sum(w, axis=0)
    out = tl.sum(parts * w[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d_mask)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_splits(batch: int, num_kv_heads: int, max_tokens: int, block_n: int) -> int:
    """Enough (sequence, head, split) programs to fill a GPU, without splits shorter than a tile."""
    if interpreting():
        target = 1  # programs run one by one; fewer, longer programs are faster to interpret
    else:
        target = 2 * _sm_count(torch.cuda.current_device())
    wanted = triton.cdiv(target, batch * num_kv_heads)
    return max(1, min(wanted, triton.cdiv(max_tokens, block_n), 64))


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    num_splits: Optional[int] = None,
) -> torch.Tensor:
    """Same contract as kernels.paged_decode_ref.paged_decode_attention.

    num_splits overrides the split-KV heuristic (tests use it to exercise the merge).
    """
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    assert q.stride(-1) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    assert k_cache.stride() == v_cache.stride()
    out = torch.empty_like(q)
    if batch == 0:
        return out
    block_n = 64 if head_dim <= 128 else 32
    # Upper bound from the table's width, so no device sync is needed to size the grid.
    max_tokens = block_tables.shape[1] * block_size
    if num_splits is None:
        num_splits = _num_splits(batch, num_kv_heads, max_tokens, block_n)
    tokens_per_split = triton.cdiv(triton.cdiv(max_tokens, num_splits), block_n) * block_n
    part_out = torch.empty(batch, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=q.device)
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, context_lens, part_out, part_lse,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        num_heads, num_splits, tokens_per_split, scale * LOG2E,
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_G=max(16, next_pow2(group)), BLOCK_D=next_pow2(head_dim), BLOCK_N=block_n,
        UPCAST=interpreting(), PRECISION=dot_precision(q.dtype),
    )
    _decode_merge_kernel[(batch, num_heads)](
        part_out, part_lse, out,
        part_out.stride(0), part_out.stride(1), part_out.stride(2), out.stride(0), out.stride(1),
        num_heads, num_splits,
        HEAD_DIM=head_dim, BLOCK_S=next_pow2(num_splits), BLOCK_D=next_pow2(head_dim),
    )
    return out
