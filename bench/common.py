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


def weight_bytes(model: torch.nn.Module, text_only: bool = True) -> int:
    """Bytes read per decode step: the text decoder's weights plus the LM head."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if text_only and name.startswith("visual."):
            continue
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    return total


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
