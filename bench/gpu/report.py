"""Renders an acceptance run: each phase's result JSON plus the status acceptance.sh recorded
(exit code, seconds, limit, skip reason) -> results.json and report.md under --out.

Standard library only: it must work when the build phase left Baton uninstallable.

    python bench/gpu/report.py --work WORK --out OUT --mode gpu|dry-run --phases "env build ..."
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
from pathlib import Path

TIMED_OUT = {"124", "137"}


def phase_status(work: Path, name: str, recorded: dict | None) -> dict:
    path = work / f"{name}.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    out = {"name": name, "notes": res.get("notes", []), "checks": res.get("checks", []),
           "tables": res.get("tables", []), "data": res.get("data", {})}
    if recorded is None:
        return out | {"status": "skipped", "reason": "not run (the run stopped before it)", "seconds": 0}
    rc, skip = recorded["rc"], recorded["skip"]
    out |= {"rc": rc, "seconds": float(recorded["seconds"]), "limit_s": int(recorded["limit"] or 0)}
    failed = [c["name"] for c in out["checks"] if not c["ok"]]
    if skip:
        status, reason = "skipped", skip
    elif rc in TIMED_OUT:
        status, reason = "failed", f"timed out after {recorded['limit']} s"
        reason += f"; failed: {', '.join(failed)}" if failed else ""
    elif not res:
        status, reason = "failed", f"exit code {rc}, no results written (see its log)"
    elif res.get("status") == "skipped" and rc == "0":
        status, reason = "skipped", res.get("reason") or "no reason given"
    elif rc != "0" or res.get("status") == "failed" or failed:
        status = "failed"
        reason = res.get("reason") or (f"failed: {', '.join(failed)}" if failed else f"exit code {rc}")
    else:
        status, reason = "ok", ""
    log = work / "logs" / f"{name}.log"
    if status == "failed" and log.is_file():
        out["log_tail"] = log.read_text(errors="replace").splitlines()[-30:]
    return out | {"status": status, "reason": reason}


def targets(phases: dict, dry: bool) -> list[dict]:
    """The issue's GPU targets, judged from the phases' data (not measured in a dry run)."""
    kern = phases.get("kernels", {}).get("data", {})
    rows = phases.get("e2e", {}).get("data", {}).get("rows", [])
    out = []

    def add(name, value, met):
        out.append({"target": name, "measured": value if not dry else "not measured (dry run)",
                    "met": None if dry or met is None else bool(met)})

    dec = kern.get("decode_hbm_fraction_at_8k_plus") or []
    add("Triton paged decode >= 80% of HBM bandwidth at contexts >= 8k",
        f"min {min(dec):.0%}, max {max(dec):.0%}" if dec else "-", min(dec) >= 0.8 if dec else None)
    ext = kern.get("extend_vs_sdpa") or []
    add("prefix+extend >= 70% of torch SDPA-flash throughput",
        f"min {min(ext):.0%}, median {sorted(ext)[len(ext) // 2]:.0%}" if ext else "-",
        min(ext) >= 0.7 if ext else None)
    big = next((r for r in rows if r.get("model") == "8b"), None)
    ratio = big["tok_graph_s"] / big["floor_s"] if big and big.get("floor_s") else None
    add("CUDA-graph decode of the 8B at batch 1 within 1.2x of the weight-bytes/HBM floor",
        f"{ratio:.2f}x the floor" if ratio else "-", ratio <= 1.2 if ratio else None)
    speed = [(r["model"], r["hf_ttft_s"] / r["ttft_s"], r["hf_tok_s"] / r["tok_graph_s"]) for r in rows
             if r.get("hf_ttft_s") and r.get("hf_tok_s")]
    add("TTFT and decode >= 2x transformers",
        ", ".join(f"{m}: TTFT {a:.2f}x, decode {b:.2f}x" for m, a, b in speed) or "-",
        all(a >= 2 and b >= 2 for _, a, b in speed) if speed else None)
    return out


def git_commit(root: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return (head or "unknown") + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def markdown(res: dict) -> str:
    env = res["env"]
    where = "dry run on the CPU" if res["mode"] == "dry-run" else env.get("gpu", "GPU")
    lines = [f"# Baton GPU acceptance run: {res['started'][:16].replace('T', ' ')} UTC, {where}", "",
             f"Mode `{res['mode']}`; commit {res['commit']}; {res['elapsed_s']:.0f} s of a {res['budget_s']} s budget; "
             f"torch {env.get('torch', '?')}, triton {env.get('triton', '?')}, driver {env.get('driver', '-')}, "
             f"capability {env.get('capability', '-')}.", ""]
    if res["mode"] == "dry-run":
        lines += ["A dry run: tiny shapes on the CPU, Triton interpreted, no CUDA graph capture (the static decode "
                  "path runs uncaptured), no extension build; timings are not GPU numbers.", ""]
    lines += ["## Phases", "", "| phase | status | seconds | checks |", "|---|---|---|---|"]
    for p in res["phases"]:
        status = p["status"] if p["status"] == "ok" else f"{p['status']} ({p['reason']})"
        checks = p["checks"]
        ok = sum(c["ok"] for c in checks)
        lines.append(f"| {p['name']} | {status} | {p.get('seconds', 0):.0f} | {ok}/{len(checks)} passed |")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in res["targets"]:
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    for p in res["phases"]:
        lines += ["", f"## {p['name']}", ""]
        for c in p["checks"]:
            detail = f": {c['detail']}" if c["detail"] else ""
            lines.append(f"- {'ok' if c['ok'] else '**FAILED**'}: {c['name']}{detail}")
        for t in p["tables"]:
            lines += ["", f"**{t['title']}**", "", "| " + " | ".join(t["headers"]) + " |",
                      "|" + "---|" * len(t["headers"])]
            lines += ["| " + " | ".join(r) + " |" for r in t["rows"]]
        for note in p["notes"]:
            lines += ["", "```", note, "```"] if "\n" in note else [f"- {note}"]
        if p.get("log_tail"):
            lines += ["", "Log tail:", "", "```", *p["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", required=True, choices=["gpu", "dry-run"])
    ap.add_argument("--phases", required=True, help="space-separated phase names, in order")
    ap.add_argument("--started", required=True, help="unix seconds")
    ap.add_argument("--budget", type=int, required=True)
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    recorded = {}
    status_file = work / "phases.tsv"
    if status_file.is_file():
        for line in status_file.read_text().splitlines():
            name, rc, seconds, limit, skip = (line.split("\t") + [""] * 5)[:5]
            recorded[name] = {"rc": rc, "seconds": seconds or 0, "limit": limit, "skip": skip}
    names = args.phases.split()
    phases = {n: phase_status(work, n, recorded.get(n)) for n in names}
    started = dt.datetime.fromtimestamp(int(args.started), dt.timezone.utc)
    env = phases.get("env", {}).get("data", {}).get("env", {})
    elapsed = dt.datetime.now(dt.timezone.utc).timestamp() - int(args.started)
    res = {"mode": args.mode, "started": started.isoformat(), "elapsed_s": elapsed, "budget_s": args.budget,
           "host": platform.node(), "commit": git_commit(Path(__file__).parents[2]), "env": env,
           "phases": list(phases.values()), "targets": targets(phases, args.mode == "dry-run")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out / "report.md").write_text(markdown(res))


if __name__ == "__main__":
    main()
