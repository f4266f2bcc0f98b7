"""Phase 7, cost model: `baton analyze --quick --device cuda` (scaled-down 2B/4B, real widths),
run in process with the same options, for the GPU calibration of the latency cost model:
fitted FLOP/s and bytes/s, their fraction of the data-sheet peaks, held-out error. Its files
(README.md, CSVs, plots) travel in the logs archive. A dry run parses the same options and
measures two tiny variants with a tiny plan on the CPU."""
from __future__ import annotations

import argparse
import json

from common import Phase, device_or_skip, model_config


def gpu_preset() -> str:
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return "h200" if "H200" in name else "h100"


def main():
    phase = Phase("cost_model", __doc__)
    device = device_or_skip(phase)
    from baton.engine.analysis.analyze import run_analysis
    from baton.engine.analysis.command import add_arguments, options_from_args

    out = phase.work / "analyze"
    argv = ["--quick", "--device", device, "--out", str(out), "--no-progress"]
    argv += ["--device-preset", gpu_preset()] if device == "cuda" else []
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    opts = options_from_args(parser.parse_args(argv))
    phase.note("equivalent command: baton analyze " + " ".join(argv))
    # the mode tables cost about a minute of Python per predicted device: only the measured one
    # here; `baton analyze --from-csv measurements.csv` adds the presets offline
    opts.targets = []
    if phase.dry_run:
        from baton.engine.analysis.sweep import SweepPlan
        from baton.engine.analysis.variants import ModelVariant

        tiny = model_config("tiny", True)
        wide = json.loads(json.dumps(tiny))
        wide["text_config"]["num_hidden_layers"] = 3
        opts.measure = [ModelVariant("tiny-a", "2b", tiny, scaled=True),
                        ModelVariant("tiny-b", "2b", wide, scaled=True)]
        opts.plan = SweepPlan(visual_tokens=[16, 36], prefill_lengths=[32, 64], decode_contexts=[32, 64],
                              decode_batches=[1], decode_steps=2, e2e=[(16, 16, 2)], warmup=0, repeats=1)
        opts.predict_sizes, opts.small_lengths, opts.max_output = ("2b", "8b"), [1, 64, 256], 256
        phase.note("dry run: tiny variants and plan instead of the quick sweep's scaled 2B/4B")
    result = run_analysis(opts)
    tm, err = result.time_model, result.held_out_error
    calib = {"flops": tm.flops, "bandwidth": tm.bandwidth, "source": tm.source,
             "held_out_mean": err.mean_abs, "held_out_max": err.max_abs, "points": err.count,
             "notes": result.notes, "out_dir": str(result.out_dir)}
    phase.data("calibration", calib)
    phase.table("Cost model calibrated on this device", ["what", "value"], [
        ["compute", f"{tm.flops / 1e12:.2f} TFLOP/s"], ["bandwidth", f"{tm.bandwidth / 1e9:.0f} GB/s"],
        ["held-out error", f"mean {err.mean_abs:.1%}, max {err.max_abs:.1%} over {err.count} points"],
        ["preset", opts.device_preset]])
    for note in result.notes:
        phase.note(f"analysis note: {note}")
    phase.check("analysis wrote its report", (result.out_dir / "README.md").is_file(), str(result.out_dir))
    phase.finish()


if __name__ == "__main__":
    main()
