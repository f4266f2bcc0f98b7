"""Shared helpers for the bench scripts: timing, memory bandwidth, table printing."""
from __future__ import annotations

import statistics
import time

import torch

from baton.models.huge_pages import huge_page_arena, huge_pages_enabled


def median_time(fn, repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_times(fns: dict, repeats: int = 7, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each fn, the fns run in turn within every pass: on a VM whose
    bandwidth drifts within seconds, ratios of the same pass compare like with like."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    """The median over passes of num[i] / den[i] (see paired_times)."""
    return statistics.median(a / b for a, b in zip(num, den))


def measure_read_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes/second this machine streams from DRAM in a reduction over a buffer much larger
    than the caches (the floor for weight-bound decode). The buffer sits on huge pages where
    the engine's weights do (models/huge_pages.py), so the floor does not flatter them."""
    if huge_pages_enabled():
        x = huge_page_arena(nbytes // 4 * 4).view(torch.float32).fill_(1.0)
    else:
        x = torch.ones(nbytes // 4, dtype=torch.float32)
    t = median_time(lambda: x.sum(), repeats=repeats, warmup=1)
    return nbytes / t


def decode_weights(model: torch.nn.Module, text_only: bool = True) -> list[torch.Tensor]:
    """The tensors a decode step reads: the text decoder's parameters and the LM head, each
    once (a tied head shares the embedding's storage)."""
    seen, tensors = set(), []
    for name, p in model.named_parameters():
        if (text_only and name.startswith("visual.")) or p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        tensors.append(p.detach())
    return tensors


def weight_bytes(model: torch.nn.Module, text_only: bool = True) -> int:
    """Bytes read per decode step: the text decoder's weights plus the LM head."""
    return sum(t.numel() * t.element_size() for t in decode_weights(model, text_only))


def plain_reads() -> dict:
    """Ways to read a tensor once: torch's sum (each thread's share as one stream) and, with
    the native build, stream_read_sum's runs side by side (csrc/stream_read.cpp)."""
    reads = {"torch sum": lambda t: t.sum()}
    try:
        from baton.kernels import _native
    except ImportError:
        return reads
    for s in (1, 2, 4, 8):
        reads[f"{s} stream{'s' if s > 1 else ''}/thread"] = lambda t, s=s: _native.stream_read_sum(t, s)
    return reads


def weights_read_time(tensors: list[torch.Tensor], repeats: int = 3) -> tuple[float, str]:
    """The decode floor: seconds to read every tensor once, one after another (as a decode
    step's products do), by the fastest plain read this machine has, and which read that was.
    Each candidate is the median of `repeats` passes, the candidates run in turn (paired_times).
    A single-stream read is not enough: the skinny GEMM, reading 4 streams per thread, beat
    torch's sum over the same weights on the AVX2 EPYC."""
    reads = plain_reads()
    contiguous = [t if t.is_contiguous() else t.contiguous() for t in tensors]
    times = paired_times({name: (lambda r=r: [r(t) for t in contiguous]) for name, r in reads.items()},
                         repeats=repeats)
    best = min(times, key=lambda name: statistics.median(times[name]))
    return statistics.median(times[best]), best


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for i, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def cpu_flags() -> str:
    """The SIMD features that decide which CPU kernel paths run (print beside CPU figures)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    have = [w for w in wanted if w in flags]
    return " ".join(have) if have else "none of " + " ".join(wanted)
