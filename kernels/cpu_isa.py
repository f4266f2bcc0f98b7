"""Which instruction-set path the native CPU kernels run (csrc/cpu_isa.h).

The native module picks the best path this CPU runs once per process, from CPUID:
avx512bf16 (AVX-512 plus vdpbf16ps for bfloat16 products), avx512, avx2 (AVX2 + FMA) or
generic (portable C++). Above them, amx runs batched bfloat16 products (4-64 rows) on AMX
tiles; it is opt-in (BATON_CPU_ISA=amx) because no AMX CPU has measured it yet, so an AMX CPU
starts on avx512bf16 (default()).

BATON_CPU_ISA=generic|avx2|avx512|avx512bf16|amx runs that path instead, so every path the CPU
has can be tested and compared on one machine. A path the CPU lacks is refused: importing the
CPU kernel wrappers (and so building an LLM) raises InvalidRequestError naming the paths this
CPU runs; nothing is clamped silently.
"""
from __future__ import annotations

import contextlib
import os

import torch  # noqa: F401  (loads the libraries _native links against)

from baton.errors import InvalidRequestError

try:
    from baton.kernels import _native

    if not hasattr(_native, "cpu_isa"):  # an older build
        _native = None
except ImportError:  # no build: the torch paths still work
    _native = None

ENV = "BATON_CPU_ISA"
LEVELS = ("generic", "avx2", "avx512", "avx512bf16", "amx")


def available() -> bool:
    """Whether the native CPU kernels are built here."""
    return _native is not None


_active: str | None = _native.cpu_isa() if _native else None


def active() -> str | None:
    """The path the native kernels run now (None without a build)."""
    return _active


def detected() -> str | None:
    """The best path this CPU runs (None without a build)."""
    return _native.cpu_isa_detected() if _native else None


def default() -> str | None:
    """The path a process starts on: detected(), except avx512bf16 where that is amx (opt-in)."""
    return _native.cpu_isa_default() if _native else None


def levels() -> list[str]:
    """Every path this CPU runs, lowest first."""
    return list(_native.cpu_isa_levels()) if _native else []


def features() -> dict[str, bool]:
    """CPU features relevant to the paths (avx2, fma, avx512*, amx_*), from CPUID."""
    return dict(_native.cpu_features()) if _native else {}


def kernel_paths() -> dict[str, str]:
    """The path each native kernel takes now, e.g. {"skinny_linear_bfloat16": "avx512bf16"}."""
    return dict(_native.cpu_kernel_paths()) if _native else {}


def set_level(name: str) -> None:
    """Runs the native kernels on path `name` from now on; InvalidRequestError when the CPU
    lacks it. Process-wide: meant for start-up (BATON_CPU_ISA) and tests."""
    if _native is None:
        raise InvalidRequestError("the native CPU kernels are not built (pip install -e . --no-build-isolation)")
    if name not in LEVELS:
        raise InvalidRequestError(f"unknown CPU kernel path {name!r}; valid: {', '.join(LEVELS)}")
    global _active
    try:
        _native.set_cpu_isa(name)
    except ValueError as e:
        raise InvalidRequestError(f"{e}; this CPU runs: {', '.join(levels())}") from None
    _active = name


@contextlib.contextmanager
def forced(name: str):
    """Runs the block on path `name`, then restores the previous one (tests, benches)."""
    before = active()
    set_level(name)
    try:
        yield
    finally:
        set_level(before)


def apply_env() -> None:
    """Applies BATON_CPU_ISA (done once, at import)."""
    name = os.environ.get(ENV, "").strip().lower()
    if not name or _native is None:
        return
    try:
        set_level(name)
    except InvalidRequestError as e:
        raise InvalidRequestError(f"{ENV}={name}: {e}") from None


apply_env()
