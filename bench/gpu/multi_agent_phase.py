"""Phase 6, multi-agent: bench/multi_agent_bench.py's modes and arms at the real 2B / 8B sizes
on the GPU. That bench reads synthetic checkpoints from disk and builds fresh engines per
stage, which at 8B would spend the phase writing and loading weights; here both models are
LLM.from_random engines (random bf16 weights) and the arms are:

  baton   both engines warm in one MultiAgent; stages reuse the prefix and encoder caches
  cold    the large model's final stage prefilled by an engine without any cache
  hf      transformers `generate` per stage (same configs, random weights)

Equal output tokens in every arm (exact lengths). Then bench/headline.py --quick on the device
(not in a dry run). A dry run uses the tiny config on the CPU."""
from __future__ import annotations

import gc
import subprocess
import sys
import time

from common import ROOT, Phase, device_or_skip, hf_inputs, hf_model, model_config, processor_dir, sync


def engine(cfg, phase, device, dtype, dry, seed, **kw):
    from baton import LLM

    return LLM.from_random(cfg, processor_dir=processor_dir(phase.work), seed=seed, device=device, dtype=dtype,
                           max_model_len=4096, kv_cache_bytes=(64 << 20) if dry else (6 << 30), **kw)


def free(device):
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def main():
    phase = Phase("multi_agent", __doc__)
    device = device_or_skip(phase)
    dry = phase.dry_run
    import torch

    from baton import MultiAgent
    from bench.multi_agent_bench import MODES, question

    dtype = "float32" if dry else "bfloat16"
    sizes = ("tiny", "tiny") if dry else ("2b", "8b")
    cfgs = [model_config(s, dry) for s in sizes]
    side, reason, brief = (64, 8, 3) if dry else (448, 128, 8)
    results, images = {}, {}
    with phase.step("baton: every mode, warm"):
        small, large = engine(cfgs[0], phase, device, dtype, dry, 1), engine(cfgs[1], phase, device, dtype, dry, 2)
        team = MultiAgent(small, large, reason_max_tokens=reason, brief_max_tokens=brief, selector="truncate",
                          budget=0.5, exact_lengths=True)
        if not dry:
            team.run(question(999, 64), mode="auto")  # warm-up on another image
        for i, mode in enumerate(["large", "auto"] if dry else MODES):  # dry: auto covers the transfer path
            msgs = question(i, side)
            images[mode] = [msgs[0]["content"][0]["image"]]
            results[mode] = team.run(msgs, mode=mode)
        processor = large.processor
        del team, small, large
        free(device)
    cold = {}
    with phase.step("cold: the final stage's prefill without caches"):
        fresh = engine(cfgs[1], phase, device, dtype, dry, 2, enable_prefix_caching=False)
        from baton import SamplingParams

        fresh.generate("warm-up", SamplingParams(max_tokens=1))
        for mode, res in results.items():
            final = next((st for st in res.stages if st.name == "large-final"), None)
            if final is not None:
                out = fresh.generate({"prompt_token_ids": final.prompt_token_ids, "images": images[mode]},
                                     SamplingParams(temperature=0, max_tokens=1))[0]
                cold[mode] = out.metrics.ttft
        del fresh
        free(device)
    hf_seconds = {}
    with phase.step("hf: transformers generate per stage"):
        for which, cfg in zip(("small", "large"), cfgs):
            hf = hf_model(cfg, processor.tokenizer, getattr(torch, dtype), device)
            pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
            for mode, res in results.items():
                for st in (s for s in res.stages if s.model == which):
                    inputs = hf_inputs(processor.process_ids(st.prompt_token_ids, images[mode]), pad, device)
                    sync(device)
                    t0 = time.perf_counter()
                    with torch.inference_mode():
                        hf.generate(**inputs, max_new_tokens=st.output_tokens, min_new_tokens=st.output_tokens,
                                    do_sample=False, pad_token_id=0)
                    sync(device)
                    hf_seconds[mode] = hf_seconds.get(mode, 0.0) + time.perf_counter() - t0
            del hf
            free(device)
    rows = []
    for mode, res in results.items():
        decode = sum(st.decode_seconds for st in res.stages)
        final = next((st for st in res.stages if st.name == "large-final"), None)
        ratio = f"{final.ttft / cold[mode]:.1%}" if final and cold.get(mode) else "-"
        hf_t = hf_seconds.get(mode)
        rows.append([mode, res.mode, len(res.stages), sum(st.output_tokens for st in res.stages), f"{res.seconds:.3f}",
                     f"{1 - decode / res.seconds:.0%}", "-" if hf_t is None else f"{hf_t:.3f}",
                     "-" if hf_t is None else f"{hf_t / res.seconds:.2f}x", ratio])
    phase.table(f"Multi-agent modes, small {sizes[0]} / large {sizes[1]}, {dtype}, {side} px image",
                ["mode", "path", "stages", "output tokens", "baton s", "non-decode", "hf s", "hf/baton",
                 "final TTFT / cold prefill"], rows)
    phase.data("modes", {m: {"seconds": r.seconds, "path": r.mode, "hf_seconds": hf_seconds.get(m),
                             "stages": [vars(s) | {"prompt_token_ids": None} for s in r.stages]}
                         for m, r in results.items()})
    with phase.step("headline bench"):
        headline(phase, device)
    phase.finish()


def headline(phase: Phase, device: str) -> None:
    """bench/headline.py --quick on this device (demo presets: writing pair-size checkpoints would
    take the phase's time). A dry run leaves it to tests/multi_agent/test_headline_bench.py."""
    path = ROOT / "bench" / "headline.py"
    if not path.exists():
        phase.note("headline bench: bench/headline.py not found")
        return
    if phase.dry_run:
        phase.note("headline bench: not run in a dry run (tests/multi_agent/test_headline_bench.py covers it)")
        return
    budget = phase.seconds_left(120) - 15
    if budget < 30:
        phase.note(f"headline bench: skipped, {budget + 15:.0f} s left in the phase")
        return
    cmd = [sys.executable, str(path), "--quick", "--device", device, "--dtype", "bfloat16",
           "--png", str(phase.work / "headline.png"), "--json", str(phase.work / "headline.json")]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, cwd=ROOT)
    except subprocess.TimeoutExpired:
        phase.check("headline bench --quick finished", False, f"timed out after {budget:.0f} s")
        return
    phase.note(f"headline bench --quick --device {device} (rc {out.returncode}):\n" + out.stdout[-3000:])
    phase.check("headline bench --quick ran", out.returncode == 0, out.stderr[-300:])


if __name__ == "__main__":
    main()
