"""Triton rotary embedding applied to q and k in place (M-RoPE tables from mrope_cos_sin).

Each program rotates all query and key heads of TOKENS tokens with the rotate-half
convention, in float32, writing back in the input dtype. q and k may be strided views into a
fused qkv buffer. Reference: kernels.rotary_ref.apply_rotary_.
"""
import torch
import triton
import triton.language as tl

from baton.kernels.triton_utils import next_pow2, rows_per_program


@triton.jit
def _rotate_heads(x_ptr, tokens, stride_t, stride_h, c, s, num_tokens, num_heads,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Rotate x[tokens, :num_heads, :] in place; c, s are [TOKENS, 1, BLOCK_HALF] float32."""
    heads = tl.arange(0, BLOCK_H)[None, :, None]
    dims = tl.arange(0, BLOCK_HALF)[None, None, :]
    t = tokens[:, None, None]
    mask = (t < num_tokens) & (heads < num_heads) & (dims < HALF)
    first = x_ptr + t * stride_t + heads * stride_h + dims
    x1 = tl.load(first, mask=mask, other=0.0)
    x2 = tl.load(first + HALF, mask=mask, other=0.0)
    a = x1.to(tl.float32)
    b = x2.to(tl.float32)
    tl.store(first, (a * c - b * s).to(x1.dtype), mask=mask)
    tl.store(first + HALF, (b * c + a * s).to(x1.dtype), mask=mask)


@triton.jit
def _apply_rotary_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_ct, stride_st,
    num_tokens, num_q_heads, num_k_heads,
    HALF: tl.constexpr, TOKENS: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    tokens = (tl.program_id(0) * TOKENS + tl.arange(0, TOKENS)).to(tl.int64)
    t = tokens[:, None, None]
    dims = tl.arange(0, BLOCK_HALF)[None, None, :]
    cs_mask = (t < num_tokens) & (dims < HALF)
    c = tl.load(cos_ptr + t * stride_ct + dims, mask=cs_mask, other=0.0)
    s = tl.load(sin_ptr + t * stride_st + dims, mask=cs_mask, other=0.0)
    _rotate_heads(q_ptr, tokens, stride_qt, stride_qh, c, s, num_tokens, num_q_heads,
                  HALF, BLOCK_HQ, BLOCK_HALF)
    _rotate_heads(k_ptr, tokens, stride_kt, stride_kh, c, s, num_tokens, num_k_heads,
                  HALF, BLOCK_HK, BLOCK_HALF)


def apply_rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Same contract as kernels.rotary_ref.apply_rotary_ (q [N, Hq, D], k [N, Hkv, D], in place)."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_k_heads = k.shape[1]
    assert q.stride(-1) == 1 and k.stride(-1) == 1, "the head dimension must be contiguous"
    cos = cos.to(torch.float32).contiguous()
    sin = sin.to(torch.float32).contiguous()
    half = head_dim // 2
    if num_tokens == 0:
        return
    tokens = rows_per_program((num_q_heads + num_k_heads) * head_dim, num_tokens)
    _apply_rotary_kernel[(triton.cdiv(num_tokens, tokens),)](
        q, k, cos, sin,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0),
        num_tokens, num_q_heads, num_k_heads,
        HALF=half, TOKENS=tokens, BLOCK_HQ=next_pow2(num_q_heads), BLOCK_HK=next_pow2(num_k_heads),
        BLOCK_HALF=next_pow2(half),
    )
