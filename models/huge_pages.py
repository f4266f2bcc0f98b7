"""CPU weights on transparent huge pages.

Decode streams every weight once per step. On 4 KiB pages a 1 GB decoder is 250K pages, so
each token pays as many TLB misses; on 2 MiB pages it is 500. Measured on a 2-core EPYC
(avx2 fma), in turn in one process: the native GEMVs over bench-0.5b's bf16 decoder weights
ran 1.10-1.12x faster from huge pages, a plain read 1.04-1.10x.

Linux backs anonymous memory with huge pages only where madvise(MADV_HUGEPAGE) asks (the
usual THP mode, "madvise"), and torch's CPU allocations come from the malloc heap, which is
never advised. So a CPU model's parameters are carved out of one private anonymous mapping
advised for huge pages. BATON_HUGE_PAGES=0 leaves them to torch's allocator.

Measured in the engine (bench-0.5b, two engines in one process, in turn): decode steps at
batch 1 were 1.02-1.09x faster in eight runs of nine (one 0.85x), at batch 8-32 1.01-1.15x;
prefill unchanged. The KV cache on huge pages measured
0.93-0.97x at batch 32, so it stays on torch's allocator.
"""
from __future__ import annotations

import mmap
import os
import re
import sys

import torch
from torch import nn

_PMD = 2 << 20  # one huge page
_ALIGN = 256  # between tensors: a multiple of every vector width and cache line
ENV = "BATON_HUGE_PAGES"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_enabled() -> bool:
    return (sys.platform.startswith("linux") and hasattr(mmap, "MADV_HUGEPAGE")
            and os.environ.get(ENV, "1") != "0")


def thp_mode() -> str | None:
    """The kernel's THP mode ("always", "madvise" or "never"); None where it cannot be read."""
    try:
        with open(THP_MODE) as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else None


def _advised_mapping(nbytes: int) -> tuple[mmap.mmap, int]:
    """A private anonymous mapping advised for huge pages, and the 2 MiB-aligned offset in
    it where nbytes start (shared anonymous memory follows the shmem THP setting, usually
    off)."""
    whole = -(-nbytes // _PMD) * _PMD  # the tail's huge page too
    mm = mmap.mmap(-1, whole + _PMD, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mm.madvise(mmap.MADV_HUGEPAGE)  # before the first touch, so the faults allocate huge pages
    return mm, -torch.frombuffer(mm, dtype=torch.uint8, count=1).data_ptr() % _PMD


def huge_page_arena(nbytes: int) -> torch.Tensor:
    """A uint8 tensor of nbytes on huge pages, 2 MiB-aligned. The mapping lives as long as
    the tensor."""
    mm, start = _advised_mapping(nbytes)
    return torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=start)


def move_parameters_to_huge_pages(model: nn.Module, copy: bool = True) -> int:
    """Rebinds every CPU parameter of `model` into one mapping on huge pages, each with a
    storage of its own (so saving a state dict works as before); parameters that share a
    tensor keep sharing one. copy=False skips copying the values, for weights not yet filled
    (it would only touch pages that are overwritten next). Returns the mapping's used size in
    bytes (0 when disabled or when the model has no CPU parameters)."""
    if not huge_pages_enabled():
        return 0
    params = [p for p in model.parameters() if p.device.type == "cpu"]  # ties listed once
    offsets, total = [], 0
    for p in params:
        offsets.append(total)
        total += -(-p.numel() * p.element_size() // _ALIGN) * _ALIGN
    if total == 0:
        return 0
    mm, start = _advised_mapping(total)
    with torch.no_grad():
        for p, off in zip(params, offsets):
            dest = torch.frombuffer(mm, dtype=p.dtype, count=p.numel(), offset=start + off).view(p.shape)
            if copy:
                dest.copy_(p.data)
            p.data = dest
    return total


def huge_page_share(t: torch.Tensor) -> float:
    """The share of the resident memory of the mapping holding t that sits on huge pages
    (from /proc/self/smaps); 0.0 where that cannot be read."""
    addr = t.data_ptr()
    try:
        with open("/proc/self/smaps") as f:
            text = f.read()
    except OSError:
        return 0.0
    for m in re.finditer(r"^([0-9a-f]+)-([0-9a-f]+) .*?\n(.*?)(?=^[0-9a-f]+-[0-9a-f]+ |\Z)", text, re.M | re.S):
        if int(m.group(1), 16) <= addr < int(m.group(2), 16):
            fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", m.group(3), re.M))
            rss = int(fields.get("Rss", 0))
            return int(fields.get("AnonHugePages", 0)) / rss if rss else 0.0
    return 0.0
