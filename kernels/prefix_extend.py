"""Triton prefix + extend attention: new tokens over their cached prefix and themselves.

One launch covers every sequence of the batch (variable lengths): program (m, b, kv) takes
TOKENS new query tokens of sequence b for all GROUP query heads that share KV head kv, laid
out as one tile of TOKENS * GROUP rows (so each K/V tile is loaded once per group), and runs
one online softmax first over the sequence's cached prefix (gathered through the block
table, no mask), then over the new tokens' own K/V read straight from k/v with a
bottom-right causal mask. Programs whose tokens lie past their sequence's new tokens exit
at once.
Reference: kernels.prefix_extend_ref.prefix_extend_attention.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from baton.kernels.triton_utils import dot_precision, interpreting, load_paged_kv, next_pow2

LOG2E = 1.4426950408889634


@triton.jit
def _online_softmax_step(q, k, v, valid, m_i, l_i, acc, qk_scale, PRECISION: tl.constexpr):
    """Fold one K/V tile into the running (max, sum, accumulator); scores in log2 units."""
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    scores = tl.where(valid, scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(scores - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _prefix_extend_kernel(
    q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, cu_seqlens_ptr,
    prefix_lens_ptr, out_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_cb, stride_cs, stride_ch, stride_bt,
    qk_scale,
    GROUP: tl.constexpr, TOKENS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    m_start = tl.program_id(0) * TOKENS
    seq = tl.program_id(1).to(tl.int64)
    kv_head = tl.program_id(2)
    q_start = tl.load(cu_seqlens_ptr + seq).to(tl.int64)
    num_new = tl.load(cu_seqlens_ptr + seq + 1) - q_start
    if m_start >= num_new:
        return
    prefix = tl.load(prefix_lens_ptr + seq)

    # Row r of the tile is new token m_start + r // GROUP, query head kv_head * GROUP + r % GROUP.
    r = tl.arange(0, BLOCK_M)
    i = m_start + r // GROUP  # new-token index within the sequence
    head = kv_head * GROUP + r % GROUP
    n_offs = tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    i_mask = (r < TOKENS * GROUP) & (i < num_new)
    q_rows = (q_start + i) * stride_qt + head * stride_qh
    q = tl.load(q_ptr + q_rows[:, None] + d[None, :], mask=i_mask[:, None] & d_mask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite floor: no inf - inf
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Cached prefix: every new token sees all of it.
    for tile in range(0, prefix, BLOCK_N):
        pos = tile + n_offs
        n_mask = pos < prefix
        k, v = load_paged_kv(k_cache_ptr, v_cache_ptr, block_tables_ptr + seq * stride_bt, pos, n_mask, d, d_mask,
                             kv_head, stride_cb, stride_cs, stride_ch, BLOCK_SIZE, UPCAST)
        m_i, l_i, acc = _online_softmax_step(q, k, v, n_mask[None, :], m_i, l_i, acc, qk_scale,
                                             PRECISION)

    # The new tokens themselves, causal: token i sees new tokens j <= i.
    self_end = tl.minimum(num_new, m_start + TOKENS)
    for tile in range(0, self_end, BLOCK_N):
        j = tile + n_offs
        n_mask = j < num_new
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + (q_start + j)[:, None] * stride_kt + kv_head * stride_kh + d[None, :],
                    mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + (q_start + j)[:, None] * stride_vt + kv_head * stride_vh + d[None, :],
                    mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        valid = n_mask[None, :] & (j[None, :] <= i[:, None])
        m_i, l_i, acc = _online_softmax_step(q, k, v, valid, m_i, l_i, acc, qk_scale, PRECISION)

    out = acc / l_i[:, None]
    out_rows = (q_start + i) * stride_ot + head * stride_oh
    tl.store(out_ptr + out_rows[:, None] + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=i_mask[:, None] & d_mask[None, :])


def prefix_extend_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    prefix_lens: torch.Tensor,
    scale: float,
    max_seqlen_q: Optional[int] = None,
) -> torch.Tensor:
    """Same contract as kernels.prefix_extend_ref.prefix_extend_attention.

    Pass max_seqlen_q to size the grid without a device sync.
    """
    num_q, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    batch = prefix_lens.shape[0]
    block_size = k_cache.shape[1]
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
    assert k_cache.is_contiguous() and k_cache.stride() == v_cache.stride()
    out = torch.empty_like(q)
    if num_q == 0 or batch == 0:
        return out
    if max_seqlen_q is None:
        max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
    group = num_heads // num_kv_heads
    # Rows per program = tokens * group, padded to a power of two (at least 16 for tl.dot).
    rows = 128 if interpreting() else 64
    block_m = max(16, min(next_pow2(group) * next_pow2(max_seqlen_q), max(rows, next_pow2(group))))
    tokens = block_m // group
    block_n = 64
    grid = (triton.cdiv(max_seqlen_q, tokens), batch, num_kv_heads)
    _prefix_extend_kernel[grid](
        q, k, v, k_cache, v_cache, block_tables, cu_seqlens_q, prefix_lens, out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        scale * LOG2E,
        GROUP=group, TOKENS=tokens, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=next_pow2(head_dim),
        UPCAST=interpreting(), PRECISION=dot_precision(q.dtype),
    )
    return out
