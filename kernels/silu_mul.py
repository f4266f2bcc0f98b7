"""Triton SiLU-and-mul: out = silu(gate) * up for x = [gate | up].

silu is computed in float32 and rounded to the input dtype before the multiply, matching the
rounding of the unfused torch expression. Reference: kernels.silu_mul_ref.silu_and_mul.
"""
import torch
import triton
import triton.language as tl

from kernels.triton_utils import next_pow2


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (act * up.to(tl.float32)).to(out_ptr.dtype.element_ty),
             mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Same contract as kernels.silu_mul_ref.silu_and_mul (x [N, 2I] -> [N, I])."""
    num_rows, width = x.shape
    inter = width // 2
    assert x.stride(-1) == 1
    out = torch.empty(num_rows, inter, dtype=x.dtype, device=x.device)
    block = min(next_pow2(inter), 4096)
    if num_rows > 0:
        _silu_and_mul_kernel[(num_rows, triton.cdiv(inter, block))](
            x, out, x.stride(0), out.stride(0), inter, BLOCK=block)
    return out
