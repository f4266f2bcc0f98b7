"""Which measured points calibrate the time model and which check it, and the errors.

Split: within each (model, kind) group, ordered by size, every second point is held out
(so the fit keeps both ends and the held-out points test interpolation), and when several
models were measured, every point of the last one is held out too (a size the fit never saw).
End-to-end points are always held out: they check that the components add up.

Regimes: the two-constant model covers matrix-vector products (decode at batch 1, bandwidth
bound) and large matrix products (compute bound). Between them, with M rows per matmul in
skinny_rows < M < min_gemm_rows, some BLAS libraries run far below both rates (this CPU's MKL,
idle: about 12 GFLOP/s at 4 rows, 37 at 64, 56 at 128, 130-150 from 256). Up to skinny_rows
rows the engine's own skinny GEMM (kernels/linear.py) keeps a matmul at the weight-read time,
so those points stay in. Points in the gap (prefill of fewer than min_gemm_rows tokens,
images of fewer visual tokens, decode batches above skinny_rows) are "excluded": measured and
reported with their error, neither fitted nor counted as held out. min_gemm_rows = 0 keeps
every point.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from baton.engine.analysis import cost_model as cm
from baton.engine.analysis.calibration import TimeModel, fit_time_model
from baton.engine.analysis.predictor import LatencyPredictor
from baton.engine.analysis.sweep import Measurement, measured_cost

FIT, HELD_OUT, EXCLUDED = "fit", "held-out", "excluded"


@dataclass
class Checked:
    """A measurement with its cost, split and (after calibration) prediction."""

    m: Measurement
    cost: cm.Cost
    split: str
    predicted: float = float("nan")

    @property
    def error(self) -> float:
        """(predicted - measured) / measured."""
        return (self.predicted - self.m.seconds) / self.m.seconds


def gemm_rows(m: Measurement, cfg) -> int:
    """Rows of the matrix products a measured component runs (tokens or patches per matmul)."""
    if m.kind == "vision":
        return m.visual_tokens  # the mergers' rows; the blocks see merge^2 times more
    if m.kind == "decode":
        return m.batch
    return m.input_tokens  # prefill; e2e is dominated by its prefill's shape and batch-1 decode


def split_points(measurements: list[Measurement], configs: dict, min_gemm_rows: int = 0,
                 skinny_rows: int = 1) -> list[Checked]:
    """configs: model name -> ModelConfig of what was measured."""
    models = list(dict.fromkeys(m.model for m in measurements))
    last = models[-1] if len(models) > 1 else None
    out = []
    groups: dict[tuple, list[Checked]] = {}
    for m in measurements:
        cfg = configs[m.model]
        c = Checked(m, measured_cost(m, cfg, cm.DTYPE_BYTES[m.dtype]), FIT)
        if m.kind == "e2e" or m.model == last:
            c.split = HELD_OUT
        if skinny_rows < gemm_rows(m, cfg) < min_gemm_rows:
            c.split = EXCLUDED
        out.append(c)
        if c.split == FIT:
            groups.setdefault((m.model, m.kind), []).append(c)
    for group in groups.values():
        group.sort(key=lambda c: (c.cost.flops, c.cost.bytes))
        for i, c in enumerate(group):
            if i % 2 == 1 and i != len(group) - 1:  # interior points only: keep both ends in the fit
                c.split = HELD_OUT
    return out


def predict(c: Checked, predictor: LatencyPredictor) -> float:
    m = c.m
    if m.kind == "vision":
        return predictor.vision(m.visual_tokens)
    if m.kind == "prefill":
        return predictor.prefill(m.input_tokens)
    if m.kind == "decode":
        return predictor.decode(m.input_tokens, m.output_tokens, m.batch) / (m.output_tokens - 1)
    if m.kind == "e2e":
        return predictor.vision(m.visual_tokens) + predictor.prefill(m.input_tokens) + predictor.decode(
            m.input_tokens, m.output_tokens)
    raise ValueError(m.kind)


def calibrate(points: list[Checked], configs: dict, overlap: bool) -> TimeModel:
    """Fits the time model on the FIT points and fills every point's prediction."""
    fit = [c for c in points if c.split == FIT]
    if not fit:
        raise ValueError("no measured points to fit the time model on")
    model = fit_time_model([c.cost for c in fit], [c.m.seconds for c in fit], overlap=overlap)
    for c in points:
        pred = LatencyPredictor(c.m.model, configs[c.m.model], cm.DTYPE_BYTES[c.m.dtype], model)
        c.predicted = predict(c, pred)
    return model


@dataclass(frozen=True)
class ErrorSummary:
    count: int
    mean_abs: float
    median_abs: float
    max_abs: float

    @classmethod
    def of(cls, errors: list[float]) -> "ErrorSummary":
        if not errors:
            return cls(0, float("nan"), float("nan"), float("nan"))
        a = [abs(e) for e in errors]
        return cls(len(a), sum(a) / len(a), statistics.median(a), max(a))


def summarise(points: list[Checked]) -> dict[str, ErrorSummary]:
    """Errors by split, and of the held-out points by kind ("held-out/decode", ...)."""
    out = {s: ErrorSummary.of([c.error for c in points if c.split == s]) for s in (FIT, HELD_OUT, EXCLUDED)}
    for kind in dict.fromkeys(c.m.kind for c in points):
        errs = [c.error for c in points if c.split == HELD_OUT and c.m.kind == kind]
        if errs:
            out[f"{HELD_OUT}/{kind}"] = ErrorSummary.of(errs)
    return out
