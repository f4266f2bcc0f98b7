"""The time model, and fitting its two constants to measurements.

time(cost) = flops / F + bytes / B            (overlap=False: compute and memory serialise)
time(cost) = max(flops / F, bytes / B)        (overlap=True: the roofline)

F (effective FLOP/s) and B (effective bytes/s) are fitted by minimising the squared log
ratio of predicted to measured time, so every point weighs by its relative error whatever
its magnitude. The search is a coarse-to-fine grid over log F and log B: two parameters,
no derivatives, and the max() form is not smooth anyway.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from baton.engine.analysis.cost_model import Cost
from baton.engine.analysis.devices import DeviceSpec


@dataclass(frozen=True)
class TimeModel:
    flops: float      # effective FLOP/s
    bandwidth: float  # effective bytes/s
    overlap: bool = False
    source: str = ""  # "fitted on N points" or the preset it came from

    def time(self, cost: Cost) -> float:
        compute, memory = cost.flops / self.flops, cost.bytes / self.bandwidth
        return max(compute, memory) if self.overlap else compute + memory

    @classmethod
    def from_spec(cls, spec: DeviceSpec) -> "TimeModel":
        return cls(spec.effective_flops, spec.effective_bandwidth, spec.overlap, source=f"preset {spec.name}")


def _loss(log_f: np.ndarray, log_b: np.ndarray, flops: np.ndarray, nbytes: np.ndarray,
          log_t: np.ndarray, overlap: bool) -> np.ndarray:
    """Sum of squared log errors for every (log F, log B) pair of the grid (broadcast)."""
    compute = flops[None, None, :] / np.exp(log_f)[:, None, None]
    memory = nbytes[None, None, :] / np.exp(log_b)[None, :, None]
    pred = np.maximum(compute, memory) if overlap else compute + memory
    return ((np.log(pred) - log_t[None, None, :]) ** 2).sum(-1)


def fit_time_model(costs: list[Cost], times: list[float], overlap: bool = False) -> TimeModel:
    """Least-squares (in log time) F and B for the measured `times` (seconds) of `costs`."""
    if len(costs) != len(times) or not costs:
        raise ValueError("fit_time_model needs one measured time per cost, at least one")
    flops = np.array([c.flops for c in costs], dtype=np.float64)
    nbytes = np.array([c.bytes for c in costs], dtype=np.float64)
    t = np.array(times, dtype=np.float64)
    if (t <= 0).any():
        raise ValueError("measured times must be positive")
    log_t = np.log(t)
    # Start from the range that the points themselves allow: F between what makes the most
    # and the least compute-heavy point purely compute bound, widened a lot.
    centre_f = math.log(max(flops.max(), 1.0) / t.max())
    centre_b = math.log(max(nbytes.max(), 1.0) / t.max())
    lo_f, hi_f = centre_f - 12, centre_f + 12
    lo_b, hi_b = centre_b - 12, centre_b + 12
    best = (centre_f, centre_b)
    for _ in range(8):
        gf = np.linspace(lo_f, hi_f, 61)
        gb = np.linspace(lo_b, hi_b, 61)
        loss = _loss(gf, gb, flops, nbytes, log_t, overlap)
        i, j = np.unravel_index(np.argmin(loss), loss.shape)
        best = (gf[i], gb[j])
        span_f, span_b = (hi_f - lo_f) / 10, (hi_b - lo_b) / 10
        lo_f, hi_f = best[0] - span_f, best[0] + span_f
        lo_b, hi_b = best[1] - span_b, best[1] + span_b
    return TimeModel(math.exp(best[0]), math.exp(best[1]), overlap, source=f"fitted on {len(costs)} points")


def relative_errors(model: TimeModel, costs: list[Cost], times: list[float]) -> list[float]:
    """(predicted - measured) / measured for each point."""
    return [(model.time(c) - t) / t for c, t in zip(costs, times)]
