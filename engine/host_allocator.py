"""glibc malloc tuning for the CPU engine.

By default glibc serves allocations above 128 KiB with fresh mmap pages and returns them on
free, so every step's activations page-fault anew: measured here, a batched decode-attention
step took 149 ms with the default and 34 ms with large allocations kept on the heap.
Called once when an engine starts on the CPU; BATON_NO_MALLOPT=1 leaves malloc alone.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def tune_host_allocator() -> bool:
    """Keeps freed memory for reuse instead of unmapping it. Returns whether it applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("BATON_NO_MALLOPT") == "1":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    _done = ok
    return ok


def release_free_memory() -> None:
    """Hands freed heap pages back to the OS (glibc malloc_trim). The tuning above keeps them,
    so without this a multi-megapixel image leaves its decode buffers resident (~300 MB for
    25 Mpx). About 40 ms; meant for after such one-off peaks, not every step."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
