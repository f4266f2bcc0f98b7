"""AMX tiles against the AVX512_BF16 row tiles for batched bfloat16 products
(csrc/amx_linear.cpp), at the Qwen3-VL-2B decoder's shapes, in turn in one process.

On a CPU with AMX it checks the real tiles against a float64 product at every shape, then, for
each row count, times one pass over --layers layers of the four products (weights well past the
caches, as in a decode step), the two paths in turn within every repeat, and prints ms per
pass, the weight-read GB/s and the median per-repeat ratio amx / avx512bf16. Rows where amx
wins are where kAmxMinRows..kAmxMaxRows (csrc/amx_linear.h) belong, and whether amx can stop
being opt-in (default_isa, csrc/cpu_isa.h). Below kAmxMinRows both columns run the row tiles.

Without AMX it says so and checks the kernel on emulated tiles at one 2B shape instead; there
is nothing to time.

    python bench/amx_check.py [--rows 1 2 4 8 16 32 64] [--layers 4] [--repeats 5] [--threads N] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_flags, median_ratio, paired_times, print_table  # noqa: E402
from baton.kernels import cpu_isa  # noqa: E402

# Qwen3-VL-2B text decoder: hidden 2048, 16 q / 8 kv heads of 128, intermediate 6144.
SHAPES = {"qkv": (4096, 2048), "o": (2048, 2048), "gate_up": (12288, 2048), "down": (2048, 6144)}


def check(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, what: str) -> float:
    """Largest error against the float64 product rounded to bfloat16, relative to its scale."""
    want = (x.double() @ w.double().T).bfloat16().double()
    err = ((y.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
    if err > 2e-2:
        raise ValueError(f"{what}: error {err:.3g} of the output's scale (want < 2e-2)")
    return err


def emulated_only() -> dict:
    from baton.kernels import _native

    n, k = SHAPES["o"]
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, k, generator=g).bfloat16(), (torch.randn(n, k, generator=g) * 0.02).bfloat16()
    err = check(x, w, _native.skinny_linear_amx_emulated(x, w), "emulated tiles")
    print(f"this CPU has no AMX (or the OS refused the tile state): nothing to time. Emulated tiles, "
          f"8 x o [{n}x{k}]: error {err:.2g} of the output's scale")
    return {"amx": False, "emulated_error": err}


def time_rows(args) -> dict:
    from baton.kernels import _native

    g = torch.Generator().manual_seed(0)
    layers = [{name: (torch.randn(n, k, generator=g) * 0.02).bfloat16() for name, (n, k) in SHAPES.items()}
              for _ in range(args.layers)]
    nbytes = sum(w.numel() * w.element_size() for layer in layers for w in layer.values())
    rows_out, result = [], {"amx": True, "weight_bytes": nbytes, "rows": {}}
    for m in args.rows:
        xs = {name: torch.randn(m, k, generator=g).bfloat16() for name, (_, k) in SHAPES.items()}
        with cpu_isa.forced("amx"):
            errs = [check(xs[name], w, _native.skinny_linear(xs[name], w), f"amx {name} M={m}")
                    for name, w in layers[0].items()]

        def one_pass(level):
            def run():
                with cpu_isa.forced(level):
                    for layer in layers:
                        for name, w in layer.items():
                            _native.skinny_linear(xs[name], w)
            return run

        t = paired_times({"avx512bf16": one_pass("avx512bf16"), "amx": one_pass("amx")}, repeats=args.repeats)
        best = {k: min(v) for k, v in t.items()}
        ratio = median_ratio(t["amx"], t["avx512bf16"])
        result["rows"][m] = {"ms": {k: v * 1e3 for k, v in best.items()}, "amx_over_avx512bf16": ratio,
                             "max_error": max(errs)}
        rows_out.append([m, f"{best['avx512bf16'] * 1e3:.2f}", f"{best['amx'] * 1e3:.2f}",
                         f"{nbytes / best['avx512bf16'] / 1e9:.1f}", f"{nbytes / best['amx'] / 1e9:.1f}",
                         f"{ratio:.3f}", f"{max(errs):.1e}"])
    print_table(["rows", "avx512bf16 ms", "amx ms", "avx512bf16 GB/s", "amx GB/s", "amx / avx512bf16",
                 "amx error"], rows_out)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--layers", type=int, default=4, help="layers of weights per pass (96 MB each)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not cpu_isa.available():
        sys.exit("baton.kernels._native is not built (pip install -e . --no-build-isolation)")
    print(f"CPU flags: {cpu_flags()}; detected path: {cpu_isa.detected()}; default: {cpu_isa.default()}; "
          f"threads: {torch.get_num_threads()}")
    try:
        result = time_rows(args) if "amx" in cpu_isa.levels() else emulated_only()
    except ValueError as e:
        sys.exit(str(e))
    result.update(flags=cpu_flags(), threads=torch.get_num_threads())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
