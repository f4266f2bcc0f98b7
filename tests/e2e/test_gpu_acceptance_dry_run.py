"""The GPU acceptance script (bench/gpu/acceptance.sh) in its dry run: CPU, tiny shapes,
Triton interpreted. It has to keep working here, so that the first run on a GPU, with minutes
of device time, is not spent debugging it."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "bench" / "gpu"
PHASES = ["env", "build", "correctness", "kernels", "e2e", "multi_agent", "cost_model", "cpu_amx"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_dry_run_reports_every_phase_ok_or_skipped_with_a_reason(tmp_path):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(GPU / "acceptance.sh"), "--dry-run", "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHON=sys.executable))
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "report.md", "results.json"]
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == "dry-run"
    assert [p["name"] for p in res["phases"]] == PHASES
    for p in res["phases"]:
        detail = f"{p['name']}: {p['status']} ({p['reason']})\n" + "\n".join(p.get("log_tail", []))
        assert p["status"] in ("ok", "skipped"), detail
        assert p["status"] == "ok" or p["reason"], detail
        assert all(c["ok"] for c in p["checks"]), detail
    assert next(p for p in res["phases"] if p["name"] == "build")["status"] == "skipped"  # never compiles here
    report = (out / "report.md").read_text()
    assert all(f"| {name} | " in report for name in PHASES)
    assert "failed" not in report.split("## Targets")[0]
    assert elapsed < 300, f"the dry run took {elapsed:.0f} s (meant to take under 2 minutes)"


def _render(tmp_path, tsv: str, phase_results: dict) -> dict:
    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    (work / "phases.tsv").write_text(tsv)
    for name, result in phase_results.items():
        (work / f"{name}.json").write_text(json.dumps(result))
    (work / "logs" / "kernels.log").write_text("compiling\nkilled here\n")
    subprocess.run([sys.executable, str(GPU / "report.py"), "--work", str(work), "--out", str(tmp_path / "out"),
                    "--mode", "gpu", "--phases", "env kernels e2e cost_model", "--started", "0", "--budget", "540"],
                   check=True)
    return {p["name"]: p for p in json.loads((tmp_path / "out" / "results.json").read_text())["phases"]}


def test_report_fails_a_timed_out_or_failing_phase_and_keeps_the_rest(tmp_path):
    ok = {"status": "ok", "checks": [{"name": "c", "ok": True, "detail": ""}]}
    bad_check = {"status": "ok", "checks": [{"name": "parity", "ok": False, "detail": "differ"}]}
    phases = _render(tmp_path, "env\t0\t3\t60\t\nkernels\t124\t120\t120\t\ne2e\t0\t50\t180\t\n"
                               "cost_model\t\t0\t0\tout of the 540 s time budget\n",
                     {"env": ok, "kernels": ok, "e2e": bad_check})
    assert phases["env"]["status"] == "ok"
    assert phases["kernels"]["status"] == "failed" and "timed out" in phases["kernels"]["reason"]
    assert phases["kernels"]["log_tail"][-1] == "killed here"
    assert phases["e2e"]["status"] == "failed"
    assert phases["cost_model"]["status"] == "skipped" and "budget" in phases["cost_model"]["reason"]
