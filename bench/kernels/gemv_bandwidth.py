"""Decode-shaped GEMVs (one input row) as a forward pass sees them: each product reads a
different weight, so every weight comes from DRAM. Reports GB/s of the native skinny GEMM and
of F.linear beside the fastest plain read of the same weights (torch's sum or 1-8 streams per
thread, as bench/common.weights_read_time picks it; the floor decode can reach).

    python bench/kernels/gemv_bandwidth.py [--threads 1] [--dtypes bfloat16 float32]

Shapes: the bench-0.5b decoder (hidden 1024) and Qwen3-VL-2B (hidden 2048). Each row cycles
through copies of the weight (at least twice the last-level cache in all); in each of
--repeats passes the native GEMM, F.linear and every plain read (bench/common.plain_reads) run
in turn; the table gives medians, the fastest read's, and the median of the per-pass ratio
fastest read / native (the VM's bandwidth drifts within seconds).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from bench.common import cpu_flags, median_ratio, paired_times, plain_reads, print_table  # noqa: E402
from baton.kernels import _native, cpu_isa  # noqa: E402
from baton.kernels.cpu_routing import last_level_cache_bytes  # noqa: E402

SHAPES = {"0.5b qkv": (4096, 1024), "0.5b gate_up": (7168, 1024), "0.5b down": (1024, 3584),
          "2b qkv": (4096, 2048), "2b gate_up": (12288, 2048), "2b down": (2048, 6144)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU flags: {cpu_flags()}; native path: {cpu_isa.active()}; threads: {torch.get_num_threads()}")
    rows = []
    for dtype in args.dtypes:
        dt = getattr(torch, dtype)
        for name, (n, k) in SHAPES.items():
            per = n * k * dt.itemsize
            copies = max(4, -(-2 * max(last_level_cache_bytes(), 32 << 20) // per))
            ws = [torch.randn(n, k).to(dt) for _ in range(copies)]
            x = torch.randn(1, k).to(dt)
            total = per * copies
            # every plain read runs in the same passes; the fastest (by median) is the floor
            reads = {f"read: {r}": (lambda fn=fn: [fn(w) for w in ws]) for r, fn in plain_reads().items()}
            t = paired_times({"native": lambda: [_native.skinny_linear(x, w, None) for w in ws],
                              "torch": lambda: [F.linear(x, w) for w in ws], **reads}, args.repeats)
            read = min(reads, key=lambda r: statistics.median(t[r]))
            gbs = {k: f"{total / statistics.median(v) / 1e9:.1f}" for k, v in t.items()}
            rows.append([dtype, name, f"{n}x{k}", copies, gbs["native"], gbs["torch"], gbs[read],
                         f"{median_ratio(t[read], t['native']):.0%}"])
            del ws
    print_table(["dtype", "shape", "N x K", "weights", "native GB/s", "F.linear GB/s", "fastest read GB/s",
                 "native / read"], rows)


if __name__ == "__main__":
    main()
