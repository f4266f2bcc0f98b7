"""Linear layers: y = x @ weight^T (+ bias).

On the CPU, float32 and bfloat16 products go either to the native GEMM
(csrc/skinny_linear.cpp), which reads each weight row once, or to F.linear, whichever
kernels.cpu_routing measured faster on this CPU for the product's shape class (BATON_CPU_KERNELS
overrides it). At few rows the BLAS sgemm re-packs the weight on every call (M = 2..8 ran 3-6x
slower than the native kernel on an AVX2 development CPU, M = 1 1.6-2.7x), and torch's
bfloat16 GEMM is emulated on CPUs without bf16 instructions; on AVX512_BF16 or AMX parts
oneDNN's bfloat16 GEMM wins at prefill sizes. Every GPU call is F.linear.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from baton.kernels import cpu_routing

try:
    from baton.kernels import _native

    SKINNY_AVAILABLE = bool(_native.skinny_linear_supported())
except ImportError:  # the scoring wrappers report a missing build; linear still works without it
    _native = None
    SKINNY_AVAILABLE = False

# The static rule's float32 row limit (cpu_routing.STATIC_MAX_ROWS), kept for the latency
# analysis, which models the skinny GEMM up to this many rows.
SKINNY_MAX_ROWS = cpu_routing.STATIC_MAX_ROWS
_SKINNY_DTYPES = (torch.float32, torch.bfloat16)


def suits_skinny(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> bool:
    """Whether the native kernel can compute `linear(x, weight, bias)` (before routing)."""
    return (
        SKINNY_AVAILABLE
        and x.dim() == 2
        and 0 < x.shape[0]
        and x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in _SKINNY_DTYPES
        and weight.is_contiguous()
        and (bias is None or bias.dtype == x.dtype)
        and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)))
    )


def uses_skinny(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> bool:
    """Whether `linear(x, weight, bias)` runs the native skinny kernel."""
    return suits_skinny(x, weight, bias) and cpu_routing.use_native(x, weight, bias)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [..., K], weight [N, K], bias [N] or None -> [..., N]; the contract of F.linear."""
    if uses_skinny(x, weight, bias):
        return _native.skinny_linear(x, weight, bias)  # y in x's dtype
    return F.linear(x, weight, bias)
