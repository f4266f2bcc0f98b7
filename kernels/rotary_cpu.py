"""Rotary embedding for the torch backend: the native CPU op (csrc/cpu_elementwise.cpp, one
pass, in place) where it applies, else the plain-torch path (kernels.rotary_ref, also its test
oracle). Same contract and rounding as `rotary_ref.apply_rotary_`; mrope_cos_sin is torch's."""
import torch

from baton.kernels import rotary_ref
from baton.kernels.rotary_ref import mrope_cos_sin  # noqa: F401  (the registry takes both from here)

try:
    from baton.kernels import _native

    NATIVE_AVAILABLE = hasattr(_native, "apply_rotary_")
except ImportError:  # no build: the torch path still works
    _native = None
    NATIVE_AVAILABLE = False

_DTYPES = (torch.float32, torch.bfloat16)


def uses_native(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether `apply_rotary_` runs the native op for these tensors."""
    return (
        NATIVE_AVAILABLE
        and q.device.type == "cpu"
        and q.dtype in _DTYPES
        and k.dtype == q.dtype
        and q.dim() == 3
        and k.dim() == 3
        and q.stride(-1) == 1
        and k.stride(-1) == 1
        and cos.dtype == torch.float32
        and sin.dtype == torch.float32
        and cos.dim() == 2
        and sin.shape == cos.shape
        and q.shape[0] == k.shape[0] == cos.shape[0]
        and q.shape[-1] == k.shape[-1] == 2 * cos.shape[-1]
        and cos.device.type == "cpu"
        and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad))
    )


def apply_rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate q [N, Hq, D] and k [N, Hkv, D] in place; see rotary_ref.apply_rotary_."""
    if uses_native(q, k, cos, sin):
        _native.apply_rotary_(q, k, cos, sin)
    else:
        rotary_ref.apply_rotary_(q, k, cos, sin)
