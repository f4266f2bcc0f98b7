"""Per-token cost of a long streamed generation with a stop string: at token 100 vs token N.

Baton detokenises incrementally and searches stop strings in a bounded tail, so its output
processing costs the same per token late in a generation as early. The baseline beside it
is the obvious approach (decode the whole output again every token and search it), timed on
the same token ids. The end-to-end step time is printed too; it grows with context because
attention reads more keys, which is the model's cost, not the output path's.

    python bench/streaming_bench.py [--tokens 2000] [--preset tiny]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from baton import LLM, SamplingParams  # noqa: E402
from baton.models.synthetic import ensure_checkpoint  # noqa: E402
from bench.common import cpu_flags, print_table  # noqa: E402

STOP = "<<never in the output>>"


def window(xs: list[float], at: int, half: int = 25) -> float:
    """Median of the per-token times of the 2 * half tokens ending at token `at` (1-based)."""
    return statistics.median(xs[max(0, at - 2 * half):at])


def host_only_times(llm, prompt, params, token_ids: list[int]) -> list[float]:
    from baton.engine.model_runner import StepResult

    def replay(batch):
        return [StepResult(seq, token_ids[seq.num_output_tokens], None)
                for seq, k in zip(batch.seqs, batch.num_new_tokens) if seq.num_computed_tokens + k >= len(seq)]

    real, llm.runner.execute = llm.runner.execute, replay
    try:
        times, t_prev = [], time.perf_counter()
        for _ in llm.stream(prompt, params):
            now = time.perf_counter()
            times.append(now - t_prev)
            t_prev = now
    finally:
        llm.runner.execute = real
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--early", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = ensure_checkpoint(args.preset)
    llm = LLM(str(path), device="cpu", dtype="float32", max_model_len=args.tokens + 256)
    prompt = "<|im_start|>user\nWrite a very long story.<|im_end|>\n<|im_start|>assistant\n"
    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True, stop=[STOP])

    # the output path of each step: from the scheduler's post-step update to the end of the
    # step (token bookkeeping, incremental detokenisation, stop search, the output object)
    out_path: list[float] = []
    update, engine_step = llm.scheduler.update_from_output, llm._engine_step
    mark = {}

    def timed_update(batch, results):
        mark["t"] = time.perf_counter()
        return update(batch, results)

    def timed_step():
        engine_step()
        out_path.append(time.perf_counter() - mark["t"])

    llm.scheduler.update_from_output, llm._engine_step = timed_update, timed_step
    step_times, t_prev = [], time.perf_counter()
    outs = []
    for out in llm.stream(prompt, params):
        now = time.perf_counter()
        step_times.append(now - t_prev)
        t_prev = now
        outs.append(out)
    llm.scheduler.update_from_output, llm._engine_step = update, engine_step
    final = outs[-1]
    assert len(final.token_ids) == args.tokens and final.finish_reason == "length"

    # baseline: re-decode the whole output and search it, every token (same ids)
    ids = final.token_ids
    decode = llm.processor.decode

    def full_redecode(n: int) -> float:
        t0 = time.perf_counter()
        text = decode(ids[:n])
        text.find(STOP)
        return time.perf_counter() - t0

    base = [full_redecode(n) for n in range(1, args.tokens + 1)]

    # the engine's whole host path per token (schedule, bookkeeping, detokenisation, stop
    # search, outputs) with the network replaced by replaying the same token ids
    # best of 3 replays: this path is tens of microseconds, so one run is at the mercy of noise
    replays = [host_only_times(llm, prompt, params, final.token_ids) for _ in range(3)]

    e, n = args.early, args.tokens
    rows = [
        ("Baton host path, model replayed (per token)", min(window(h, e) for h in replays) * 1e6,
         min(window(h, n) for h in replays) * 1e6),
        ("Baton output path (after the model, per token)", window(out_path, e) * 1e6, window(out_path, n) * 1e6),
        ("baseline: full re-decode + search per token", window(base, e) * 1e6, window(base, n) * 1e6),
        ("Baton whole step (model included)", window(step_times, e) * 1e6, window(step_times, n) * 1e6),
    ]
    print(f"preset {args.preset}, float32, {torch.get_num_threads()} threads, CPU flags: {cpu_flags()}")
    print(f"{n}-token greedy stream with a stop string; medians of 50 tokens around each position")
    print_table(["per token", f"at token {e} (us)", f"at token {n} (us)", f"{n} / {e}"],
                [(name, f"{a:.1f}", f"{b:.1f}", f"{b / a:.2f}x") for name, a, b in rows])
    print(f"joined deltas == final text: {''.join(o.delta for o in outs) == final.text}")


if __name__ == "__main__":
    main()
