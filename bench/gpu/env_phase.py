"""Phase 1, environment: GPU name, compute capability, driver, memory, and the versions of
torch, triton, transformers, CUDA and nvcc this run uses."""
from __future__ import annotations

import platform
import shutil
import subprocess

from common import Phase


def command_output(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return f"{cmd[0]}: not found"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{cmd[0]}: {e}"


def main():
    phase = Phase("env", __doc__)
    import torch

    info = {"python": platform.python_version(), "machine": platform.machine(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda or "none (CPU build)"}
    for name in ("triton", "transformers"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001 - a missing package is a finding, not a crash
            info[name] = f"unavailable ({type(e).__name__})"
    nvcc = command_output(["nvcc", "--version"]).splitlines()
    info["nvcc"] = nvcc[-1] if nvcc else "not found"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count())
        info["driver"] = command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    else:
        info["gpu"] = "none: torch sees no CUDA device" + (" (dry run)" if phase.dry_run else "")
    phase.data("env", info)
    phase.table("Environment", ["what", "value"], [[k, v] for k, v in info.items()])
    phase.note("nvidia-smi:\n" + command_output(["nvidia-smi"]))
    if not phase.dry_run:
        phase.check("torch sees a CUDA device", torch.cuda.is_available(), info["gpu"])
    phase.finish()


if __name__ == "__main__":
    main()
