"""Phase 8, the host CPU's AMX path: the GPU machine's host is the one machine Baton's sessions
reach that may have AMX (server Xeons do), and no other has run the AMX tiles
(csrc/amx_linear.cpp). Where the host has AMX: the tests of every native kernel on the amx path
(pytest -k amx), then bench/amx_check.py's correctness check and its amx / avx512bf16 timing
per row count at the Qwen3-VL-2B decoder's shapes. Elsewhere (and in a dry run): the kernel on
emulated tiles against float64, and a note that nothing could be timed."""
from __future__ import annotations

import os
import subprocess
import sys
import types

from common import ROOT, Phase


def main():
    phase = Phase("cpu_amx", __doc__)
    import torch

    from bench import amx_check
    from bench.common import cpu_flags
    from baton.kernels import cpu_isa

    if not cpu_isa.available():
        phase.skip("the native CPU kernels are not built (see the build phase)")
    levels = cpu_isa.levels()
    info = {"flags": cpu_flags(), "detected": cpu_isa.detected(), "default": cpu_isa.default(),
            "runnable": " ".join(levels), "logical_cpus": os.cpu_count()}
    phase.data("cpu", info)
    phase.table("Host CPU", ["what", "value"], [[k, v] for k, v in info.items()])
    if "amx" not in levels or phase.dry_run:
        with phase.step("emulated tiles"):
            got = amx_check.emulated_only()
            phase.check("AMX kernel on emulated tiles vs float64", got["emulated_error"] < 2e-2,
                        f"error {got['emulated_error']:.2g} of the output's scale")
        phase.note("no AMX on this host: nothing to time" if "amx" not in levels else "dry run: AMX not timed")
        phase.finish()
    with phase.step("tests on the amx path"):
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-k", "amx", "-p", "no:cacheprovider",
                              "tests/kernels/test_amx_linear.py", "tests/kernels/test_cpu_dispatch.py"],
                             cwd=ROOT, capture_output=True, text=True, timeout=max(30, phase.seconds_left() - 60))
        tail = (out.stdout or out.stderr).strip().splitlines()[-1:]
        phase.check("pytest -k amx", out.returncode == 0, " ".join(tail))
        if out.returncode:
            print(out.stdout[-4000:], out.stderr[-2000:])
    with phase.step("amx vs avx512bf16"):
        torch.set_num_threads(min(16, os.cpu_count() or 1))
        got = amx_check.time_rows(types.SimpleNamespace(rows=[1, 4, 8, 16, 32, 64], layers=2, repeats=3))
        phase.data("amx_check", got)
        phase.table(f"AMX tiles vs AVX512_BF16 row tiles, {torch.get_num_threads()} threads, 2 layers of 2B weights",
                    ["rows", "avx512bf16 ms", "amx ms", "amx / avx512bf16", "amx error"],
                    [[m, f"{r['ms']['avx512bf16']:.2f}", f"{r['ms']['amx']:.2f}", f"{r['amx_over_avx512bf16']:.3f}",
                      f"{r['max_error']:.1e}"] for m, r in got["rows"].items()])
        phase.check("amx matches float64 at every shape", all(r["max_error"] < 2e-2 for r in got["rows"].values()))
    phase.finish()


if __name__ == "__main__":
    main()
