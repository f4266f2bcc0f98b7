"""Latency analysis of Qwen3-VL components: measurement on the engine, a FLOP/byte cost model
calibrated on those measurements, crossover tables, multi-agent mode predictions and plots.

Files, one concept each:
  cost_model.py   FLOPs and bytes per component (vision, prefill, decode step), from a config
  devices.py      hardware presets (peak specs, efficiencies), overridable
  calibration.py  the two-constant time model and its fit
  predictor.py    seconds per component and end to end, for one model on one device
  variants.py     the real Qwen3-VL sizes and scaled-down (fewer layers) variants
  workload.py     simulated inputs: processor dir, random images and prompts of exact sizes
  sweep.py        measurement sweeps on the engine (LLM.from_random + request metrics)
  validation.py   fit / held-out / excluded split, calibration, error summaries
  crossover.py    largest still-faster large-model output length
  modes.py        expected latency of the multi-agent modes
  plots.py        the PNG figures
  report.py       CSV / markdown writers
  analyze.py      the whole pipeline and its quick / full presets
  command.py      command-line options (`baton analyze`, bench/latency_analysis.py)
"""
