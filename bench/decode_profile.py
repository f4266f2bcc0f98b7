"""Where a CPU decode step's time goes, op by op, inside the native decode stack.

The stack (csrc/decode_stack.cpp) runs every layer of a pure decode step in one call, so
torch.profiler sees one opaque op. With its profiling on, the stack times each of its 11 ops
summed over the layers; this bench decodes B sequences, then reads each product's weights
once by the fastest plain read right after (bench/common.weights_read_time), in turn, for
--repeats passes. Per op: ms per step, its share of the runner's step, and for the four
products their paired share of the read floor (floor ms / op ms: 100% means the product
reads its weights as fast as a plain read does). "outside the stack" is the runner's step
(embedding, final norm, LM head, sampling) minus the stack.

    python bench/decode_profile.py [--dtype bfloat16] [--batch 1] [--threads 2] [--prompt-words 300]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import print_table, weights_read_time  # noqa: E402
from bench.e2e_vs_transformers import native_paths_line  # noqa: E402
from baton import LLM, SamplingParams  # noqa: E402
from baton.models.synthetic import ensure_checkpoint  # noqa: E402

PRODUCTS = {"qkv": ("self_attn", "qkv_proj"), "o": ("self_attn", "o_proj"),
            "gate_up": ("mlp", "gate_up_proj"), "down": ("mlp", "down_proj")}


def product_weights(decoder) -> dict[str, list[torch.Tensor]]:
    return {op: [getattr(getattr(layer, a), b).weight.detach() for layer in decoder.layers]
            for op, (a, b) in PRODUCTS.items()}


def profile_pass(llm: LLM, decoder, batch: int, new_tokens: int,
                 prompt_words: int) -> tuple[dict[str, float], float, int]:
    """(ms per decode step per op, the runner's mean decode-step ms, decode steps) for one
    generate of `batch` prompts."""
    stack = decoder.native_decode.stack
    stack.reset_profile()
    stack.profiling = True
    seen = llm.runner.steps_executed
    try:
        filler = " ".join(f"w{j % 50}" for j in range(prompt_words))
        prompts = [f"<|im_start|>user\nTell me about {i}. {filler}<|im_end|>\n<|im_start|>assistant\n"
                   for i in range(batch)]
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True))
    finally:
        stack.profiling = False
    steps = stack.profiled_steps
    if steps == 0:
        raise RuntimeError("no step ran on the native decode stack (see `baton info`: decode_stack)")
    new = list(llm.runner.recent_steps)[-(llm.runner.steps_executed - seen):]
    decode = [s.seconds for s in new if not s.prefills]
    return ({op: 1e3 * sec / steps for op, sec in stack.profile()}, 1e3 * statistics.mean(decode), steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench-0.5b")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt-words", type=int, default=0,
                    help="filler words in each prompt: longer contexts for the attention op")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = ensure_checkpoint(args.preset)
    print(f"checkpoint {path}; dtype {args.dtype}; batch {args.batch}; threads {torch.get_num_threads()}; "
          f"prompt filler words {args.prompt_words}")
    print(native_paths_line())
    llm = LLM(str(path), dtype=args.dtype, device="cpu")
    decoder = llm.model.language_model  # the text decoder, which owns the native stack
    weights = product_weights(decoder)
    # warm-up: kernel routes measured, the stack built over the KV cache
    llm.generate(["warm-up"] * args.batch, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    if decoder.native_decode.stack is None:
        raise SystemExit("decode did not run on the native stack here (`baton info`: decode_stack)")

    ops, steps_ms, floors = [], [], []
    for _ in range(args.repeats):
        per_op, step_ms, _ = profile_pass(llm, decoder, args.batch, args.new_tokens, args.prompt_words)
        ops.append(per_op)
        steps_ms.append(step_ms)
        floors.append({op: 1e3 * weights_read_time(w, repeats=1)[0] for op, w in weights.items()})

    print(f"context: {llm.runner.recent_steps[-1].decode_contexts[0]} keys at the last step")
    med = {op: statistics.median(p[op] for p in ops) for op in ops[0]}
    step = statistics.median(steps_ms)
    rows = []
    for op, ms in med.items():
        floor = ""
        if op in PRODUCTS:
            share = statistics.median(f[op] / p[op] for f, p in zip(floors, ops))
            floor = f"{statistics.median(f[op] for f in floors):.2f} ({share:.0%})"
        rows.append([op, f"{ms:.3f}", f"{ms / step:.1%}", floor])
    stack_ms = sum(med.values())
    rows.append(["stack total", f"{stack_ms:.3f}", f"{stack_ms / step:.1%}", ""])
    rows.append(["outside the stack", f"{step - stack_ms:.3f}", f"{(step - stack_ms) / step:.1%}", ""])
    rows.append(["runner step", f"{step:.3f}", "100%", ""])
    print()
    print_table(["op", "ms/step", "share of step", "floor ms (paired floor/op)"], rows)
    print(f"\nmedian of {args.repeats} passes of {args.new_tokens} tokens; the four products over all "
          f"{len(decoder.layers)} layers; floor: their weights read once by the fastest plain read, "
          "right after each pass")


if __name__ == "__main__":
    main()
