"""Latency analysis of Qwen3-VL components on the Baton engine, with a calibrated cost model.

Measures vision-encoder, prefill and per-token decode latency of random-weight Qwen3-VL
architectures on the engine, fits a two-constant FLOP/byte cost model on the measurements,
validates it on held-out points, and predicts every real size (2B .. 32B) on this device and
on H100 / H200 from their specs: crossover tables (how many tokens a large model may produce
and still beat a small one), multi-agent mode latencies, plots and a README summary.

    python bench/latency_analysis.py --quick            # 1.5 min on the idle 2-core CPU, 4-6 shared (CI, demo)
    python bench/latency_analysis.py                    # full sweep, about an hour on that CPU
    python bench/latency_analysis.py --from-csv baton-out/latency-full/measurements.csv --out re/
    baton analyze --quick                               # the same, from the console script

Everything lands in one directory (default baton-out/latency-quick or baton-out/latency-full).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from baton.engine.analysis.command import add_arguments, run_from_args  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
