"""Command-line options of the latency analysis, shared by `baton analyze` and
bench/latency_analysis.py."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

QUICK_MINUTES = "1.5 minutes on the idle 2-core development CPU, 4-6 when it is shared"
FULL_MINUTES = "about an hour on the shared 2-core development CPU"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help=f"short sweep on scaled-down 2B/4B (1 text layer, 1 vision block): {QUICK_MINUTES}")
    mode.add_argument("--full", action="store_true",
                      help=f"full sweep (the default): real 2B (4B if it fits), scaled 4B/8B: {FULL_MINUTES}")
    parser.add_argument("--out", default=None, help="output directory (default baton-out/latency-quick|full)")
    parser.add_argument("--models", default=None,
                        help="comma-separated models to measure, SIZE or SIZE:L<layers>/V<blocks> (e.g. 2b,8b:L4/V4)")
    parser.add_argument("--device", default="cpu", help="where to measure: cpu or cuda")
    parser.add_argument("--dtype", default=None, help="float32 (default on cpu) or bfloat16 (default on cuda)")
    parser.add_argument("--device-preset", default=None,
                        help="preset describing the measured device (cpu, h100, h200; default cpu, or h100 on cuda)")
    parser.add_argument("--target", action="append", default=None,
                        help="other hardware to predict, a preset with optional overrides, e.g. "
                             "h100 or 'h200:peak_flops=9e14,bandwidth_efficiency=0.7' (repeatable; default h100, h200)")
    parser.add_argument("--visual-tokens", type=int, default=256, help="image size of the crossover scenario")
    parser.add_argument("--text-tokens", type=int, default=64, help="question length of the crossover scenario")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per point")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up rounds per point")
    parser.add_argument("--max-point-seconds", type=float, default=None,
                        help="skip a point whose single run is predicted to take longer")
    parser.add_argument("--from-csv", default=None, help="reuse a measurements.csv instead of measuring")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def options_from_args(args):
    from baton.engine.analysis.analyze import full_options, quick_options
    from baton.engine.analysis.devices import parse_device
    from baton.engine.analysis.variants import parse_variant

    label = "quick" if args.quick else "full"
    out = Path(args.out) if args.out else Path("baton-out") / f"latency-{label}"
    make = quick_options if args.quick else full_options
    on_gpu = args.device.startswith("cuda")
    opts = make(out, device=args.device, dtype=args.dtype or ("bfloat16" if on_gpu else "float32"),
                device_preset=args.device_preset or ("h100" if on_gpu else "cpu"),
                visual_tokens=args.visual_tokens, text_tokens=args.text_tokens,
                from_csv=Path(args.from_csv) if args.from_csv else None, progress=not args.no_progress)
    if args.models:
        opts.measure = [parse_variant(m.strip()) for m in args.models.split(",") if m.strip()]
    if args.target:
        opts.targets = [parse_device(t) for t in args.target]
    changes = {k: v for k, v in (("repeats", args.repeats), ("warmup", args.warmup),
                                  ("max_point_seconds", args.max_point_seconds)) if v is not None}
    opts.plan = dataclasses.replace(opts.plan, **changes)
    return opts


def run_from_args(args) -> int:
    from baton.engine.analysis.analyze import run_analysis

    result = run_analysis(options_from_args(args))
    e = result.held_out_error
    tm = result.time_model
    print(f"calibrated: {tm.flops / 1e9:.2f} GFLOP/s, {tm.bandwidth / 1e9:.2f} GB/s ({tm.source})")
    print(f"held-out error: mean {e.mean_abs:.1%}, max {e.max_abs:.1%} over {e.count} points")
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {len(result.files)} files to {result.out_dir} (summary: {result.out_dir / 'README.md'})")
    return 0
