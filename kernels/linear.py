"""Linear layers: y = x @ weight^T (+ bias).

On the CPU, float32 inputs with up to SKINNY_MAX_ROWS rows (decode steps, warm prefills of
tens of tokens) and bfloat16 inputs of any size go to the native GEMM
(csrc/skinny_linear.cpp), which reads each weight row once. At few rows the BLAS sgemm
re-packs the weight on every call (M = 2..8 ran 3-6x slower than the native kernel on the
development CPU, M = 1 1.6-2.7x; bench/kernels/test_bench_linear.py measures both). Larger
float32 products and every GPU call are F.linear.
"""
from typing import Optional

import torch
import torch.nn.functional as F

try:
    from baton.kernels import _native

    SKINNY_AVAILABLE = bool(_native.skinny_linear_supported())
except ImportError:  # the scoring wrappers report a missing build; linear still works without it
    _native = None
    SKINNY_AVAILABLE = False

# Up to this many rows the native kernel beat the BLAS sgemm at Qwen3-VL-2B shapes on the
# development CPU (1.07-2.0x at 64-128 rows, 1.0-1.27x at 192, 0.86-1.18x at 256;
# bench/kernels/test_bench_linear.py). Warm prefills of tens of tokens land in this range.
SKINNY_MAX_ROWS = 192
# bfloat16 weights are widened in registers (float32 arithmetic, as BLAS accumulates), at any
# row count: this CPU has no bf16 instructions, and torch's bf16 GEMM ran at 21-22 GFLOP/s
# against 84-145 for the native kernel from 192 to 1024 rows.
_SKINNY_DTYPES = (torch.float32, torch.bfloat16)


def uses_skinny(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> bool:
    """Whether `linear(x, weight, bias)` runs the native skinny kernel."""
    return (
        SKINNY_AVAILABLE
        and x.dim() == 2
        and 0 < x.shape[0]
        and (x.shape[0] <= SKINNY_MAX_ROWS or x.dtype == torch.bfloat16)
        and x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in _SKINNY_DTYPES
        and weight.is_contiguous()
        and (bias is None or bias.dtype == x.dtype)
        and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)))
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [..., K], weight [N, K], bias [N] or None -> [..., N]; the contract of F.linear."""
    if uses_skinny(x, weight, bias):
        if x.dtype == torch.float32:
            return _native.skinny_linear(x, weight, bias)
        y = _native.skinny_linear(x.float(), weight, None if bias is None else bias.float())
        return y.to(x.dtype)
    return F.linear(x, weight, bias)
