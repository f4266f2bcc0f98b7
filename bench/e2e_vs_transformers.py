"""Baton vs transformers `generate` on the same synthetic checkpoint (text decoder ~0.5B,
Qwen3-VL-2B vision tower), batch 1, one image: time to first token and per-token decode,
as ratios, plus the floor for decode (the time to read the decoder's weights once, by the
fastest plain read: bench/common.weights_read_time), and Baton's decode on the per-op path
(the native decode stack off) beside it.

    python bench/e2e_vs_transformers.py [--dtypes float32 bfloat16] [--new-tokens 32]
    python bench/e2e_vs_transformers.py --preset real-2b --image-size 448 --dtypes bfloat16   # real size
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (cpu_flags, decode_weights, measure_read_bandwidth, median_ratio,  # noqa: E402
                          median_time, paired_times, plain_reads, print_table, weight_bytes, weights_read_time)
from baton import LLM, SamplingParams  # noqa: E402
from baton.engine.demo import make_demo_image  # noqa: E402
from baton.models import native_decode  # noqa: E402
from baton.models.synthetic import ensure_checkpoint  # noqa: E402

PAD = "<|vision_start|><|image_pad|><|vision_end|>"


def native_paths_line() -> str:
    """CPU flags, the native kernels' instruction-set path and the linear routing mode."""
    from baton.kernels import cpu_isa, cpu_routing

    return (f"CPU flags: {cpu_flags()}; native path: {cpu_isa.active()} (BATON_CPU_ISA to force lower); "
            f"linear routing: {cpu_routing.mode()} (BATON_CPU_KERNELS), cache {cpu_routing.cache_path()}")


def upper_median(xs: list[float]) -> float:
    """The middle value (the upper of the two middle ones for an even count): always a measured run."""
    return sorted(xs)[len(xs) // 2]


def bench_baton(path, dtype, prompt, new_tokens, repeats):
    llm = LLM(str(path), device="cpu", dtype=dtype, attention_backend="torch", enable_prefix_caching=False)
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    llm.generate(prompt, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))  # warm-up
    ttfts, per_tok, eager_tok, shares = [], [], [], []
    weights = decode_weights(llm.model)
    floor, floor_read = weights_read_time(weights)
    for _ in range(repeats):
        llm.encoder_cache._entries.clear()  # cold image every run: same work as transformers
        out = llm.generate(prompt, params)[0]
        ttfts.append(out.metrics.ttft)
        per_tok.append(out.metrics.decode_time / (len(out.token_ids) - 1))
        # the VM's bandwidth drifts within seconds: each run's floor share uses a reading taken
        # right after it
        shares.append(weights_read_time(weights)[0] / per_tok[-1])
        # the same decode on the per-op path (models/native_decode.py off), side by side
        os.environ[native_decode.ENV] = "0"
        try:
            out = llm.generate(prompt, params)[0]
        finally:
            os.environ.pop(native_decode.ENV)
        eager_tok.append(out.metrics.decode_time / (len(out.token_ids) - 1))
    step_share = interleaved_share(llm, prompt, weights, floor_read, new_tokens)
    return (upper_median(ttfts), upper_median(per_tok), upper_median(eager_tok),
            (floor, floor_read, upper_median(shares), step_share), llm)


def interleaved_share(llm, prompt, weights, read: str, new_tokens: int) -> float:
    """The median over decode steps of floor / step, each step followed at once by one read
    of the weights (the `read` plain read): paired within tens of milliseconds, where the
    per-run pairing is a second apart and this VM's bandwidth moved by 1.5x within a minute."""
    reader = plain_reads()[read]
    contiguous = [t if t.is_contiguous() else t.contiguous() for t in weights]
    llm.encoder_cache._entries.clear()
    llm.add_request(prompt, SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True))
    shares = []
    while llm.has_unfinished():
        seen = llm.runner.steps_executed
        llm.step()
        step = llm.runner.recent_steps[-1] if llm.runner.steps_executed > seen else None
        if step is None or step.prefills or step.first_use:
            continue
        t0 = time.perf_counter()
        for t in contiguous:
            reader(t)
        shares.append((time.perf_counter() - t0) / step.seconds)
    return upper_median(shares)


def bench_transformers(path, dtype, inputs, new_tokens, repeats):
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(str(path), dtype=getattr(torch, dtype)).eval()

    def gen(n):
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    ttft = median_time(lambda: gen(1), repeats=repeats)
    full = median_time(lambda: gen(new_tokens), repeats=repeats)
    return ttft, (full - ttft) / (new_tokens - 1), lambda: gen(1)


def paired_ttft(llm, prompt, hf_first_token, repeats) -> float:
    """transformers' TTFT / Baton's, the median over passes that run one cold first token of
    each back to back: the unpaired columns are minutes apart, and this VM drifts by 10-20%
    in that time."""
    one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)

    def baton_first_token():
        llm.encoder_cache._entries.clear()
        llm.generate(prompt, one)

    times = paired_times({"baton": baton_first_token, "hf": hf_first_token}, repeats=max(repeats, 3))
    return median_ratio(times["hf"], times["baton"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench-0.5b")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    # bf16-only runs store the checkpoint in bf16 (half the disk for the real-size preset)
    path = ensure_checkpoint(args.preset, dtype="bfloat16" if set(args.dtypes) == {"bfloat16"} else "float32")
    print(f"checkpoint {path} ({time.perf_counter() - t0:.1f} s)")
    image = make_demo_image(args.image_size, args.image_size, seed=1)
    prompt = {"prompt": f"<|im_start|>user\n{PAD}Describe the picture.<|im_end|>\n<|im_start|>assistant\n",
              "images": [image]}
    bandwidth = measure_read_bandwidth()
    print(f"DRAM read bandwidth, torch sum over 1 GB: {bandwidth / 1e9:.1f} GB/s; threads: {torch.get_num_threads()}")
    print(native_paths_line())
    rows = []
    headers = ["dtype", "prompt", "TTFT baton ms", "TTFT HF ms", "HF/baton", "paired HF/baton",
               "tok baton ms", "tok HF ms", "HF/baton", "floor ms", "floor read", "floor/baton",
               "paired floor/baton", "per-step floor/baton", "1 GB sum floor/baton", "tok per-op ms"]
    for dtype in args.dtypes:
        b_ttft, b_tok, b_eager, (floor, floor_read, b_share, step_share), llm = bench_baton(
            path, dtype, prompt, args.new_tokens, args.repeats)
        processed = llm.processor.process(prompt["prompt"], prompt["images"])
        ids = torch.tensor([processed.token_ids])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "pixel_values": processed.images[0].pixel_values,
                  "image_grid_thw": torch.tensor([list(processed.images[0].grid_thw)]),
                  "mm_token_type_ids": (ids == llm.model_cfg.image_token_id).long()}
        sum_floor = weight_bytes(llm.model) / bandwidth
        n_prompt = len(processed.token_ids)
        h_ttft, h_tok, hf_first_token = bench_transformers(path, dtype, inputs, args.new_tokens, args.repeats)
        ttft_ratio = paired_ttft(llm, prompt, hf_first_token, args.repeats)
        del llm, hf_first_token
        rows.append([dtype, n_prompt, f"{b_ttft * 1e3:.0f}", f"{h_ttft * 1e3:.0f}", f"{h_ttft / b_ttft:.2f}x",
                     f"{ttft_ratio:.2f}x",
                     f"{b_tok * 1e3:.1f}", f"{h_tok * 1e3:.1f}", f"{h_tok / b_tok:.2f}x",
                     f"{floor * 1e3:.1f}", floor_read, f"{floor / b_tok:.0%}", f"{b_share:.0%}",
                     f"{step_share:.0%}",
                     f"{sum_floor / b_tok:.0%}", f"{b_eager * 1e3:.1f}"])
        print(flush=True)
        print_table(headers, rows)
    print("\nHF/baton > 1 means Baton is faster; paired HF/baton (TTFT): the median over passes that run "
          "one cold first token of each back to back; floor = the time to read the decoder's and head's weights once, "
          "one tensor after another, by the fastest of torch's sum and 1-8 streams per thread (floor read), before "
          "the runs; paired floor/baton: the median over runs of the share against a floor read right after each "
          "run; per-step floor/baton: the median over one run's decode steps of the share against a read "
          "right after each step; 1 GB sum floor/baton: against weight bytes / torch's sum over one 1 GB buffer "
          "(the floor reported until 2026-11-30, which the 4-stream GEMV can beat); tok per-op ms: Baton's "
          "decode with the native decode stack off (BATON_NATIVE_DECODE=0).")


if __name__ == "__main__":
    main()
