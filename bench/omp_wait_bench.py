"""OpenMP wait policy vs CPU contention: decode throughput of one engine with the OpenMP
worker threads spinning (libgomp's default) or sleeping (OMP_WAIT_POLICY=passive) between
parallel regions, with and without other processes competing for the cores.

Each cell runs in a fresh interpreter (libgomp reads the policy once, when torch loads):
greedy decode of --batch prompts for --max-tokens tokens, stepped from the main thread and
from a worker thread (as AsyncEngine and MultiAgent step), best of --repeats. `--load N`
starts N busy-looping processes beside it for the loaded rows, the situation of a server
whose HTTP clients, tokenizer pool or neighbours share the cores.

    python bench/omp_wait_bench.py [--preset tiny] [--loads 0,1] [--batch 8] [--max-tokens 32]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_flags, print_table  # noqa: E402

POLICIES = ("default", "passive")

CHILD = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import torch
from baton import LLM, SamplingParams
from baton.models.synthetic import ensure_checkpoint
preset, batch, max_tokens, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = LLM(str(ensure_checkpoint(preset)), device="cpu", dtype="float32")
params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
prompts = [f"request {i}: describe a red square in detail" for i in range(batch)]
def once():
    t = time.perf_counter(); llm.generate(prompts, params, use_tqdm=False); return time.perf_counter() - t
once()
main = min(once() for _ in range(repeats))
with ThreadPoolExecutor(1) as pool:
    worker = min(pool.submit(once).result() for _ in range(repeats))
print(json.dumps({"main": main, "worker": worker, "threads": torch.get_num_threads()}))
"""


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def run_cell(args, policy: str) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env["BATON_OMP_WAIT_POLICY"] = "default"  # keep Baton from choosing for the child
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", CHILD, args.preset, str(args.batch), str(args.max_tokens),
                          str(args.repeats)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--loads", default="0,1", help="busy processes beside the engine, per row")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"# CPU flags: {cpu_flags()}; cores: {os.cpu_count()}; preset {args.preset}, batch {args.batch}, "
          f"{args.max_tokens} tokens; best of {args.repeats}; load average before: {os.getloadavg()[0]:.1f}")
    rows = []
    for load in (int(x) for x in args.loads.split(",")):
        stop = mp.Event()
        spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(load)]
        for p in spinners:
            p.start()
        time.sleep(0.2 if load else 0)
        try:
            cells = {policy: run_cell(args, policy) for policy in POLICIES}
        finally:
            stop.set()
            for p in spinners:
                p.join()
        tokens = args.batch * args.max_tokens
        for where in ("main", "worker"):
            d, p = cells["default"][where], cells["passive"][where]
            rows.append([load, where, f"{tokens / d:.0f}", f"{tokens / p:.0f}", f"{d / p:.2f}x"])
    print_table(["busy procs", "stepping thread", "tok/s default (spin)", "tok/s passive", "passive speedup"], rows)


if __name__ == "__main__":
    main()
