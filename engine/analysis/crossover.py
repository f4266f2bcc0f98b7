"""Crossovers: how many output tokens a large model can afford and still finish first.

For a (small, large) pair, an input (image of V visual tokens + a text prompt) and a small-model
output length n_s, the crossover is the largest n_l with T_large(n_l) <= T_small(n_s), where
T(n) is the end-to-end latency (vision + prefill + decode) of one request producing n tokens.
None means the large model is slower even with a single output token.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from baton.engine.analysis.predictor import LatencyPredictor


@dataclass(frozen=True)
class Crossover:
    device: str
    small: str
    large: str
    small_tokens: int
    small_seconds: float
    large_tokens: int | None  # largest still-faster large-model output length; None: never faster
    capped: bool              # True: even max_tokens is faster (the true value is larger)


def largest_faster(curve: np.ndarray, budget_seconds: float) -> tuple[int | None, bool]:
    """Largest n >= 1 with curve[n] <= budget (curve is non-decreasing in n)."""
    n = int(np.searchsorted(curve, budget_seconds, side="right")) - 1
    if n < 1:
        return None, False
    return n, n == len(curve) - 1


def crossovers(device: str, small: LatencyPredictor, large: LatencyPredictor, small_lengths: list[int],
               visual_tokens: int, text_tokens: int, max_tokens: int = 16384) -> list[Crossover]:
    small_curve = small.request_curve(visual_tokens, text_tokens, max(small_lengths))
    large_curve = large.request_curve(visual_tokens, text_tokens, max_tokens)
    large_curve[0] = 0.0  # n = 0 is not an answer; searchsorted starts at n = 1
    rows = []
    for n_s in small_lengths:
        budget = float(small_curve[n_s])
        n_l, capped = largest_faster(large_curve, budget)
        rows.append(Crossover(device, small.name, large.name, n_s, budget, n_l, capped))
    return rows


def crossover_markdown(rows: list[Crossover], small_lengths: list[int]) -> str:
    """One table per device: a row per (small, large) pair, a column per small-model length."""
    out = []
    for device in dict.fromkeys(r.device for r in rows):
        mine = [r for r in rows if r.device == device]
        out.append(f"### {device}\n")
        out.append("| small -> large | " + " | ".join(f"small {n} tok" for n in small_lengths) + " |")
        out.append("|---|" + "---|" * len(small_lengths))
        for pair in dict.fromkeys((r.small, r.large) for r in mine):
            cells = []
            for n in small_lengths:
                r = next(x for x in mine if (x.small, x.large) == pair and x.small_tokens == n)
                if r.large_tokens is None:
                    cells.append("never")
                else:
                    cells.append(f">{r.large_tokens}" if r.capped else f"{r.large_tokens}")
            out.append(f"| {pair[0]} -> {pair[1]} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)
