"""The latency analysis end to end on a very small sweep (files, held-out error of the
calibrated cost model), plus its pieces: crossovers, multi-agent modes, scaled variants."""
import csv
import dataclasses
import json

import numpy as np
import pytest

from baton.engine.analysis.calibration import TimeModel
from baton.engine.analysis.crossover import crossovers, largest_faster
from baton.engine.analysis.modes import ModeTokens, mode_latency
from baton.engine.analysis.predictor import LatencyPredictor
from baton.engine.analysis.variants import parse_variant, real_variant, scaled_variant


# -- pieces (no measurement) -----------------------------------------------------------------
def test_largest_faster_is_last_length_within_budget():
    curve = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    assert largest_faster(curve, 2.5) == (2, False)
    assert largest_faster(curve, 3.0) == (3, False)
    assert largest_faster(curve, 0.5) == (None, False)  # even one token is slower
    assert largest_faster(curve, 9.0) == (4, True)      # capped at the search limit


def _predictors(overlap=False):
    tm = TimeModel(flops=1e13, bandwidth=1e12, overlap=overlap)
    return [LatencyPredictor(f"qwen3-vl-{s}", real_variant(s).model_config, 2, tm) for s in ("2b", "8b")]


@pytest.mark.parametrize("overlap", [False, True])
def test_crossover_is_the_last_large_model_length_that_is_no_slower(overlap):
    small, large = _predictors(overlap)
    rows = crossovers("dev", small, large, [1, 256, 2048], visual_tokens=256, text_tokens=64)
    assert rows[0].large_tokens is None  # one small-model token beats anything the large model does
    assert rows[-1].large_tokens is not None
    for row in rows:
        budget = small.request(256, 64, row.small_tokens).total
        assert row.small_seconds == pytest.approx(budget)
        if row.large_tokens is None:
            assert large.request(256, 64, 1).total > budget
        else:
            assert large.request(256, 64, row.large_tokens).total <= budget * (1 + 1e-9)
            assert large.request(256, 64, row.large_tokens + 1).total > budget


def test_auto_mode_interpolates_between_agreement_and_transfer():
    small, large = _predictors()
    x = ModeTokens()
    agree = dataclasses.replace(x, agreement=1.0)
    brief = small.request(256, 64, x.answer).total + large.request(256, 64, x.answer).total
    assert mode_latency("auto", small, large, agree) == pytest.approx(brief)
    never = dataclasses.replace(x, agreement=0.0)
    half = dataclasses.replace(x, agreement=0.5)
    assert mode_latency("auto", small, large, half) == pytest.approx(
        (mode_latency("auto", small, large, agree) + mode_latency("auto", small, large, never)) / 2)
    # reusing the image and prompt caches can only help
    assert mode_latency("auto", small, large, never) < mode_latency("auto-cold", small, large, never)
    # a large model reasoning at length is the slowest way to answer
    assert mode_latency("large-reason", small, large, x) > mode_latency("transfer", small, large, x)


def test_scaled_variant_keeps_widths_and_remaps_deepstack():
    real, small = real_variant("8b"), scaled_variant("8b", 2, 3)
    assert small.name == "qwen3-vl-8b[L2/V3]" and small.scaled
    t, rt = small.model_config.text, real.model_config.text
    assert (t.num_hidden_layers, small.model_config.vision.depth) == (2, 3)
    assert (t.hidden_size, t.intermediate_size, t.vocab_size) == (rt.hidden_size, rt.intermediate_size, rt.vocab_size)
    ds = small.model_config.vision.deepstack_visual_indexes
    assert len(ds) <= 2 and all(0 <= i < 3 for i in ds)
    assert parse_variant("8b:L2/V3") == small
    assert parse_variant("8b").name == "qwen3-vl-8b"


# -- a very small sweep on the engine ----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """One scaled 2B (1 text layer, 1 vision block, real widths), a handful of points; five
    timed rounds, since CI machines are shared and a median of three still wanders."""
    from baton.engine.analysis.analyze import AnalysisOptions, run_analysis
    from baton.engine.analysis.sweep import SweepPlan

    plan = SweepPlan(visual_tokens=[256], prefill_lengths=[256, 512], decode_contexts=[64, 512, 1024],
                     decode_batches=[1], decode_steps=8, e2e=[(256, 240, 4)], warmup=0, repeats=5)
    out = tmp_path_factory.mktemp("latency")
    opts = AnalysisOptions(out, [parse_variant("2b:L1/V1")], plan, label="test", progress=False,
                           small_lengths=[16, 256, 1024], max_output=1024)
    return run_analysis(opts)


def test_analysis_writes_csv_plots_tables_and_readme(tiny_sweep):
    out = tiny_sweep.out_dir
    for name in ("measurements.csv", "predictions.csv", "crossovers.md", "crossovers.csv", "modes.md", "modes.csv",
                 "calibration.json", "README.md", "measured_vs_predicted.png", "measurements.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for device in ("cpu", "h100", "h200"):
        for fig in ("latency_vs_output_tokens", "components", "modes"):
            png = out / f"{fig}_{device}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    with open(out / "measurements.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["kind"] for r in rows} == {"vision", "prefill", "decode", "e2e"}
    assert all(len(r["samples"].split()) == 5 and float(r["load_avg"]) >= 0 for r in rows)
    table = (out / "crossovers.md").read_text()
    assert "qwen3-vl-2b -> qwen3-vl-32b" in table and "small 1024 tok" in table
    assert "Held-out error" in (out / "README.md").read_text()


def test_cost_model_predicts_held_out_points_within_20_percent(tiny_sweep):
    with open(tiny_sweep.out_dir / "measurements.csv") as f:
        rows = list(csv.DictReader(f))
    held = [r for r in rows if r["split"] == "held-out"]
    for r in rows:
        print(f"{r['kind']:8s} in={r['input_tokens']:>5s} measured {float(r['seconds']):.3f}s "
              f"predicted {float(r['predicted_seconds']):.3f}s error {float(r['rel_error']):+.1%} ({r['split']})")
    err = tiny_sweep.held_out_error
    print(f"held-out error: mean {err.mean_abs:.1%}, max {err.max_abs:.1%} over {err.count} points")
    assert len(held) == err.count >= 3
    assert err.mean_abs <= 0.20


def test_baton_analyze_from_csv_redoes_the_analysis_without_measuring(tiny_sweep, tmp_path, capsys):
    from baton.engine.cli import main

    assert main(["analyze", "--from-csv", str(tiny_sweep.out_dir / "measurements.csv"), "--out", str(tmp_path),
                 "--no-progress", "--target", "h200:bandwidth_efficiency=0.5"]) == 0
    printed = capsys.readouterr().out
    assert "held-out error" in printed
    refit = json.loads((tmp_path / "calibration.json").read_text())["time_model"]
    assert refit["flops"] == pytest.approx(tiny_sweep.time_model.flops, rel=1e-3)  # same points, same fit
    assert (tmp_path / "crossovers.md").is_file() and (tmp_path / "latency_vs_output_tokens_h200.png").is_file()
