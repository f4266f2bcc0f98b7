"""The native CPU kernels against the torch paths, end to end in one engine, side by side.

Alternates the two settings in one process (same weights, same prompts, same KV pool) and
reports the best of --repeats runs of each:
  decode      ms per generated token at --context tokens of context
  extend      time to first token of --extend new tokens after a cached prefix of --context
              (the shape of a multi-agent final stage: a warm prompt plus transferred tokens)

"native" is the engine's CPU default: skinny GEMM (kernels.linear, where kernels.cpu_routing
measured it faster than F.linear), paged decode attention (kernels.paged_decode_cpu) and RMSNorm
(kernels.rms_norm_cpu), on the instruction-set path printed in the header (BATON_CPU_ISA forces
a lower one). "torch" switches all three to F.linear and the plain-torch references.

    python bench/cpu_native_ab.py [--preset pair-0.3b] [--dtype bfloat16] [--context 300] [--extend 70]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import baton.kernels.linear as linear_mod  # noqa: E402
import baton.kernels.paged_decode_cpu as decode_mod  # noqa: E402
import baton.kernels.rms_norm_cpu as norm_mod  # noqa: E402
from bench.common import print_table  # noqa: E402
from bench.e2e_vs_transformers import native_paths_line  # noqa: E402
from baton import LLM, SamplingParams  # noqa: E402
from baton.models.synthetic import ensure_checkpoint  # noqa: E402

MODULES = (linear_mod, "SKINNY_AVAILABLE"), (decode_mod, "NATIVE_AVAILABLE"), (norm_mod, "NATIVE_AVAILABLE")


def set_native(on: bool, defaults: list[bool]) -> None:
    for (module, flag), default in zip(MODULES, defaults):
        setattr(module, flag, on and default)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="pair-0.3b")
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--extend", type=int, default=70)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto", help="float32, bfloat16 or auto (the checkpoint's)")
    args = ap.parse_args()
    defaults = [getattr(m, f) for m, f in MODULES]
    if not any(defaults):
        sys.exit("no native CPU kernel is available here (baton.kernels._native not built, or no AVX2/FMA)")

    llm = LLM(str(ensure_checkpoint(args.preset)), device="cpu", dtype=args.dtype, kv_cache_bytes=2 << 30)
    vocab = llm.model_cfg.text.vocab_size
    prefix = [5 + i % (vocab - 10) for i in range(args.context)]
    decode_params = SamplingParams(temperature=0, max_tokens=args.decode_tokens, ignore_eos=True)
    first_token = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    llm.generate({"prompt_token_ids": prefix}, decode_params)  # warm-up; caches the prefix
    best = {}
    for rep in range(args.repeats):
        for name in ("native", "torch"):
            set_native(name == "native", defaults)
            m = llm.generate({"prompt_token_ids": prefix}, decode_params)[0].metrics
            per_token = m.decode_time / (args.decode_tokens - 1)
            # new tokens each time, so only the prefix is cached
            tail = [5 + (rep * 7919 + i * 31 + (name == "torch") * 104729) % (vocab - 10) for i in range(args.extend)]
            out = llm.generate({"prompt_token_ids": prefix + tail}, first_token)[0]
            assert out.num_cached_tokens >= args.context - llm.block_size
            d, e = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(d, per_token), min(e, out.metrics.ttft))
    set_native(True, defaults)
    (nd, ne), (td, te) = best["native"], best["torch"]
    print(f"{args.preset} {llm.dtype}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(native_paths_line())
    print_table(["", "native", "torch", "torch/native"], [
        [f"decode ms/token at {args.context} context", f"{nd * 1e3:.1f}", f"{td * 1e3:.1f}", f"{td / nd:.2f}x"],
        [f"TTFT of {args.extend} new tokens after {args.context} cached, ms", f"{ne * 1e3:.0f}", f"{te * 1e3:.0f}",
         f"{te / ne:.2f}x"],
    ])


if __name__ == "__main__":
    main()
