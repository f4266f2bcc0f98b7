"""The latency router where the better path changes during a run: one engine loaded by outside
traffic, then idle. Wave A runs a batch of disagreeing requests while --load other sequences
decode on one engine (--load-on; traffic the pipeline does not own); wave B runs the same batch
with both engines idle. Each fixed path takes one route for both waves; the router decides
per wave from the engines' live load. Reported per path: mean per-request seconds of each
wave and of both, and the router's routes.

Each repeat runs auto (disagreement -> transfer), auto->LR and the router back to back, in an
order that rotates, and the table gives each path's median over repeats beside the median of
the per-repeat ratio router / path (the VM drifts within minutes).

    python bench/router_split_load.py [--load 32] [--batch 8] [--small-len 512] [--large-len 512]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_flags, median_ratio, print_table  # noqa: E402
from bench.headline import Bench, CountingAgreement, Prefer, rotated, route_counts  # noqa: E402
from baton import SamplingParams  # noqa: E402

OUTSIDE_PROMPT = "<|im_start|>user\nWrite a long story.<|im_end|>\n<|im_start|>assistant\n"


def wave(bench: Bench, team, batch: int, load: int, engine) -> tuple[float, str]:
    """Mean per-request seconds of one batch, with `load` outside sequences decoding on
    `engine` throughout (aborted once the batch is done)."""
    outside = [engine.add_request(OUTSIDE_PROMPT, SamplingParams(max_tokens=100_000, ignore_eos=True))
               for _ in range(load)]
    try:
        if outside:  # their prefill done, so the batch meets decoding traffic
            engine.step()
        results = team.run_batch(bench.questions(batch), mode="auto")
    finally:
        for rid in outside:
            engine.abort(rid)
    for r in results:
        if r.error:
            raise RuntimeError(r.error)
    routes = route_counts(results) if team.router is not None else f"{batch}T"  # auto: always transfer
    return sum(r.seconds for r in results) / batch, routes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", default="demo-small")
    ap.add_argument("--large", default="demo-large")
    ap.add_argument("--load", type=int, default=32, help="outside sequences decoding on one engine in wave A")
    ap.add_argument("--load-on", choices=("small", "large"), default="large",
                    help="the engine the outside traffic runs on")
    ap.add_argument("--batch", type=int, default=8, help="requests per wave (all disagree)")
    ap.add_argument("--small-len", type=int, default=512)
    ap.add_argument("--large-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--brief-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device, args.dtype, args.kv_bytes = "auto", "float32", 4 << 30
    t0 = time.perf_counter()
    bench = Bench(args)
    print(f"{args.small} / {args.large}, {args.image_size} px, batch {args.batch} per wave, outside load "
          f"{args.load} on the {args.load_on} engine in wave A, reasoning {args.small_len} / {args.large_len}, "
          f"{torch.get_num_threads()} threads; CPU flags: {cpu_flags()}", flush=True)
    kws = {"auto": {}, "auto->LR": dict(router="latency", cost_model=Prefer("large-reason")),
           "router": dict(router="latency", cost_model=bench.cost)}
    team = lambda kw: bench.team(args.small_len, args.large_len, agreement=CountingAgreement(0.0), **kw)  # noqa: E731
    loaded = bench.small if args.load_on == "small" else bench.large
    wave(bench, team(kws["auto"]), 1, 0, loaded)  # warm-up
    times = {k: {"A": [], "B": [], "both": []} for k in kws}
    routes = {k: [] for k in kws}
    order = list(kws)
    for i in range(args.repeats):
        for key in rotated(order, i):
            a, ra = wave(bench, team(kws[key]), args.batch, args.load, loaded)
            b, rb = wave(bench, team(kws[key]), args.batch, 0, loaded)
            times[key]["A"].append(a)
            times[key]["B"].append(b)
            times[key]["both"].append((a + b) / 2)
            routes[key].append(f"A {ra}, B {rb}")
            print(f"  {key:9s} A {a:.2f} s ({ra}), B {b:.2f} s ({rb})", file=sys.stderr, flush=True)
    rows = []
    for key in kws:
        t = times[key]
        vs = median_ratio(times["router"]["both"], t["both"])
        rows.append([key, f"{statistics.median(t['A']):.2f}", f"{statistics.median(t['B']):.2f}",
                     f"{statistics.median(t['both']):.2f}", f"{vs:.3f}", routes[key][-1]])
    print_table(["path", "wave A s (loaded)", "wave B s (idle)", "both s", "router / path (paired)",
                 "routes (last repeat)"], rows)
    print(f"router / path < 1: the router was faster, by the median of per-repeat ratios over {args.repeats} "
          f"repeats; total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
