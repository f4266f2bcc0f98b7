"""Triton KV store: write each new token's K and V into its paged-cache slot.

Each program copies TOKENS tokens, all heads, for both K and V; a token whose slot is
negative is padding and is not written. Reference: kernels.kv_store_ref.store_kv.
"""
import torch
import triton
import triton.language as tl

from baton.kernels.triton_utils import next_pow2, rows_per_program


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cs, stride_ch,  # cache strides per slot and per head (same for K and V caches)
    num_tokens,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    TOKENS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    tokens = (tl.program_id(0) * TOKENS + tl.arange(0, TOKENS)).to(tl.int64)
    slots = tl.load(slot_ptr + tokens, mask=tokens < num_tokens, other=-1)
    t = tokens[:, None, None]
    slot = slots[:, None, None]
    heads = tl.arange(0, BLOCK_H)[None, :, None]
    dims = tl.arange(0, BLOCK_D)[None, None, :]
    mask = (slot >= 0) & (heads < NUM_HEADS) & (dims < HEAD_DIM)
    dst = slot * stride_cs + heads * stride_ch + dims
    k = tl.load(k_ptr + t * stride_kt + heads * stride_kh + dims, mask=mask)
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    v = tl.load(v_ptr + t * stride_vt + heads * stride_vh + dims, mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Same contract as kernels.kv_store_ref.store_kv (k, v [N, Hkv, D]; negative slot = skip)."""
    num_tokens, num_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    assert k.stride(-1) == 1 and v.stride(-1) == 1, "last dim of k/v must be contiguous"
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    tokens = rows_per_program(num_heads * head_dim, num_tokens)
    _store_kv_kernel[(triton.cdiv(num_tokens, tokens),)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        num_heads * head_dim, head_dim, num_tokens,
        NUM_HEADS=num_heads, HEAD_DIM=head_dim,
        TOKENS=tokens, BLOCK_H=next_pow2(num_heads), BLOCK_D=next_pow2(head_dim),
    )
