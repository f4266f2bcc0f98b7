"""RMSNorm for the torch backend: the native CPU kernel (csrc/rms_norm_cpu.cpp, one pass per
row) where it applies, else the plain-torch composition (kernels.rms_norm_ref, also its test
oracle). Same contract as `rms_norm_ref.rms_norm`."""
from typing import Optional

import torch

from baton.kernels import cpu_isa  # noqa: F401  (applies BATON_CPU_ISA before the first call)
from baton.kernels import rms_norm_ref

try:
    from baton.kernels import _native

    NATIVE_AVAILABLE = hasattr(_native, "rms_norm")
except ImportError:  # no build: the torch path still works
    _native = None
    NATIVE_AVAILABLE = False

_DTYPES = (torch.float32, torch.bfloat16)


def uses_native(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor] = None) -> bool:
    """Whether `rms_norm` runs the native kernel for these tensors."""
    return (
        NATIVE_AVAILABLE
        and x.device.type == "cpu"
        and x.dtype in _DTYPES
        and weight.dtype == x.dtype
        and (residual is None or residual.dtype == x.dtype)
        and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, residual)))
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None):
    """out, or (out, x + residual) with a residual; see rms_norm_ref for the rounding."""
    if not uses_native(x, weight, residual):
        return rms_norm_ref.rms_norm(x, weight, eps, residual)
    out, new_residual = _native.rms_norm(x, weight, float(eps), residual)
    return out if residual is None else (out, new_residual)
