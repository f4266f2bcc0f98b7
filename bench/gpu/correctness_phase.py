"""Phase 3, correctness on CUDA: every Triton kernel compiled for real against its torch
reference, the CUDA scoring ops against the CPU ones (both through their pytest files),
transformers parity on the GPU (fp32 within 1e-4, bf16 error beside transformers' own), and
the engine's greedy tokens identical on the Triton and torch backends and with CUDA graphs
on and off. A dry run does the same on the CPU at tiny sizes (Triton interpreted)."""
from __future__ import annotations

import re
import subprocess
import sys

from common import ROOT, PAD, Phase, device_or_skip, hf_inputs

PYTEST_TIMEOUT = 150


def pytest(phase: Phase, name: str, args: list[str], require_ran: bool = True) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    try:
        # leave a minute of the phase to the parity and engine checks after it
        limit = max(30.0, min(PYTEST_TIMEOUT, phase.seconds_left() - 60))
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=limit)
        text, rc = out.stdout + out.stderr, out.returncode
    except subprocess.TimeoutExpired as e:
        partial = e.stdout or ""
        text, rc = partial.decode(errors="replace") if isinstance(partial, bytes) else partial, "timeout"
    print(text[-6000:], flush=True)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", text)}
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)
    detail = ", ".join(f"{n} {k}" for k, n in counts.items()) or f"rc {rc}"
    if failures:
        detail += "; " + ", ".join(failures[:8])
    ran = counts.get("passed", 0) + counts.get("failed", 0)
    phase.check(name, rc == 0 and (ran > 0 or not require_ran), detail)


def parity_fp32(phase: Phase, device: str, dry: bool) -> None:
    import torch

    from baton import LLM, SamplingParams
    from baton.engine.demo import make_demo_image
    from baton.models.synthetic import build_synthetic_checkpoint
    from tests.parity_utils import LogitsRecorder, hf_greedy, hf_model

    new = 4 if dry else 32
    ckpt = build_synthetic_checkpoint(phase.work / "parity-fp32", "tiny-gqa4", seed=1)
    llm = LLM(str(ckpt), device=device, dtype="float32")
    ref = hf_model(ckpt).to(device)
    rec = LogitsRecorder(llm.model)
    prompts = {"text": "<|im_start|>user\nTell me a story about a red fox.<|im_end|>\n<|im_start|>assistant\n",
               "image": {"prompt": f"<|im_start|>user\n{PAD}What is this?<|im_end|>\n<|im_start|>assistant\n",
                         "images": [make_demo_image(64, 48, seed=3)]}}
    rows = []
    for name, prompt in list(prompts.items())[-1:] if dry else prompts.items():
        rec.calls.clear()
        out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=new, ignore_eos=True))[0]
        proc = llm.processor.process(prompt, []) if isinstance(prompt, str) else \
            llm.processor.process(prompt["prompt"], prompt["images"])
        inputs = hf_inputs(proc, llm.model_cfg.image_token_id, device)
        want, logits = hf_greedy(ref, inputs, new)
        rel = ((rec.calls[0][0].to(device) - logits).norm() / logits.norm()).item()
        same = out.token_ids == want
        rows.append([name, llm.backend, f"{rel:.1e}", f"{sum(a == b for a, b in zip(out.token_ids, want))}/{new}"])
        phase.check(f"fp32 parity with transformers ({name}, {llm.backend} backend)", rel <= 1e-4 and same,
                    f"logits rel err {rel:.1e} (<= 1e-4), greedy tokens {'identical' if same else 'differ'}")
    phase.table(f"transformers parity, fp32, {device}", ["prompt", "backend", "logits rel err", "tokens equal"], rows)
    del llm, ref
    if device == "cuda":
        torch.cuda.empty_cache()


def parity_bf16(phase: Phase, device: str, dry: bool) -> None:
    """bf16 cannot match to 1e-4: ours and transformers' bf16 are both measured against
    transformers fp32 on the same bf16-rounded weights."""
    import torch

    from baton import LLM, SamplingParams
    from baton.models.synthetic import build_synthetic_checkpoint
    from tests.parity_utils import LogitsRecorder, hf_greedy, hf_model

    new = 4 if dry else 32
    ckpt = build_synthetic_checkpoint(phase.work / "parity-bf16", "tiny-gqa4", seed=2, dtype="bfloat16")
    llm = LLM(str(ckpt), device=device, dtype="bfloat16")
    rec = LogitsRecorder(llm.model)
    ref32, ref16 = hf_model(ckpt, torch.float32).to(device), hf_model(ckpt, torch.bfloat16).to(device)
    prompt = "<|im_start|>user\nTell me a story about a red fox.<|im_end|>\n<|im_start|>assistant\n"
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=new, ignore_eos=True))[0]
    inputs = hf_inputs(llm.processor.process(prompt, []), 0, device)
    want, fp32 = hf_greedy(ref32, inputs, new)
    hf_tokens, hf16 = hf_greedy(ref16, inputs, new)

    def rel(x):
        return ((x.to(device) - fp32).norm() / fp32.norm()).item()

    def agree(tokens):
        return next((i for i, (a, b) in enumerate(zip(tokens, want)) if a != b), new)

    ours, theirs = rel(rec.calls[0][0]), rel(hf16)
    phase.table(f"bf16 vs transformers fp32 (same weights), {device}",
                ["engine", "logits rel err", "greedy prefix agreeing with fp32"],
                [[f"Baton ({llm.backend})", f"{ours:.1e}", f"{agree(out.token_ids)}/{new}"],
                 ["transformers bf16", f"{theirs:.1e}", f"{agree(hf_tokens)}/{new}"]])
    phase.check("bf16 error at most 2x transformers' own bf16 error", ours <= 2 * theirs,
                f"Baton {ours:.1e}, transformers bf16 {theirs:.1e}")


def engine_backends(phase: Phase, device: str, dry: bool) -> None:
    """Greedy tokens on the torch backend (eager) vs Triton eager vs Triton with CUDA graphs
    (static buffers uncaptured on the CPU); a small token budget mixes chunked prefill and decode."""
    from baton import LLM, SamplingParams
    from baton.engine.demo import make_demo_image
    from baton.models.synthetic import build_synthetic_checkpoint

    ckpt = build_synthetic_checkpoint(phase.work / "tiny", "tiny", seed=0)
    prompts = [{"prompt": f"<|im_start|>user\n{PAD}What is shown?<|im_end|>\n<|im_start|>assistant\n",
                "images": [make_demo_image(48, 48, seed=1)]},
               "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\nCount to five.<|im_end|>\n<|im_start|>assistant\n"]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in ((2, 4, 3) if dry else (6, 12, 9))]

    def tokens(backend, graphs):
        llm = LLM(str(ckpt), device=device, dtype="float32", attention_backend=backend, use_cuda_graphs=graphs,
                  max_num_batched_tokens=20)
        out = [o.token_ids for o in llm.generate(prompts, params)]
        s = llm.stats()
        leaks = s["kv_blocks_total"] - s["kv_blocks_free"]
        return out, llm.runner.static_decode, leaks

    want, _, _ = tokens("torch", False)
    eager, _, _ = tokens("triton", False)
    graphs, static, leaks = tokens("triton", True)
    phase.check(f"greedy tokens: triton == torch backend ({device})", eager == want, f"{eager} vs {want}")
    captured = sorted(static.graphs) if static.capture else []
    phase.check(f"greedy tokens: triton with CUDA graphs == without ({device})",
                graphs == eager and static.steps > 0 and static.capture_error is None and leaks == 0,
                f"{static.steps} static decode steps, graphs captured for buckets {captured}, "
                f"capture error {static.capture_error}, leaked blocks {leaks}")
    if device == "cuda":
        phase.check("decode buckets were captured as CUDA graphs", bool(captured), f"buckets {captured}")


def main():
    phase = Phase("correctness", __doc__)
    device = device_or_skip(phase)
    dry = phase.dry_run
    with phase.step("triton kernels vs torch references (pytest)"):
        args = ["tests/kernels/test_kernels_triton.py"] + (["-k", "get_ops or silu_and_mul"] if dry else [])
        # dry: two of the file's tests (CI runs all of them interpreted anyway)
        pytest(phase, f"Triton kernels vs references ({'interpreted' if dry else 'compiled'})", args)
    if dry:
        phase.note("CUDA scoring ops vs CPU: not run (needs CUDA and a CUDA build of the extension)")
    else:
        with phase.step("CUDA scoring ops vs CPU (pytest)"):
            pytest(phase, "CUDA scoring ops vs CPU ops (tests/kernels/test_scoring_ops.py -k cuda)",
                   ["tests/kernels/test_scoring_ops.py", "-k", "cuda"])
    with phase.step("transformers parity fp32"):
        parity_fp32(phase, device, dry)
    with phase.step("transformers parity bf16"):
        parity_bf16(phase, device, dry)
    with phase.step("engine backends and CUDA graphs"):
        engine_backends(phase, device, dry)
    phase.finish()


if __name__ == "__main__":
    main()
