"""Shared fixtures for the kernel microbenchmarks (pytest-benchmark).

`measure(fn, group=..., name=..., bytes_moved=..., flops=...)` benchmarks fn (synchronising
the GPU inside the timed call) and records the median and minimum. At the end of the session
a table prints each row's times, the bandwidth and FLOP rate achieved at the median, the fraction of the device's
roofline where its peak is known (GPU), and each row's speed-up over its group's baseline
row (marked *): baseline time / row time.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import pytest
import torch

from kernel_bench import ON_GPU, device_peaks


@dataclass
class Row:
    group: str
    name: str
    seconds: float  # median
    fastest: float  # minimum: on a shared CPU machine, the least disturbed run
    bytes_moved: float
    flops: float
    baseline: bool


_ROWS: List[Row] = []


@pytest.fixture
def measure(benchmark):
    def run(fn, *, group: str, name: str, bytes_moved: float = 0.0, flops: float = 0.0,
            baseline: bool = False):
        benchmark.group = group
        benchmark.name = name
        if ON_GPU:
            def timed():
                out = fn()
                torch.cuda.synchronize()
                return out
        else:
            timed = fn
        result = benchmark(timed)
        stats = getattr(benchmark, "stats", None)
        if stats is not None:
            _ROWS.append(Row(group, name, stats.stats.median, stats.stats.min, bytes_moved, flops,
                             baseline))
        return result
    return run


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    peak_gbps, peak_tflops = device_peaks()
    where = torch.cuda.get_device_name() if ON_GPU else f"CPU, {torch.get_num_threads()} threads"
    write = terminalreporter.write_line
    write("")
    write(f"kernel roofline summary ({where}; medians)")
    write(f"{'group':<44} {'row':<30} {'median us':>10} {'min us':>10} {'GB/s':>8} {'TFLOP/s':>8} "
          f"{'roofline':>9} {'speed-up':>8}")
    groups: Dict[str, List[Row]] = {}
    for row in _ROWS:
        groups.setdefault(row.group, []).append(row)
    for group, rows in groups.items():
        base: Optional[Row] = next((r for r in rows if r.baseline), None)
        for r in rows:
            gbps = r.bytes_moved / r.seconds / 1e9 if r.bytes_moved else 0.0
            tflops = r.flops / r.seconds / 1e12 if r.flops else 0.0
            fractions = []
            if peak_gbps and gbps:
                fractions.append(gbps / peak_gbps)
            if peak_tflops and tflops:
                fractions.append(tflops / peak_tflops)
            roof = f"{100 * max(fractions):.0f}%" if fractions else "-"
            speed = f"{base.seconds / r.seconds:.2f}x" if base is not None else "-"
            name = r.name + (" *" if r.baseline else "")
            write(f"{group:<44} {name:<30} {r.seconds * 1e6:>10.1f} {r.fastest * 1e6:>10.1f} {gbps:>8.1f} "
                  f"{tflops:>8.2f} {roof:>9} {speed:>8}")
