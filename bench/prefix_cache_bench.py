"""Prefix cache and continuous batching on this machine, measured side by side in one run:

1. TTFT of a repeated [image + prompt] request (warm: prefix + encoder cache) vs the same
   request cold (fresh caches). Target: warm <= 10% of cold.
2. Throughput of N concurrent requests (continuous batching) vs the same requests one by one.
   Target: >= 4x.

    python bench/prefix_cache_bench.py [--preset pair-0.3b] [--concurrent 32] [--new-tokens 32]
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
from baton.engine.demo import make_demo_image  # noqa: E402
from baton.models.synthetic import ensure_checkpoint  # noqa: E402

PAD = "<|vision_start|><|image_pad|><|vision_end|>"


def request(i: int, image, session: int = 0):
    return {"prompt": f"<|im_start|>system\nSession {session}. You are a careful assistant.<|im_end|>\n"
                      f"<|im_start|>user\n{PAD}"
                      f"Question {i}: describe region {i % 7} of the picture.<|im_end|>\n<|im_start|>assistant\n",
            "images": [image]}


def ttft(llm, prompt) -> tuple[float, int]:
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=1))[0]
    return out.metrics.ttft, out.num_cached_tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="pair-0.3b")
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--concurrent", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = ensure_checkpoint(args.preset)
    llm = LLM(str(path), device="cpu", kv_cache_bytes=2 << 30)
    image = make_demo_image(args.image_size, args.image_size, seed=3)
    prompt = request(0, image)
    ttft(llm, request(99, make_demo_image(64, 64)))  # warm-up (allocations, first-call overheads)

    cold, warm = [], []
    for r in range(args.repeats):
        # new session text and new pixels: nothing cached, the image is encoded anew
        fresh = request(0, make_demo_image(args.image_size, args.image_size, seed=100 + r), session=100 + r)
        t, cached = ttft(llm, fresh)
        assert cached < llm.block_size  # at most the chat template's first tokens, never the image
        cold.append(t)
        t, cached = ttft(llm, fresh)
        warm.append(t)
    n_prompt = len(llm.processor.process(prompt["prompt"], prompt["images"]).token_ids)
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"[1] TTFT, {args.preset}, prompt {n_prompt} tokens ({args.image_size}px image), median of {args.repeats}")
    print(f"    cold {c * 1e3:.1f} ms   warm {w * 1e3:.1f} ms   warm/cold = {w / c:.1%}  (target <= 10%)")

    params = SamplingParams(temperature=0, max_tokens=args.new_tokens, ignore_eos=True)
    prompts = [request(i, make_demo_image(args.image_size, args.image_size, seed=i % 4)) for i in range(args.concurrent)]
    llm.generate(prompts[:2], params)  # warm the encoder cache for every arm alike
    llm.generate(prompts[2:4], params)
    t0 = time.perf_counter()
    for p in prompts:
        llm.generate(p, params)
    seq_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    batch_time = time.perf_counter() - t0
    tokens = sum(len(o.token_ids) for o in outs)
    print(f"[2] {args.concurrent} requests x {args.new_tokens} new tokens ({args.preset})")
    print(f"    one by one {tokens / seq_time:.1f} tok/s ({seq_time:.1f} s)   concurrent {tokens / batch_time:.1f} tok/s "
          f"({batch_time:.1f} s)   speed-up {seq_time / batch_time:.2f}x  (target >= 4x)")


if __name__ == "__main__":
    main()
