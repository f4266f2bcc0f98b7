"""Reports of `baton eval`: CSV files, a markdown summary and the accuracy-latency plot."""
from __future__ import annotations

import csv
from pathlib import Path


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _write_csv(path: Path, columns, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def result_rows(configs, predictions, tiers) -> list[dict]:
    """One row per (configuration, tier) and per configuration over all tiers ("all")."""
    by_run: dict[str, list[dict]] = {}
    for p in predictions:
        by_run.setdefault(p["run"], []).append(p)
    rows = []
    for cfg in configs:
        preds = by_run[cfg.run.label]
        for tier in (*tiers, "all"):
            sel = [p for p in preds if tier == "all" or p["tier"] == tier]
            rows.append({"mode": cfg.mode, "selector": cfg.selector,
                         "budget": "-" if cfg.budget is None else cfg.budget, "tier": tier,
                         "accuracy": round(_mean(p["correct"] for p in sel), 4),
                         "mean_seconds": round(_mean(p["seconds"] for p in sel if p["seconds"] is not None), 5),
                         "n": len(sel)})
    return rows


def routing_rows(predictions, tiers) -> list[dict]:
    """Auto's path per tier (from its full-reasoning run): how often the two brief answers agree."""
    auto = [p for p in predictions if p["run"] == "auto/full@1"]
    rows = []
    for tier in (*tiers, "all"):
        sel = [p for p in auto if tier == "all" or p["tier"] == tier]
        agree = [p for p in sel if p["path"] == "auto:agree"]
        moved = [p for p in sel if p["path"] == "auto:transfer"]
        rows.append({"tier": tier, "n": len(sel), "agree": len(agree), "transfer": len(moved),
                     "other": len(sel) - len(agree) - len(moved),  # e.g. a router's other paths
                     "agree_share": round(len(agree) / len(sel), 4) if sel else float("nan"),
                     "agree_accuracy": round(_mean(p["correct"] for p in agree), 4),
                     "transfer_accuracy": round(_mean(p["correct"] for p in moved), 4)})
    return rows


def _fmt(x) -> str:
    return "-" if x != x else f"{x:.2f}"  # NaN -> "-"


def markdown(rows, routing, tiers, per_tier: int) -> str:
    acc = {(r["mode"], r["selector"], r["budget"], r["tier"]): r for r in rows}
    lines = [f"SynthVQA held-out evaluation: {per_tier} item(s) per tier (accuracy: one batch per "
             f"configuration; seconds: a lone request, on the first items of each tier).", "",
             "### Accuracy per mode and tier", "",
             "| mode | " + " | ".join(tiers) + " | all | mean s |",
             "|---" * (len(tiers) + 3) + "|"]
    for mode, sel, budget in [(m, "-", "-") for m in ("small", "large", "small-reason", "large-reason")] + [
            ("transfer", "full", 1.0), ("auto", "full", 1.0)]:
        name = mode if sel == "-" else f"{mode} (full)"
        cells = [_fmt(acc[(mode, sel, budget, t)]["accuracy"]) for t in (*tiers, "all")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {acc[(mode, sel, budget, 'all')]['mean_seconds']:.3f} |")
    for mode in ("transfer", "auto"):
        lines += ["", f"### {mode}: selectors at equal budget (accuracy over all tiers; hard tiers "
                      f"{tiers[-2]}+{tiers[-1]} in brackets; mean seconds)", "",
                  "| selector | " + " | ".join(f"budget {b:g}" for b in (0.25, 0.5, 1.0)) + " |", "|---" * 4 + "|"]
        for sel in ("full", "truncate", "entropy", "attention"):
            cells = []
            for b in (0.25, 0.5, 1.0):
                hard = _mean(acc[(mode, sel, b, t)]["accuracy"] for t in tiers[-2:])
                r = acc[(mode, sel, b, "all")]
                cells.append(f"{_fmt(r['accuracy'])} ({_fmt(hard)}) {r['mean_seconds']:.3f}s")
            lines.append(f"| {sel} | " + " | ".join(cells) + " |")
    lines += ["", "### auto routing (brief answers agree -> answer at once; else transfer)", "",
              "| tier | n | agree | transfer | agree share | accuracy when agreeing | accuracy after transfer |",
              "|---" * 7 + "|"]
    for r in routing:
        lines.append(f"| {r['tier']} | {r['n']} | {r['agree']} | {r['transfer']} | {_fmt(r['agree_share'])} | "
                     f"{_fmt(r['agree_accuracy'])} | {_fmt(r['transfer_accuracy'])} |")
    return "\n".join(lines) + "\n"


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = {}
    for r in rows:
        if r["tier"] == "all":
            label = r["mode"] if r["selector"] == "-" else f"{r['mode']} {r['selector']}@{r['budget']:g}"
            pts.setdefault((r["mean_seconds"], r["accuracy"], r["mode"]), []).append(label)
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = {"small": "C0", "large": "C1", "small-reason": "C2", "large-reason": "C3", "transfer": "C4", "auto": "C5"}
    seen = set()
    for (sec, acc, mode), labels in pts.items():
        ax.scatter(sec, acc, color=colours[mode], label=None if mode in seen else mode, s=30)
        seen.add(mode)
        if mode in ("transfer", "auto"):
            text = ", ".join(sorted({lab.split(" ", 1)[1] for lab in labels}))[:40]
            ax.annotate(text, (sec, acc), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set(xlabel="mean seconds per request", ylabel="accuracy (all tiers)",
           title="SynthVQA held-out: accuracy vs latency per mode")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_reports(out: Path, configs, predictions, tiers, per_tier: int) -> str:
    rows = result_rows(configs, predictions, tiers)
    routing = routing_rows(predictions, tiers)
    from baton.engine.eval_command import CSV_COLUMNS

    _write_csv(out / "results.csv", CSV_COLUMNS, rows)
    _write_csv(out / "predictions.csv", list(predictions[0]), predictions)
    _write_csv(out / "routing.csv", list(routing[0]), routing)
    text = markdown(rows, routing, tiers, per_tier)
    (out / "results.md").write_text(text)
    plot(rows, out / "accuracy_latency.png")
    return text
