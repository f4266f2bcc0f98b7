"""Triton RMSNorm fused with the residual add.

Each program normalises ROWS rows: optionally adds the residual (rounded to the input dtype,
as the unfused model does), writes the new residual, then normalises in float32 with HF
Qwen3's rounding (normalised value rounded to the input dtype before the weight multiply).
Reference: kernels.rms_norm_ref.rms_norm.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from baton.kernels.triton_utils import next_pow2, rows_per_program


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, new_residual_ptr,
    stride_x, stride_r, stride_o, stride_nr,
    num_rows, hidden, eps,
    HAS_RESIDUAL: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    cols = tl.arange(0, BLOCK)[None, :]
    mask = (rows < num_rows) & (cols < hidden)
    x = tl.load(x_ptr + rows * stride_x + cols, mask=mask, other=0.0)
    in_dtype = x.dtype
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + rows * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(in_dtype)
        tl.store(new_residual_ptr + rows * stride_nr + cols, x, mask=mask)
    xf = x.to(tl.float32)
    variance = tl.sum(xf * xf, axis=1) / hidden
    normed = (xf * tl.rsqrt(variance + eps)[:, None]).to(in_dtype).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=cols < hidden, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows * stride_o + cols, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: Optional[torch.Tensor] = None,
):
    """Same contract as kernels.rms_norm_ref.rms_norm (x [N, H]; returns out or (out, x + residual))."""
    num_rows, hidden = x.shape
    assert x.stride(-1) == 1 and weight.is_contiguous()
    assert residual is None or residual.stride(-1) == 1
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    new_residual = torch.empty_like(x, memory_format=torch.contiguous_format) if residual is not None else None
    if num_rows > 0:
        rows = rows_per_program(hidden, num_rows)
        _rms_norm_kernel[(triton.cdiv(num_rows, rows),)](
            x, residual if residual is not None else x, weight, out,
            new_residual if new_residual is not None else out,
            x.stride(0), residual.stride(0) if residual is not None else 0,
            out.stride(0), new_residual.stride(0) if new_residual is not None else 0,
            num_rows, hidden, eps,
            HAS_RESIDUAL=residual is not None, ROWS=rows, BLOCK=next_pow2(hidden),
        )
    return out if residual is None else (out, new_residual)
