"""PNG figures of the analysis (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from baton.engine.analysis.crossover import Crossover  # noqa: E402
from baton.engine.analysis.predictor import LatencyPredictor  # noqa: E402
from baton.engine.analysis.validation import EXCLUDED, FIT, HELD_OUT, Checked, predict  # noqa: E402

COMPONENT_COLOURS = {"vision": "#4C72B0", "prefill": "#DD8452", "decode": "#55A868"}


def latency_vs_output(path: Path, device: str, predictors: list[LatencyPredictor], crossovers: list[Crossover],
                      visual_tokens: int, text_tokens: int, max_output: int, mark_small_tokens: list[int],
                      memory_bytes: float | None = None) -> None:
    """End-to-end latency against output length per model size, log-log. Crossovers of the
    smallest model are marked: a dotted line joins it at n_s tokens to each larger model at the
    largest n_l that is still faster."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    n = np.arange(1, max_output + 1)
    for p in predictors:
        label = p.name
        if memory_bytes is not None and not p.fits(memory_bytes):
            label += " (does not fit in memory)"
        ax.plot(n, p.request_curve(visual_tokens, text_tokens, max_output)[1:], label=label, lw=2)
    smallest = predictors[0].name
    for r in crossovers:
        if (r.device != device or r.small != smallest or r.small_tokens not in mark_small_tokens
                or r.large_tokens is None or r.capped or r.large_tokens > max_output):
            continue
        y = r.small_seconds
        ax.plot([r.large_tokens, r.small_tokens], [y, y], ls=":", c="grey", lw=1)
        ax.plot(r.large_tokens, y, "o", c="black", ms=4)
        ax.annotate(f"{r.large_tokens}", (r.large_tokens, y), textcoords="offset points", xytext=(-4, 5),
                    fontsize=8, ha="right")
    ax.plot([], [], "o:", c="black", ms=4, label=f"crossover: larger model's tokens = {smallest} at "
            + " / ".join(str(t) for t in mark_small_tokens) + " tokens")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("output tokens")
    ax.set_ylabel("end-to-end latency (s)")
    ax.set_title(f"{device}: latency vs output tokens ({visual_tokens} visual + {text_tokens} text tokens in)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def component_bars(path: Path, device: str, predictors: list[LatencyPredictor], visual_tokens: int,
                   text_tokens: int, output_lengths: list[int]) -> None:
    """Stacked vision / prefill / decode seconds per model size, one group per output length."""
    fig, axes = plt.subplots(1, len(output_lengths), figsize=(4.5 * len(output_lengths), 4.5), squeeze=False)
    for ax, n_out in zip(axes[0], output_lengths):
        names = [p.name.replace("qwen3-vl-", "") for p in predictors]
        parts = [p.request(visual_tokens, text_tokens, n_out) for p in predictors]
        bottom = np.zeros(len(parts))
        for comp, colour in COMPONENT_COLOURS.items():
            vals = np.array([getattr(b, comp) for b in parts])
            ax.bar(names, vals, bottom=bottom, color=colour, label=comp)
            bottom += vals
        for x, total in enumerate(bottom):
            ax.text(x, total, f"{total:.3g}s", ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{n_out} output tokens")
        ax.set_ylabel("seconds")
    axes[0][0].legend()
    fig.suptitle(f"{device}: components per model size ({visual_tokens} visual + {text_tokens} text tokens in)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def measured_vs_predicted(path: Path, points: list[Checked]) -> None:
    """Every measured point against its prediction, log-log, with the +-20% band."""
    fig, ax = plt.subplots(figsize=(6, 6))
    markers = {FIT: "o", HELD_OUT: "s", EXCLUDED: "x"}
    colours = {"vision": "#4C72B0", "prefill": "#DD8452", "decode": "#55A868", "e2e": "#C44E52"}
    for c in points:
        ax.scatter(c.m.seconds, c.predicted, marker=markers[c.split], c=colours.get(c.m.kind, "k"), s=28)
    vals = [v for c in points for v in (c.m.seconds, c.predicted) if v > 0]
    lo, hi = min(vals) / 1.5, max(vals) * 1.5
    x = np.geomspace(lo, hi, 50)
    ax.plot(x, x, "k-", lw=1)
    ax.fill_between(x, x * 0.8, x * 1.2, color="grey", alpha=0.2, label="+-20%")
    for kind, colour in colours.items():
        ax.scatter([], [], c=colour, label=kind)
    for split, marker in markers.items():
        ax.scatter([], [], c="grey", marker=marker, label=split)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured (s)")
    ax.set_ylabel("predicted (s)")
    ax.set_title("cost model vs measurement")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def measurement_panels(path: Path, points: list[Checked], predictors: dict[str, LatencyPredictor]) -> None:
    """Measured points (markers) and the calibrated model (lines) for each measured model:
    vision vs visual tokens, prefill vs input length, time per output token vs context (per batch)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    models = list(dict.fromkeys(c.m.model for c in points))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for mi, model in enumerate(models):
        col = colours[mi % len(colours)]
        mine = [c for c in points if c.m.model == model]
        pred = predictors[model]
        vis = sorted((c for c in mine if c.m.kind == "vision"), key=lambda c: c.m.visual_tokens)
        if vis:
            axes[0].plot([c.m.visual_tokens for c in vis], [c.m.seconds for c in vis], "o", c=col, label=model)
            sides = np.arange(round(vis[0].m.visual_tokens**0.5), round(vis[-1].m.visual_tokens**0.5) + 1)
            axes[0].plot(sides**2, [pred.vision(int(s * s)) for s in sides], "-", c=col)
        pre = sorted((c for c in mine if c.m.kind == "prefill"), key=lambda c: c.m.input_tokens)
        if pre:
            axes[1].plot([c.m.input_tokens for c in pre], [c.m.seconds for c in pre], "o", c=col, label=model)
            xs = np.geomspace(min(c.m.input_tokens for c in pre), max(c.m.input_tokens for c in pre), 20)
            axes[1].plot(xs, [pred.prefill(int(x)) for x in xs], "-", c=col)
        dec = [c for c in mine if c.m.kind == "decode"]
        for bi, b in enumerate(sorted({c.m.batch for c in dec})):
            pts = sorted((c for c in dec if c.m.batch == b), key=lambda c: c.m.input_tokens)
            style = ["o", "^", "s", "D"][bi % 4]
            axes[2].plot([c.m.input_tokens for c in pts], [c.m.seconds for c in pts], style, c=col,
                         label=f"{model} batch {b}")
            xs = np.geomspace(max(1, pts[0].m.input_tokens), pts[-1].m.input_tokens, 20)
            axes[2].plot(xs, [predict(_fake(c0=pts[0], ctx=int(x)), pred) for x in xs], "-", c=col, alpha=0.7)
    for ax, title, xl in zip(axes, ("vision encoder", "prefill", "time per output token"),
                             ("visual tokens", "input tokens", "context tokens")):
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.set_ylabel("seconds")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle("measured (markers) vs calibrated cost model (lines)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fake(c0: Checked, ctx: int) -> Checked:
    """A decode point like c0 at another context length (for drawing the model line)."""
    from dataclasses import replace

    return Checked(replace(c0.m, input_tokens=ctx), c0.cost, c0.split)


def mode_lines(path: Path, title: str, agreement: np.ndarray, by_mode: dict[str, np.ndarray]) -> None:
    """Expected latency of each multi-agent mode against the agreement rate p (flat for modes
    that do not depend on it)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, ys in by_mode.items():
        ax.plot(agreement, ys, label=mode, lw=2, ls="-" if mode.startswith("auto") else "--")
    ax.set_xlabel("agreement rate p (both brief answers agree)")
    ax.set_ylabel("expected end-to-end latency (s)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
