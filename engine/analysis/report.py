"""Writers for the analysis output directory: CSVs, markdown tables and the README summary."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, fields
from pathlib import Path

from baton.engine.analysis.crossover import Crossover
from baton.engine.analysis.sweep import Measurement
from baton.engine.analysis.validation import Checked, ErrorSummary


def _fmt(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.10g}"


def write_measurements_csv(path: Path, points: list[Checked]) -> None:
    """Every measured point with what the calibrated model predicts for it."""
    cols = [f.name for f in fields(Measurement) if f.name != "samples"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + ["samples", "flops", "bytes", "split", "predicted_seconds", "rel_error"])
        for c in points:
            row = asdict(c.m)
            w.writerow([row[k] if not isinstance(row[k], float) else _fmt(row[k]) for k in cols]
                       + [" ".join(_fmt(s) for s in c.m.samples), _fmt(c.cost.flops), _fmt(c.cost.bytes),
                          c.split, _fmt(c.predicted), _fmt(c.error)])


def read_measurements_csv(path: Path) -> list[Measurement]:
    """Measurements back from a measurements.csv (to redo the analysis without re-measuring)."""
    ints = {"visual_tokens", "input_tokens", "batch", "output_tokens"}
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            kw = {}
            for fld in fields(Measurement):
                if fld.name == "samples":
                    kw["samples"] = [float(s) for s in row["samples"].split()]
                elif fld.name in ints:
                    kw[fld.name] = int(row[fld.name])
                elif fld.name in ("seconds", "load_avg"):
                    if row.get(fld.name):  # load_avg is absent from older files
                        kw[fld.name] = float(row[fld.name])
                else:
                    kw[fld.name] = row[fld.name]
            out.append(Measurement(**kw))
    return out


def write_rows_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.write_text("")
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (_fmt(v) if isinstance(v, float) else v) for k, v in r.items()})


def write_crossovers_csv(path: Path, rows: list[Crossover]) -> None:
    write_rows_csv(path, [asdict(r) for r in rows])


def error_table(summary: dict[str, ErrorSummary]) -> str:
    lines = ["| points | n | mean abs error | median abs error | max abs error |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        if s.count:
            lines.append(f"| {name} | {s.count} | {s.mean_abs:.1%} | {s.median_abs:.1%} | {s.max_abs:.1%} |")
    return "\n".join(lines)


def points_table(points: list[Checked]) -> str:
    lines = ["| model | kind | visual tok | input tok | batch | output tok | measured s | predicted s | error "
             "| split |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in points:
        m = c.m
        lines.append(f"| {m.model} | {m.kind} | {m.visual_tokens} | {m.input_tokens} | {m.batch} | "
                     f"{m.output_tokens} | {m.seconds:.4g} | {c.predicted:.4g} | {c.error:+.1%} | {c.split} |")
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
