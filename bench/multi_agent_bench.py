"""Multi-agent modes end to end on a synthetic pair (text decoders ~0.3B and ~1.5B), with the
same output-token counts in every arm:

  baton      both engines warm in one process; stages reuse the prefix and encoder caches
  cold       the paper's prototype: a fresh engine per stage, no caches (load time reported apart)
  hf         transformers `generate` per stage (models loaded once)

For each mode: wall time per arm, the share of Baton's time spent outside decode, and the
large model's final-stage TTFT against its cold prefill of the same prompt. 'hf ceiling' is
the most hf/baton could reach if everything outside decode cost Baton nothing (hf time over
Baton's decode time): at equal output tokens, a decode-bound pipeline cannot beat it.
Targets: final-stage TTFT <= 10% of cold prefill; Baton >= 3x faster than hf per stage.

    python bench/multi_agent_bench.py [--small pair-0.3b --large pair-1.5b] [--reason-tokens 128]
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import print_table  # noqa: E402
from baton import LLM, MultiAgent, SamplingParams  # noqa: E402
from baton.engine.demo import make_demo_image, print_stages  # noqa: E402
from baton.models.synthetic import ensure_checkpoint  # noqa: E402

MODES = ["small", "large", "small-reason", "large-reason", "transfer", "auto"]


def question(seed, size):
    return [{"role": "user", "content": [{"type": "image", "image": make_demo_image(size, size, seed=seed)},
                                         {"type": "text", "text": "Which colour covers most of the picture?"}]}]


def run_baton(paths, args):
    team = MultiAgent(paths["small"], paths["large"], device="cpu", dtype=args.dtype, kv_cache_bytes=2 << 30,
                      reason_max_tokens=args.reason_tokens, brief_max_tokens=args.brief_tokens,
                      selector="truncate", budget=args.budget, exact_lengths=True)
    team.run(question(999, 64), mode="auto")  # warm-up on another image
    results = {}
    for i, mode in enumerate(MODES):
        msgs = question(i, args.image_size)  # a new image per mode: no cross-request reuse
        results[mode] = (team.run(msgs, mode=mode), msgs)
    processors = {k: e.processor for k, e in team.engines.items()}
    del team
    gc.collect()
    return results, processors


def run_cold(paths, results, args):
    """Every stage on a freshly loaded engine without caches."""
    times = {}
    for mode, (res, msgs) in results.items():
        load = run = 0.0
        ttft = None
        images = [msgs[0]["content"][0]["image"]]
        for st in res.stages:
            t0 = time.perf_counter()
            llm = LLM(paths[st.model], device="cpu", dtype=args.dtype, enable_prefix_caching=False,
                      kv_cache_bytes=256 << 20)
            t1 = time.perf_counter()
            out = llm.generate({"prompt_token_ids": st.prompt_token_ids, "images": images},
                               SamplingParams(temperature=0, max_tokens=st.output_tokens, ignore_eos=True))[0]
            load += t1 - t0
            run += time.perf_counter() - t1
            if st.name == "large-final":
                ttft = out.metrics.ttft
            del llm
            gc.collect()
        times[mode] = (load, run, ttft)
    return times


def run_hf(paths, results, processors, args):
    from transformers import Qwen3VLForConditionalGeneration

    times = {mode: 0.0 for mode in results}
    for model in ("small", "large"):
        hf = Qwen3VLForConditionalGeneration.from_pretrained(paths[model], dtype=getattr(torch, args.dtype)).eval()
        image_token = hf.config.image_token_id
        for mode, (res, msgs) in results.items():
            for st in res.stages:
                if st.model != model:
                    continue
                proc = processors[model].process_ids(st.prompt_token_ids, [msgs[0]["content"][0]["image"]])
                ids = torch.tensor([proc.token_ids])
                inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                          "pixel_values": proc.images[0].pixel_values,
                          "image_grid_thw": torch.tensor([list(proc.images[0].grid_thw)]),
                          "mm_token_type_ids": (ids == image_token).long()}
                t0 = time.perf_counter()
                with torch.inference_mode():
                    hf.generate(**inputs, max_new_tokens=st.output_tokens, min_new_tokens=st.output_tokens,
                                do_sample=False, pad_token_id=0)
                times[mode] += time.perf_counter() - t0
        del hf
        gc.collect()
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", default="pair-0.3b")
    ap.add_argument("--large", default="pair-1.5b")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--reason-tokens", type=int, default=128)
    ap.add_argument("--brief-tokens", type=int, default=8)
    ap.add_argument("--budget", type=float, default=0.5, help="fraction of the reasoning transferred")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    paths = {"small": str(ensure_checkpoint(args.small)), "large": str(ensure_checkpoint(args.large))}
    print(f"checkpoints ready ({time.perf_counter() - t0:.0f} s); threads {torch.get_num_threads()}")
    results, processors = run_baton(paths, args)
    cold = run_cold(paths, results, args)
    hf = {} if args.skip_hf else run_hf(paths, results, processors, args)

    rows = []
    for mode, (res, _) in results.items():
        decode = sum(st.decode_seconds for st in res.stages)
        load, run, cold_ttft = cold[mode]
        final = next((st for st in res.stages if st.name == "large-final"), None)
        ttft_ratio = f"{final.ttft / cold_ttft:.1%}" if final and cold_ttft else "-"
        hf_t = hf.get(mode)
        rows.append([mode, res.mode, len(res.stages), f"{res.seconds:.2f}", f"{1 - decode / res.seconds:.0%}",
                     f"{run:.2f}", f"{load:.1f}", f"{run / res.seconds:.2f}x",
                     "-" if hf_t is None else f"{hf_t:.2f}", "-" if hf_t is None else f"{hf_t / res.seconds:.2f}x",
                     "-" if hf_t is None else f"{hf_t / decode:.2f}x", ttft_ratio])
    print()
    print_table(["mode", "path", "stages", "baton s", "non-decode", "cold s", "cold load s", "cold/baton",
                 "hf s", "hf/baton", "hf ceiling", "final TTFT/cold"], rows)
    for mode in ("transfer", "auto"):
        print(f"\nBaton stages, mode {mode}:")
        print_stages(results[mode][0])
    print("\nEqual output tokens in every arm (exact lengths). 'cold s' excludes the per-stage load time shown apart.")
    hooked = [mode for mode, (res, _) in results.items() if res.agreement_hook]
    print("Verification: " + (f"decided by the agreement hook in {', '.join(hooked)}" if hooked
                              else "the models' own answers (no agreement hook)"))


if __name__ == "__main__":
    main()
