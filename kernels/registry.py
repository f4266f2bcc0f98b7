"""The kernel registry: the one place that decides which implementation of each op runs.

The engine asks `resolve_backend(attention_backend, device)` once, then calls the ops on the
object `get_ops(backend)` returns; it never checks the device itself. Both backends have the
same contracts (see each op's docstring in the `*_ref` modules).
"""
import functools
import importlib
import os
from dataclasses import dataclass
from typing import Callable, Union

import torch

from baton.errors import InvalidRequestError

BACKENDS = ("torch", "triton")
ATTENTION_BACKENDS = ("auto",) + BACKENDS

OP_NAMES = (
    "store_kv",
    "paged_decode_attention",
    "prefix_extend_attention",
    "rms_norm",
    "mrope_cos_sin",
    "apply_rotary_",
    "silu_and_mul",
    "linear",
)

# op -> module that defines a function of the same name, per backend.
_MODULES = {
    "torch": {
        "store_kv": "baton.kernels.kv_store_cpu",  # native on CPU, else torch
        "paged_decode_attention": "baton.kernels.paged_decode_cpu",  # native on CPU, else torch
        "prefix_extend_attention": "baton.kernels.prefix_extend_ref",
        "rms_norm": "baton.kernels.rms_norm_cpu",  # native on CPU, else torch
        "mrope_cos_sin": "baton.kernels.rotary_ref",
        "apply_rotary_": "baton.kernels.rotary_cpu",  # native on CPU, else torch
        "silu_and_mul": "baton.kernels.silu_mul_ref",
        "linear": "baton.kernels.linear",
    },
    "triton": {
        "store_kv": "baton.kernels.kv_store",
        "paged_decode_attention": "baton.kernels.paged_decode",
        "prefix_extend_attention": "baton.kernels.prefix_extend",
        "rms_norm": "baton.kernels.rms_norm",
        # Computed once per step from a few thousand positions: torch is enough.
        "mrope_cos_sin": "baton.kernels.rotary_ref",
        "apply_rotary_": "baton.kernels.rotary",
        "silu_and_mul": "baton.kernels.silu_mul",
        # cuBLAS on the GPU (the CPU skinny path only applies to CPU tensors).
        "linear": "baton.kernels.linear",
    },
}


@dataclass(frozen=True)
class KernelOps:
    """The ops of one backend; every field is a callable with the documented contract."""

    backend: str
    store_kv: Callable
    paged_decode_attention: Callable
    prefix_extend_attention: Callable
    rms_norm: Callable
    mrope_cos_sin: Callable
    apply_rotary_: Callable
    silu_and_mul: Callable
    linear: Callable


@functools.lru_cache(maxsize=None)
def get_ops(backend: str) -> KernelOps:
    """The ops of `backend` ("torch" or "triton"; see `resolve_backend` for "auto")."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; valid: {', '.join(BACKENDS)}")
    ops = {
        name: getattr(importlib.import_module(module), name)
        for name, module in _MODULES[backend].items()
    }
    return KernelOps(backend=backend, **ops)


def triton_available() -> bool:
    """Whether triton imports in this environment."""
    try:
        import triton  # noqa: F401
    except Exception:  # an installed but broken triton counts as unavailable
        return False
    return True


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(attention_backend: str, device: Union[str, torch.device]) -> str:
    """Map the user's attention_backend ("auto", "torch", "triton") and device to a backend.

    "auto" is "triton" on CUDA when triton imports, else "torch". "triton" on a non-CUDA
    device needs TRITON_INTERPRET=1 set before the kernels are imported. Anything else raises
    InvalidRequestError naming attention_backend.
    """
    if attention_backend not in ATTENTION_BACKENDS:
        raise InvalidRequestError(
            f"unknown attention_backend {attention_backend!r}; "
            f"valid: {', '.join(ATTENTION_BACKENDS)}"
        )
    on_cuda = torch.device(device).type == "cuda"
    if attention_backend == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    if attention_backend == "triton":
        if not triton_available():
            raise InvalidRequestError(
                "attention_backend='triton' needs the triton package; install it or use "
                "attention_backend='torch'"
            )
        if not on_cuda and not interpreting():
            raise InvalidRequestError(
                f"attention_backend='triton' on device {str(device)!r} runs only under the "
                "Triton interpreter: set TRITON_INTERPRET=1 in the environment before "
                "starting (or use attention_backend='torch')"
            )
    return attention_backend
