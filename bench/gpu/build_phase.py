"""Phase 2, build: installs Baton (editable) with the native extension compiled for the present
GPU only (TORCH_CUDA_ARCH_LIST from its compute capability), timed. If the CUDA build fails,
falls back to the CPU-only extension (BATON_NO_CUDA=1), then to pure Python (BATON_NO_NATIVE=1),
and says why. Offline: pip never looks at an index. A dry run decides the plan and checks the
installed extension, without compiling (minutes on two cores, and it would replace the
in-tree build other processes use)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from common import ROOT, Phase

CHECK = "import torch; from baton.kernels import _native; print('with_cuda', bool(_native.with_cuda()))"


def plan() -> tuple[list[tuple[str, dict]], str]:
    """Build attempts in order, and why a CUDA build is not among them (or ""). The first,
    pure Python (seconds), is the safety net: a build that fails or is killed later leaves it
    installed, so the other phases can still import Baton."""
    import torch
    from torch.utils import cpp_extension

    safety = ("python-only", {"BATON_NO_NATIVE": "1"})
    fallbacks = [safety, ("cpu-only", {"BATON_NO_CUDA": "1"})]
    home = cpp_extension.CUDA_HOME
    nvcc = shutil.which("nvcc") or (os.path.join(home, "bin", "nvcc") if home else None)
    if torch.version.cuda is None:
        return fallbacks, "torch is a CPU build"
    if not nvcc or not os.path.exists(nvcc):
        return fallbacks, "nvcc not found (PATH, CUDA_HOME)"
    if not torch.cuda.is_available():
        return fallbacks, "torch sees no CUDA device to target"
    major, minor = torch.cuda.get_device_capability()
    return [safety, ("cuda", {"TORCH_CUDA_ARCH_LIST": f"{major}.{minor}"}), fallbacks[1]], ""


def installed_extension(fresh: bool = True) -> str:
    """What the installed extension reports; fresh: in a new interpreter (after a build)."""
    if not fresh:
        try:
            import torch  # noqa: F401 - the extension links against torch's libraries
            from baton.kernels import _native

            return f"with_cuda {bool(_native.with_cuda())}"
        except Exception as e:  # noqa: BLE001 - reported, not raised
            return f"does not import: {type(e).__name__}: {e}"
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd="/")
    return out.stdout.strip() or f"does not import: {out.stderr.strip().splitlines()[-1:]}"


def main():
    phase = Phase("build", __doc__)
    attempts, no_cuda = plan()
    phase.data("plan", {"attempts": [a for a, _ in attempts], "why_no_cuda": no_cuda,
                        "env": {a: e for a, e in attempts}})
    order = " -> ".join(a for a, _ in attempts)
    phase.note(f"build plan: {order}" + (f" (no CUDA build: {no_cuda})" if no_cuda else ""))
    if phase.dry_run:
        phase.note(f"installed extension: {installed_extension(fresh=False)}")
        phase.skip("dry run: planned only (" + " -> ".join(a for a, _ in attempts) + "); compiling takes minutes "
                   "and would replace the in-tree extension")
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation", "-e", str(ROOT)]
    installed, rows = [], []
    for kind, extra in attempts:
        if installed and installed[-1] != "python-only":
            break  # a native build is in: no fallback needed
        left = phase.seconds_left() - 10
        if left < 20:
            phase.note(f"{kind} build not tried: {left:.0f} s left in the phase")
            break
        env = dict(os.environ, MAX_JOBS=str(os.cpu_count() or 4), **extra)
        log = phase.work / f"pip-{kind}.log"
        t0 = time.perf_counter()
        try:
            with open(log, "w") as f:
                rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=left, cwd=ROOT).returncode
        except subprocess.TimeoutExpired:
            rc = f"timeout ({left:.0f} s)"
        seconds = time.perf_counter() - t0
        tail = log.read_text(errors="replace").strip().splitlines()[-12:]
        print(f"== {kind}: rc {rc} in {seconds:.0f} s\n" + "\n".join(tail), flush=True)
        rows.append([kind, " ".join(f"{k}={v}" for k, v in extra.items()), rc, f"{seconds:.0f}"])
        if rc == 0:
            installed.append(kind)
        else:
            phase.note(f"{kind} build failed (rc {rc}); last lines:\n" + "\n".join(tail))
    phase.table("Build attempts (pip install -e, offline)", ["kind", "env", "rc", "seconds"], rows)
    ext = installed_extension()
    built = installed[-1] if installed else None
    phase.data("built", built)
    phase.data("extension", ext)
    phase.check("Baton installed", built is not None, f"{built} build; extension: {ext}")
    phase.check("extension built with CUDA for this GPU", built == "cuda" and "with_cuda True" in ext,
                f"built {built}" + (f"; no CUDA build attempted: {no_cuda}" if no_cuda else ""))
    phase.finish()


if __name__ == "__main__":
    main()
