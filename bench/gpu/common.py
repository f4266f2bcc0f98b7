"""Shared by the acceptance phases (bench/gpu/*_phase.py): arguments, the phase's result
file, isolated steps, device timing and the GPU's data-sheet peaks.

A phase writes its result JSON after every step, so a phase killed by its timeout still
leaves what it measured. acceptance.sh reads the file; report.py renders it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "kernels"))  # kernel_bench: GPU_PEAKS

PAD = "<|vision_start|><|image_pad|><|vision_end|>"
# Qwen3-VL special tokens whose ids transformers reads from its config: with the synthetic
# tokenizer they must be the tokenizer's ids, not the real vocabulary's.
SPECIAL_TOKENS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                  "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}


class Phase:
    """One phase's results: notes, checks, tables and raw data, saved as JSON on every change."""

    def __init__(self, name: str, description: str):
        ap = argparse.ArgumentParser(description=description)
        ap.add_argument("--json", required=True, help="where this phase writes its results")
        ap.add_argument("--work", default=None, help="scratch directory (checkpoints, outputs)")
        ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton interpreter")
        self.args = ap.parse_args()
        self.dry_run = self.args.dry_run
        self.work = Path(self.args.work or Path(self.args.json).parent / name)
        self.work.mkdir(parents=True, exist_ok=True)
        self.result = {"name": name, "status": "ok", "reason": "", "notes": [], "checks": [], "tables": [],
                       "data": {}}
        self.save()

    def save(self) -> None:
        path = Path(self.args.json)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1, default=str))
        tmp.replace(path)

    def note(self, line: str) -> None:
        print(line, flush=True)
        self.result["notes"].append(line)
        self.save()

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        print(f"[{'ok' if ok else 'FAILED'}] {name}: {detail}", flush=True)
        self.result["checks"].append({"name": name, "ok": bool(ok), "detail": detail})
        self.save()
        return ok

    def table(self, title: str, headers: list[str], rows: list[list]) -> None:
        self.result["tables"].append({"title": title, "headers": headers, "rows": [[str(c) for c in r] for r in rows]})
        print(f"\n{title}\n" + "\n".join(" | ".join(map(str, r)) for r in [headers] + rows), flush=True)
        self.save()

    def data(self, key: str, value) -> None:
        self.result["data"][key] = value
        self.save()

    @staticmethod
    def seconds_left(default: float = 600.0) -> float:
        """Seconds until acceptance.sh kills this phase (BATON_PHASE_DEADLINE, unix time)."""
        deadline = os.environ.get("BATON_PHASE_DEADLINE")
        return float(deadline) - time.time() if deadline else default

    def skip(self, reason: str) -> None:
        self.result["status"], self.result["reason"] = "skipped", reason
        self.note(f"skipped: {reason}")
        sys.exit(0)

    @contextlib.contextmanager
    def step(self, name: str):
        """Runs a block; an exception fails this step (a failed check with the error) and the
        phase goes on with its next step."""
        t0 = time.perf_counter()
        try:
            yield
        except Exception as e:  # noqa: BLE001 - one broken step must not lose the others
            tail = "".join(traceback.format_exception(e)[-3:]).strip().replace("\n", " | ")
            traceback.print_exc()
            self.check(name, False, f"raised {type(e).__name__}: {e} ({tail[-400:]})")
        finally:
            print(f"-- step {name}: {time.perf_counter() - t0:.1f} s", flush=True)

    def finish(self) -> None:
        if any(not c["ok"] for c in self.result["checks"]):
            self.result["status"] = "failed"
            self.result["reason"] = "; ".join(c["name"] for c in self.result["checks"] if not c["ok"])
        self.save()
        sys.exit(1 if self.result["status"] == "failed" else 0)


def device_or_skip(phase: Phase) -> str:
    """"cpu" in a dry run; "cuda" on a GPU run (the phase skips if torch sees none)."""
    import torch

    if phase.dry_run:
        return "cpu"
    if not torch.cuda.is_available():
        phase.skip("torch sees no CUDA device (run with --dry-run on a CPU machine)")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 checks compare at 1e-4
    torch.backends.cudnn.allow_tf32 = False
    return "cuda"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall seconds of fn() (the device synchronised around each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def kernel_seconds(fn, device: str) -> float:
    """Median seconds of one kernel call: triton's do_bench on a GPU (L2 flushed between
    calls, so bandwidth is HBM's), a few timed calls on the CPU."""
    if device.startswith("cuda"):
        from triton.testing import do_bench

        return do_bench(fn, warmup=10, rep=40, return_mode="median") / 1e3
    return timed(fn, device, repeats=2, warmup=1)


def peaks() -> tuple[float | None, float | None]:
    """(HBM bytes/s, dense bf16 FLOP/s) of this GPU from the data-sheet table, or (None, None)."""
    from kernel_bench import device_peaks

    gbps, tflops = device_peaks()
    return (gbps * 1e9 if gbps else None, tflops * 1e12 if tflops else None)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def processor_dir(work: Path) -> Path:
    """Synthetic tokenizer + a preprocessor config (the analysis' own), built once under work."""
    from baton.engine.analysis.workload import processor_dir as make

    return make(work / "processor")


def model_config(name: str, dry_run: bool) -> dict:
    """A real Qwen3-VL config.json dict ("2b", "8b"); in a dry run the tiny synthetic preset."""
    if dry_run:
        from baton.models.synthetic import ensure_checkpoint

        return json.loads((ensure_checkpoint("tiny") / "config.json").read_text())
    return json.loads((ROOT / "models" / "configs" / f"qwen3-vl-{name}.config.json").read_text())


def hf_model(config: dict, tokenizer, dtype, device: str):
    """transformers' Qwen3-VL with random weights from a config dict, built on the device; its
    special token ids are the tokenizer's (the cost of the model does not depend on them)."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    cfg = Qwen3VLConfig.from_dict(dict(config, **{k: tokenizer.convert_tokens_to_ids(t)
                                                  for k, t in SPECIAL_TOKENS.items()}))
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=dtype)
    return model.eval()


def hf_inputs(processed, image_token_id: int, device: str) -> dict:
    """The parity tests' transformers inputs for a processed prompt, on `device`."""
    from tests.parity_utils import hf_inputs as oracle_inputs

    return {k: v.to(device) for k, v in oracle_inputs(processed, image_token_id).items()}


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")
