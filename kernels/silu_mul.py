"""Triton SiLU-and-mul: out = silu(gate) * up for x = [gate | up].

silu is computed in float32 and rounded to the input dtype before the multiply, matching the
rounding of the unfused torch expression. Reference: kernels.silu_mul_ref.silu_and_mul.
"""
import torch
import triton
import triton.language as tl

from baton.kernels.triton_utils import interpreting, next_pow2, rows_per_program


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, num_rows, inter,
                         ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)[None, :]
    mask = (rows < num_rows) & (cols < inter)
    gate = tl.load(x_ptr + rows * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + rows * stride_x + inter + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + rows * stride_o + cols, (act * up.to(tl.float32)).to(out_ptr.dtype.element_ty),
             mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Same contract as kernels.silu_mul_ref.silu_and_mul (x [N, 2I] -> [N, I])."""
    num_rows, width = x.shape
    inter = width // 2
    assert x.stride(-1) == 1
    out = torch.empty(num_rows, inter, dtype=x.dtype, device=x.device)
    if num_rows > 0:
        block = min(next_pow2(inter), 1 << 14 if interpreting() else 1024)
        rows = rows_per_program(block, num_rows)
        grid = (triton.cdiv(num_rows, rows), triton.cdiv(inter, block))
        _silu_and_mul_kernel[grid](x, out, x.stride(0), out.stride(0), num_rows, inter,
                                   ROWS=rows, BLOCK=block)
    return out
