"""The whole analysis: measure, calibrate, validate, predict, and write the output directory.

    run_analysis(quick_options("out/"))       # what `baton analyze --quick` runs

Output directory:
  measurements.csv      every measured point: samples, median, FLOPs, bytes, split, prediction, error
  predictions.csv       the calibrated / preset model for every real size and device: components
                        vs visual tokens, prompt length, context and batch, and end to end vs output length
  crossovers.md / .csv  largest still-faster large-model output length per (small, large, n_small)
  modes.md / modes.csv  expected latency of the multi-agent modes over token counts and agreement
  calibration.json      fitted constants, presets, errors, notes
  *.png                 latency vs output tokens, component bars, measured vs predicted, modes
  README.md             the summary
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from baton.engine.analysis import cost_model as cm
from baton.engine.analysis import plots, report
from baton.engine.analysis.calibration import TimeModel
from baton.engine.analysis.crossover import crossover_markdown, crossovers
from baton.engine.analysis.devices import PRESETS, DeviceSpec
from baton.engine.analysis.modes import MODES, ModeTokens, mode_latency
from baton.engine.analysis.predictor import LatencyPredictor
from baton.engine.analysis.sweep import ModelSweep, SweepPlan
from baton.engine.analysis.validation import HELD_OUT, ErrorSummary, calibrate, split_points, summarise
from baton.engine.analysis.variants import REAL_SIZES, ModelVariant, parse_variant, real_variant
from baton.engine.analysis.workload import processor_dir


@dataclass
class AnalysisOptions:
    out_dir: Path
    measure: list[ModelVariant]                  # measured in this order; the last is held out whole
    plan: SweepPlan
    label: str = "custom"
    device: str = "cpu"                          # where to measure: "cpu" or "cuda"
    dtype: str = "float32"
    device_preset: str = "cpu"                   # preset that describes the measured device
    targets: list[DeviceSpec] = field(default_factory=lambda: [PRESETS["h100"], PRESETS["h200"]])
    predict_sizes: tuple[str, ...] = REAL_SIZES
    visual_tokens: int = 256                     # the crossover / mode scenario: image size ...
    text_tokens: int = 64                        # ... and question length
    small_lengths: list[int] = field(default_factory=lambda: [1, 16, 64, 256, 512, 1024, 2048])
    max_output: int = 2048
    modes: ModeTokens = field(default_factory=ModeTokens)
    min_gemm_rows: int | None = None             # None: 256 on CPU, 0 on GPU (see validation.py)
    overlap: bool | None = None                  # None: False on CPU (sum), True on GPU (roofline)
    from_csv: Path | None = None                 # reuse measurements instead of measuring
    progress: bool = True
    seed: int = 0
    cache_dir: Path | None = None                # synthetic tokenizer cache (models.synthetic)


def quick_options(out_dir, **kw) -> AnalysisOptions:
    """A few minutes on the 2-core development CPU: two scaled-down sizes (1 text layer,
    1 vision block, real widths and vocabulary), two sizes per component, 3 timed rounds."""
    plan = SweepPlan(visual_tokens=[256, 576], prefill_lengths=[512, 1024], decode_contexts=[64, 1536],
                     decode_batches=[1], decode_steps=6, e2e=[(256, 240, 8)], warmup=0, repeats=3,
                     max_point_seconds=60)
    models = [parse_variant("2b:L1/V1"), parse_variant("4b:L1/V1")]
    return AnalysisOptions(Path(out_dir), models, plan, label="quick", **kw)


def full_options(out_dir, **kw) -> AnalysisOptions:
    """The full CPU sweep: the real 2B, the real 4B (noted and skipped where it does not fit in
    memory), scaled 4B and 8B (2 text layers, 2 vision blocks) for cross-size validation, decode
    at batch 1 and 2. Points whose single run the device preset predicts above 100 s are
    skipped with a note (the 2B's largest images and prompts on the 2-core CPU)."""
    plan = SweepPlan(visual_tokens=[64, 256, 576, 1024], prefill_lengths=[256, 512, 1024, 2048],
                     decode_contexts=[256, 1024, 2048], decode_batches=[1, 2], decode_steps=8,
                     e2e=[(256, 64, 16)], warmup=0, repeats=3, max_point_seconds=100)
    models = [parse_variant(m) for m in ("2b", "4b", "4b:L2/V2", "8b:L2/V2")]
    return AnalysisOptions(Path(out_dir), models, plan, label="full", **kw)


@dataclass
class AnalysisResult:
    out_dir: Path
    time_model: TimeModel
    held_out_error: ErrorSummary
    files: list[Path]
    notes: list[str]


def _measure(opts: AnalysisOptions, prior: TimeModel) -> tuple[list, list[str]]:
    if opts.from_csv is not None:
        return report.read_measurements_csv(Path(opts.from_csv)), [f"measurements read from {opts.from_csv}"]
    proc = processor_dir(opts.out_dir / ".processor", opts.cache_dir)
    results, notes = [], []
    for variant in opts.measure:
        sweep = ModelSweep(variant, opts.plan, processor_dir=proc, dtype=opts.dtype, device=opts.device,
                           prior=prior, seed=opts.seed, progress=opts.progress)
        got, why = sweep.run()
        results += got
        notes += why
    return results, notes


def _predictors(models: dict[str, ModelVariant], dtype: str, time_model: TimeModel) -> list[LatencyPredictor]:
    return [LatencyPredictor(name, v.model_config, cm.DTYPE_BYTES[dtype], time_model) for name, v in models.items()]


def _prediction_rows(device: str, dtype: str, preds: list[LatencyPredictor], opts: AnalysisOptions,
                     memory: float) -> list[dict]:
    rows = []
    outs = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, opts.max_output})
    for p in preds:
        base = {"device": device, "model": p.name, "dtype": dtype, "fits_memory": p.fits(memory)}
        for v in (16, 64, 256, 576, 1024, 2304, 4096):
            rows.append({**base, "kind": "vision", "visual_tokens": v, "seconds": p.vision(v)})
        for n in (64, 256, 512, 1024, 2048, 4096, 8192):
            rows.append({**base, "kind": "prefill", "input_tokens": n, "seconds": p.prefill(n)})
        for c, b in itertools.product((256, 1024, 4096, 16384), (1, 4, 16, 64)):
            rows.append({**base, "kind": "decode_step", "input_tokens": c, "batch": b, "seconds": p.decode_step(c, b)})
        for n in outs:
            r = p.request(opts.visual_tokens, opts.text_tokens, n)
            rows.append({**base, "kind": "request", "visual_tokens": opts.visual_tokens,
                         "input_tokens": p.prompt_len(opts.visual_tokens, opts.text_tokens), "output_tokens": n,
                         "vision_s": r.vision, "prefill_s": r.prefill, "decode_s": r.decode, "seconds": r.total})
    return rows


def _pairs(names: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]


def _mode_rows(device: str, small: LatencyPredictor, large: LatencyPredictor, base: ModeTokens) -> list[dict]:
    rows = []
    for reason, k, p in itertools.product((256, 512, 1024, 2048), (32, 64, 128, 256), (0.5, 0.7, 0.86, 0.95)):
        x = dataclasses.replace(base, small_reason=reason, large_reason=reason, budget=k, agreement=p)
        row = {"device": device, "small": small.name, "large": large.name, "answer": x.answer,
               "reason_tokens": reason, "budget_k": k, "agreement_p": p}
        for mode in MODES:
            row[f"{mode}_s"] = mode_latency(mode, small, large, x)
        rows.append(row)
    return rows


def _modes_markdown(device_preds: dict[str, dict[str, LatencyPredictor]], pairs, x: ModeTokens) -> str:
    lines = [f"Token counts: answer {x.answer}, reasoning {x.small_reason} (small) / {x.large_reason} (large), "
             f"transfer budget k={x.budget}, agreement p={x.agreement}, image {x.visual_tokens} visual tokens, "
             f"question {x.text_tokens} tokens. Expected end-to-end seconds:\n",
             "| device | small -> large | " + " | ".join(MODES) + " |", "|---|---|" + "---|" * len(MODES)]
    for device, preds in device_preds.items():
        for a, b in pairs:
            cells = [f"{mode_latency(m, preds[a], preds[b], x):.3g}" for m in MODES]
            lines.append(f"| {device} | {a} -> {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _skinny_rows() -> int:
    """Rows up to which this engine's CPU linear layers run the skinny GEMM (1: not built here)."""
    from baton.kernels.linear import SKINNY_AVAILABLE, SKINNY_MAX_ROWS

    return SKINNY_MAX_ROWS if SKINNY_AVAILABLE else 1


def run_analysis(opts: AnalysisOptions) -> AnalysisResult:
    t_start = time.perf_counter()
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    on_gpu = opts.device.startswith("cuda")
    min_rows = opts.min_gemm_rows if opts.min_gemm_rows is not None else (0 if on_gpu else 256)
    skinny_rows = 1 if on_gpu else _skinny_rows()
    overlap = opts.overlap if opts.overlap is not None else on_gpu
    preset = dataclasses.replace(PRESETS[opts.device_preset], dtype=opts.dtype, overlap=overlap)

    # 1. measure (or load), 2. split, calibrate and validate
    measurements, notes = _measure(opts, TimeModel.from_spec(preset))
    if not measurements:
        raise RuntimeError("nothing was measured: " + "; ".join(notes))
    measured_models = {m.model: None for m in measurements}
    variants = {v.name: v for v in opts.measure}
    for name in measured_models:
        measured_models[name] = variants[name] if name in variants else parse_variant(_size_spec(name))
    configs = {name: v.model_config for name, v in measured_models.items()}
    points = split_points(measurements, configs, min_rows, skinny_rows)
    time_model = calibrate(points, configs, overlap)
    summary = summarise(points)
    other_points = split_points(measurements, configs, min_rows, skinny_rows)  # the other time-model form, for comparison
    other_form = calibrate(other_points, configs, not overlap)
    other_summary = summarise(other_points)

    # 3. predict every real size on the measured device (calibrated) and the targets (presets)
    real = {f"qwen3-vl-{s}": real_variant(s) for s in opts.predict_sizes}
    names = list(real)
    measured_name = f"{opts.device_preset} (calibrated, {opts.dtype})"
    devices: dict[str, tuple[str, TimeModel, float]] = {
        measured_name: (opts.dtype, time_model, preset.memory_bytes)}
    for spec in opts.targets:
        devices[f"{spec.name} (preset, {spec.dtype})"] = (spec.dtype, TimeModel.from_spec(spec), spec.memory_bytes)
    device_preds = {d: {p.name: p for p in _predictors(real, dt, tm)} for d, (dt, tm, _) in devices.items()}

    rows, cross, mode_rows = [], [], []
    for d, (dt, tm, mem) in devices.items():
        preds = device_preds[d]
        rows += _prediction_rows(d, dt, list(preds.values()), opts, mem)
        for a, b in _pairs(names):
            cross += crossovers(d, preds[a], preds[b], opts.small_lengths, opts.visual_tokens, opts.text_tokens)
            mode_rows += _mode_rows(d, preds[a], preds[b], dataclasses.replace(
                opts.modes, visual_tokens=opts.visual_tokens, text_tokens=opts.text_tokens))

    # 4. write
    files = []

    def path(name: str) -> Path:
        files.append(out / name)
        return out / name

    report.write_measurements_csv(path("measurements.csv"), points)
    report.write_rows_csv(path("predictions.csv"), rows)
    report.write_crossovers_csv(path("crossovers.csv"), cross)
    cross_md = crossover_markdown(cross, opts.small_lengths)
    path("crossovers.md").write_text(_crossover_header(opts) + cross_md)
    report.write_rows_csv(path("modes.csv"), mode_rows)
    mode_pairs = [(a, b) for a, b in _pairs(names) if a == names[0]]
    modes_md = _modes_markdown(device_preds, mode_pairs, dataclasses.replace(
        opts.modes, visual_tokens=opts.visual_tokens, text_tokens=opts.text_tokens))
    path("modes.md").write_text("# Multi-agent modes, predicted\n\n" + modes_md + "\n")

    for i, d in enumerate(devices):
        slug = d.split(" ")[0]
        preds = list(device_preds[d].values())
        plots.latency_vs_output(path(f"latency_vs_output_tokens_{slug}.png"), d, preds, cross, opts.visual_tokens,
                                opts.text_tokens, opts.max_output, mark_small_tokens=[256, 1024],
                                memory_bytes=devices[d][2])
        plots.component_bars(path(f"components_{slug}.png"), d, preds, opts.visual_tokens, opts.text_tokens,
                             [16, 1024])
        agree = np.linspace(0, 1, 21)
        small, large = device_preds[d][names[0]], device_preds[d][names[-1]]
        by_mode = {m: np.array([mode_latency(m, small, large, dataclasses.replace(
            opts.modes, visual_tokens=opts.visual_tokens, text_tokens=opts.text_tokens, agreement=p))
            for p in agree]) for m in MODES}
        plots.mode_lines(path(f"modes_{slug}.png"), f"{d}: {small.name} + {large.name}", agree, by_mode)
    plots.measured_vs_predicted(path("measured_vs_predicted.png"), points)
    measured_preds = {n: LatencyPredictor(n, configs[n], cm.DTYPE_BYTES[opts.dtype], time_model) for n in configs}
    plots.measurement_panels(path("measurements.png"), points, measured_preds)

    elapsed = time.perf_counter() - t_start
    calib = {
        "label": opts.label, "device": opts.device, "dtype": opts.dtype,
        "time_model": dataclasses.asdict(time_model),
        "alternative_form": {"time_model": dataclasses.asdict(other_form),
                             "errors": {k: dataclasses.asdict(v) for k, v in other_summary.items()}},
        "preset": dataclasses.asdict(preset),
        "efficiency_vs_preset": {"flops": time_model.flops / preset.peak_flops,
                                 "bandwidth": time_model.bandwidth / preset.peak_bandwidth},
        "min_gemm_rows": min_rows,
        "skinny_rows": skinny_rows,
        "errors": {k: dataclasses.asdict(v) for k, v in summary.items()},
        "notes": notes, "seconds": elapsed,
    }
    report.write_json(path("calibration.json"), calib)
    readme = _readme(opts, points, summary, other_summary, time_model, other_form, preset, (skinny_rows, min_rows), notes,
                     measured_models, cross_md, modes_md, files, elapsed)
    path("README.md").write_text(readme)
    return AnalysisResult(out, time_model, summary[HELD_OUT], files, notes)


def _size_spec(name: str) -> str:
    """"qwen3-vl-4b[L1/V1]" -> "4b:L1/V1" (for measurements read back from a CSV)."""
    size = name.removeprefix("qwen3-vl-")
    if "[" in size:
        size, scale = size.rstrip("]").split("[")
        return f"{size}:{scale}"
    return size


def _crossover_header(opts: AnalysisOptions) -> str:
    return (f"# Crossovers\n\nInput: one image of {opts.visual_tokens} visual tokens and a {opts.text_tokens}-token "
            "question. Each cell: the largest output length of the large model whose end-to-end latency "
            "(vision + prefill + decode) is still at most the small model's with that many output tokens; "
            "\"never\": even one large-model token is slower; \">N\": still faster at N (the search limit).\n\n")


def _readme(opts, points, summary, other_summary, tm, other_tm, preset, row_gap, notes, measured_models,
            cross_md, modes_md, files, elapsed) -> str:
    held = summary[HELD_OUT]
    form = "max(F/flops, B/bw) (roofline)" if tm.overlap else "F/flops + B/bw"
    other = "max(F/flops, B/bw)" if other_tm.overlap else "F/flops + B/bw"
    lines = [
        f"# Baton latency analysis ({opts.label})",
        "",
        f"Measured on `{opts.device}` ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
        f"{opts.dtype}, random weights (`LLM.from_random`), every number from the engine's own request metrics. "
        f"Run time: {elapsed / 60:.1f} min.",
        "",
        "## Models measured",
        "",
    ]
    for name, v in measured_models.items():
        loads = [c.m.load_avg for c in points if c.m.model == name and c.m.load_avg == c.m.load_avg]
        load = f"; machine load average {statistics.median(loads):.1f} while measured" if loads else ""
        lines.append(f"- `{name}`: {v.note}, {cm.total_params(v.model_config) / 1e9:.2f} B parameters{load}")
    if notes:
        lines += ["", "Skipped / notes:", ""] + [f"- {n}" for n in notes]
    lines += [
        "",
        "## Cost model and calibration",
        "",
        "FLOPs and bytes per component come from the config alone (engine/analysis/cost_model.py); time = "
        f"{form} with two constants fitted on the measured points of this device:",
        "",
        f"- effective FLOP/s: **{tm.flops / 1e9:.2f} GFLOP/s** ({tm.flops / preset.peak_flops:.0%} of the "
        f"`{preset.name}` preset's {preset.peak_flops / 1e9:.0f})",
        f"- effective bandwidth: **{tm.bandwidth / 1e9:.2f} GB/s** ({tm.bandwidth / preset.peak_bandwidth:.0%} of "
        f"{preset.peak_bandwidth / 1e9:.0f})",
        "",
        f"**Held-out error: mean {held.mean_abs:.1%}, max {held.max_abs:.1%} over {held.count} points** "
        "(points never used in the fit: interior sizes of each component, every point of the last measured "
        "model, and the end-to-end runs).",
        "",
        report.error_table(summary),
        "",
        f"The other form ({other}) fits to {other_tm.flops / 1e9:.2f} GFLOP/s, {other_tm.bandwidth / 1e9:.2f} GB/s, "
        f"held-out mean error {other_summary[HELD_OUT].mean_abs:.1%}, max {other_summary[HELD_OUT].max_abs:.1%}.",
        "",
    ]
    skinny_rows, min_rows = row_gap
    if min_rows:
        lines += [
            f"Excluded points: matrix products with {skinny_rows} < rows < {min_rows} (prefill of fewer "
            f"than {min_rows} tokens, images of fewer visual tokens, decode batches above {skinny_rows}). "
            "On this CPU, MKL runs such GEMMs far below both the GEMV bandwidth and the large-GEMM rate (about "
            "12 GFLOP/s at 4 rows, 56 at 128, idle). They are measured and listed with their error below, but the "
            "two-constant model is not meant to describe them."
            + (f" Up to {skinny_rows} rows the engine's skinny GEMM (kernels/linear.py) reads each weight once, "
               "so a decode batch shares the weight reads and those points are kept." if skinny_rows > 1 else ""),
            "",
        ]
    lines += [
        "All points (seconds; decode = one step, mean over the run's steps):",
        "",
        report.points_table(points),
        "",
        "## Crossovers",
        "",
        _crossover_header(opts).split("\n\n", 1)[1].strip(),
        "",
        cross_md,
        "## Multi-agent modes",
        "",
        modes_md,
        "",
        "auto: mutual verification, then (with probability 1-p) warm transfer: image and prompt KV reused "
        "from the caches. auto-cold: the same with every stage re-encoding and re-prefilling. Full grids "
        "(reasoning length, k, p, every pair, every device) in modes.csv.",
        "",
        "## Assumptions and limits",
        "",
        "- Counted work: matrix products (2 FLOPs per multiply-add) incl. attention; bytes: weights, KV "
        "reads and writes. Elementwise ops and activation traffic fall to the calibration.",
        "- Other hardware is predicted from datasheet peaks times typical efficiencies ("
        + ", ".join(f"{s.name}: {s.flops_efficiency:.0%} FLOP/s, {s.bandwidth_efficiency:.0%} bandwidth"
                    for s in opts.targets) + "), "
        "bf16 weights, compute and memory overlapping (roofline). Per-kernel launch overheads are not "
        "modelled: GPU decode times are for an engine that hides them (CUDA graphs).",
        "- Scaled variants keep every width and the full vocabulary, so per-layer costs and the LM head are "
        "the real ones; the 32B (and sizes that do not fit) are predicted from their configs only.",
        f"- The machine may be shared with other jobs (it has {os.cpu_count()} cores; a load average above that "
        "means they compete): medians of interleaved rounds damp that noise within a model, but a load that "
        "changes between models shifts them against each other, and the held-out error shows it.",
        "",
        "## Files",
        "",
    ] + [f"- `{f.name}`" for f in files if f.name != "README.md"] + [
        "",
        "Reproduce: `baton analyze --quick` (or `python bench/latency_analysis.py --quick`); "
        "`--from-csv measurements.csv` redoes the analysis without measuring.",
        "",
    ]
    return "\n".join(lines)
