"""The paged KV-cache store for the torch backend: the native CPU op (csrc/cpu_elementwise.cpp,
a row copy per token, no boolean-mask gathers) where it applies, else the plain-torch path
(kernels.kv_store_ref, also its test oracle). Same contract as `kv_store_ref.store_kv`."""
import torch

from baton.kernels import kv_store_ref

try:
    from baton.kernels import _native

    NATIVE_AVAILABLE = hasattr(_native, "store_kv")
except ImportError:  # no build: the torch path still works
    _native = None
    NATIVE_AVAILABLE = False


def uses_native(k, v, k_cache, v_cache, slot_mapping) -> bool:
    return (
        NATIVE_AVAILABLE
        and k_cache.device.type == "cpu"
        and k.dtype == v.dtype == k_cache.dtype == v_cache.dtype
        and slot_mapping.dtype == torch.int64
        and slot_mapping.device.type == "cpu"
        and k.dim() == 3
        and k.shape == v.shape
        and k.shape[1:] == k_cache.shape[2:]
        and k_cache.is_contiguous()
        and v_cache.is_contiguous()
    )


def store_kv(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Write token i's K/V into slot slot_mapping[i] (negative: skip); see kv_store_ref."""
    if uses_native(k, v, k_cache, v_cache, slot_mapping):
        _native.store_kv(k, v, k_cache, v_cache, slot_mapping)
    else:
        kv_store_ref.store_kv(k, v, k_cache, v_cache, slot_mapping)
