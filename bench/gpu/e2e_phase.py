"""Phase 5, end to end: the real Qwen3-VL-2B and -8B configs with random bf16 weights
(LLM.from_random), one image prompt: TTFT and decode ms/token against transformers `generate`
on the same GPU; decode at batch 1 as a fraction of the weight-bytes / HBM floor, with CUDA
graphs and without; throughput of 32 concurrent requests. Targets: CUDA-graph decode of the
8B at batch 1 within 1.2x of the floor; TTFT and decode >= 2x transformers. A dry run uses
the tiny synthetic config on the CPU (the static decode path runs uncaptured there)."""
from __future__ import annotations

import gc
import statistics

from common import PAD, Phase, device_or_skip, hf_inputs, hf_model, model_config, peaks, processor_dir, sync, timed


def prompt(i: int, size: int):
    from baton.engine.demo import make_demo_image

    return {"prompt": f"<|im_start|>user\n{PAD}Describe picture {i}.<|im_end|>\n<|im_start|>assistant\n",
            "images": [make_demo_image(size, size, seed=i)]}


def measure_size(phase: Phase, name: str, device: str, dry: bool, hbm: float | None) -> dict:
    import torch

    from baton import LLM, SamplingParams
    from bench.common import weight_bytes

    new, conc, side = (6, 4, 64) if dry else (64, 32, 448)
    dtype = "float32" if dry else "bfloat16"
    cfg = model_config(name, dry)
    llm = LLM.from_random(cfg, processor_dir=processor_dir(phase.work), device=device, dtype=dtype,
                          enable_prefix_caching=False, max_model_len=4096, max_num_seqs=conc,
                          kv_cache_bytes=(64 << 20) if dry else (8 << 30), use_cuda_graphs=True)
    static = llm.runner.static_decode

    def greedy(n):
        return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)

    llm.generate(prompt(0, side), greedy(4))  # warm-up: kernels compiled, bucket 1 captured
    # a new image each run: cold encoder cache, full prefill (prefix caching is off)
    runs = (1,) if dry else (1, 2, 3)
    ttft = statistics.median(llm.generate(prompt(i, side), greedy(1))[0].metrics.ttft for i in runs)

    def per_token(graphs: bool) -> float:
        llm.runner.static_decode = static if graphs else None
        outs = [llm.generate(prompt(3 + i, side), greedy(new))[0] for i in runs[:2]]
        llm.runner.static_decode = static
        return statistics.median(o.metrics.decode_time / (len(o.token_ids) - 1) for o in outs)

    tok_graph, tok_eager = per_token(True), per_token(False)

    def throughput(graphs: bool, first_image: int) -> float:
        llm.runner.static_decode = static if graphs else None
        batch = [prompt(first_image + i, side) for i in range(conc)]  # new images: no encoder-cache hits
        sync(device)
        seconds = timed(lambda: llm.generate(batch, greedy(new)), device, repeats=1, warmup=0)
        llm.runner.static_decode = static
        return conc * new / seconds

    llm.generate([prompt(200 + i, side) for i in range(conc)], greedy(2))  # captures the batch's bucket
    tput_graph, tput_eager = throughput(True, 100), throughput(False, 300)
    floor = weight_bytes(llm.model) / hbm if hbm else None
    processed = llm.processor.process(prompt(1, side)["prompt"], prompt(1, side)["images"])
    tokenizer = llm.processor.tokenizer
    row = {"model": name, "prompt_tokens": len(processed.token_ids), "ttft_s": ttft, "tok_graph_s": tok_graph,
           "tok_eager_s": tok_eager, "floor_s": floor, "tput_graph": tput_graph, "tput_eager": tput_eager,
           "captured_buckets": sorted(static.graphs), "capture_error": static.capture_error}
    phase.check(f"{name}: CUDA graphs in use" if device == "cuda" else f"{name}: static decode path in use",
                static.steps > 0 and static.capture_error is None and (device != "cuda" or bool(static.graphs)),
                f"{static.steps} static steps, buckets captured {sorted(static.graphs)}, error {static.capture_error}")
    del llm, static
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    hf = hf_model(cfg, tokenizer, getattr(torch, dtype), device)
    inputs = hf_inputs(processed, tokenizer.convert_tokens_to_ids("<|image_pad|>"), device)

    def generate(n):
        with torch.inference_mode():
            hf.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    hf_ttft = timed(lambda: generate(1), device, repeats=len(runs))
    hf_full = timed(lambda: generate(new), device, repeats=len(runs[:2]), warmup=0)
    row.update(hf_ttft_s=hf_ttft, hf_tok_s=(hf_full - hf_ttft) / (new - 1))
    del hf
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def main():
    phase = Phase("e2e", __doc__)
    device = device_or_skip(phase)
    hbm = peaks()[0] if device == "cuda" else None
    rows = []
    for name in (["tiny"] if phase.dry_run else ["2b", "8b"]):
        with phase.step(f"end to end {name}"):
            r = measure_size(phase, name, device, phase.dry_run, hbm)
            rows.append(r)
            phase.data("rows", rows)

    def ms(x):
        return "-" if x is None else f"{x * 1e3:.2f}"

    def floor_pct(r, key):
        return "-" if r["floor_s"] is None else f"{100 * r['floor_s'] / r[key]:.0f}%"

    phase.table("TTFT and decode vs transformers generate (batch 1, one image)",
                ["model", "prompt", "TTFT ms", "HF TTFT ms", "HF/Baton", "decode ms/tok (graphs)", "no graphs",
                 "HF ms/tok", "HF/Baton"],
                [[r["model"], r["prompt_tokens"], ms(r["ttft_s"]), ms(r["hf_ttft_s"]),
                  f"{r['hf_ttft_s'] / r['ttft_s']:.2f}x", ms(r["tok_graph_s"]), ms(r["tok_eager_s"]),
                  ms(r["hf_tok_s"]), f"{r['hf_tok_s'] / r['tok_graph_s']:.2f}x"]
                 for r in rows])
    phase.table("Decode vs the weight-bytes / HBM floor, and 32 concurrent requests",
                ["model", "floor ms", "graphs % of floor", "no graphs % of floor", "tok/s concurrent (graphs)",
                 "tok/s (no graphs)"],
                [[r["model"], ms(r["floor_s"]), floor_pct(r, "tok_graph_s"), floor_pct(r, "tok_eager_s"),
                  f"{r['tput_graph']:.0f}", f"{r['tput_eager']:.0f}"] for r in rows])
    phase.finish()


if __name__ == "__main__":
    main()
