"""Batched decode on the CPU: B sequences decoding together read every weight once per step, so
a step should cost little more than the read-bandwidth floor at any B up to 64. Beside it,
transformers `generate` serving the same requests one by one (batch 1), the way a plain HF
script answers a queue.

    python bench/batched_decode.py [--dtypes bfloat16 float32] [--batches 1 2 4 8 16 32 64]

Per B (best of --repeats): ms per decode step (each of the last new_tokens - 1 steps: wall
time of B requests for new_tokens tokens minus that of B requests for one token), its share of the floor (the time to read the
decoder's and head's weights once by the fastest plain read: bench/common.weights_read_time), and aggregate tokens/s over the whole run
(prefill included) against transformers one by one on the same prompts; decode tokens/s (B / step)
against transformers' batch-1 decode tokens/s.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (cpu_flags, decode_weights, measure_read_bandwidth, median_time, print_table,  # noqa: E402
                          weights_read_time)
from bench.e2e_vs_transformers import native_paths_line  # noqa: E402
from baton import LLM, SamplingParams  # noqa: E402
from baton.models.synthetic import ensure_checkpoint  # noqa: E402


def prompts(n: int) -> list[str]:
    return [f"<|im_start|>user\nQuestion {i}: what comes after {i * 7 % 97}?<|im_end|>\n<|im_start|>assistant\n"
            for i in range(n)]


def baton_run(llm: LLM, batch: int, new_tokens: int) -> float:
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    t0 = time.perf_counter()
    outs = llm.generate(prompts(batch), params)
    wall = time.perf_counter() - t0
    bad = [o for o in outs if len(o.token_ids) != new_tokens]
    if bad:
        raise RuntimeError(f"{len(bad)} of {batch} requests ended early: {bad[0].finish_reason}")
    return wall


def transformers_tok_s(path, dtype: str, new_tokens: int, requests: int) -> tuple[float, float]:
    """Tokens/s of transformers generate answering `requests` prompts one after another, and
    its decode-only tokens/s at batch 1 (the time of new_tokens minus that of one token)."""
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(str(path))
    model = Qwen3VLForConditionalGeneration.from_pretrained(str(path), dtype=getattr(torch, dtype)).eval()

    def answer(text: str, n: int) -> None:
        ids = tok(text, return_tensors="pt")
        with torch.inference_mode():
            model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    def serve():
        for text in prompts(requests):
            answer(text, new_tokens)

    first = prompts(1)[0]
    served = requests * new_tokens / median_time(serve, repeats=1, warmup=1)
    step = (median_time(lambda: answer(first, new_tokens), repeats=2)
            - median_time(lambda: answer(first, 1), repeats=2))
    return served, (new_tokens - 1) / step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench-0.5b")
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--hf-requests", type=int, default=2, help="requests transformers answers one by one")
    ap.add_argument("--repeats", type=int, default=2, help="best of N runs per figure")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = ensure_checkpoint(args.preset)
    bandwidth = measure_read_bandwidth()
    print(f"{args.preset}; read bandwidth (torch sum over 1 GB) {bandwidth / 1e9:.1f} GB/s; "
          f"threads {torch.get_num_threads()}")
    print(native_paths_line())
    for dtype in args.dtypes:
        llm = LLM(str(path), device="cpu", dtype=dtype, attention_backend="torch", enable_prefix_caching=False,
                  max_num_seqs=max(args.batches))
        floor, floor_read = weights_read_time(decode_weights(llm.model))
        print(f"{dtype} floor: {floor * 1e3:.1f} ms ({floor_read})")
        for batch in args.batches:  # warm-up: the routing measures each row class on first use
            baton_run(llm, batch, 2)
        rows = []
        for batch in args.batches:
            first = min(baton_run(llm, batch, 1) for _ in range(args.repeats))
            full = min(baton_run(llm, batch, args.new_tokens) for _ in range(args.repeats))
            step = (full - first) / (args.new_tokens - 1)
            per_step = ([f"{step * 1e3:.1f}", f"{floor * 1e3:.1f}", f"{floor / step:.0%}", f"{batch / step:.1f}"]
                        if step > 0 else ["-", f"{floor * 1e3:.1f}", "-", "-"])  # below timing noise
            rows.append([batch, *per_step, f"{batch * args.new_tokens / full:.1f}"])
        del llm
        hf, hf_decode = transformers_tok_s(path, dtype, args.new_tokens, args.hf_requests)
        for row in rows:
            row.append(f"{float(row[4]) / hf_decode:.1f}x" if row[4] != "-" else "-")
            row.append(f"{float(row[5]) / hf:.1f}x")
        print(f"\n{dtype}: transformers one by one {hf:.1f} tok/s with prefill ({args.new_tokens} tokens per "
              f"request), {hf_decode:.1f} decode tok/s")
        print_table(["batch", "ms/step", "floor ms", "floor/step", "decode tok/s", "tok/s (with prefill)",
                     "decode vs HF decode", "vs HF one by one"], rows)


if __name__ == "__main__":
    main()
