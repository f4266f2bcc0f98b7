"""Paged decode attention for the torch backend: the native CPU kernel where it applies,
else the plain-torch path (kernels.paged_decode_ref, which is also its test oracle).

The native kernel (csrc/paged_decode_cpu.cpp) reads each cached key and value row once, in
place through the block table, for all query heads of a GQA group; the torch path gathers
the whole context into contiguous tensors first and then calls SDPA. Same contract as
`paged_decode_ref.paged_decode_attention`.
"""
import torch

from baton.kernels import cpu_isa  # noqa: F401  (applies BATON_CPU_ISA before the first call)
from baton.kernels import paged_decode_ref

try:
    from baton.kernels import _native

    NATIVE_AVAILABLE = bool(_native.paged_decode_supported())
except (ImportError, AttributeError):  # no build (or an older one): the torch path still works
    _native = None
    NATIVE_AVAILABLE = False

_DTYPES = (torch.float32, torch.bfloat16)


def uses_native(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether `paged_decode_attention` runs the native kernel for these tensors."""
    return (
        NATIVE_AVAILABLE
        and q.device.type == "cpu"
        and q.dtype in _DTYPES
        and k_cache.dtype == q.dtype == v_cache.dtype
        and q.shape[-1] % 8 == 0
        and k_cache.is_contiguous()
        and v_cache.is_contiguous()
        and not (torch.is_grad_enabled() and q.requires_grad)
    )


def paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale):
    """q [B, Hq, D] over the paged caches -> [B, Hq, D]; see paged_decode_ref for the contract."""
    if uses_native(q, k_cache, v_cache):
        return _native.paged_decode_attention(q, k_cache, v_cache, block_tables.to(torch.int32),
                                              context_lens.to(torch.int32), float(scale))
    return paged_decode_ref.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)
