"""Latency analysis of Qwen3-VL components: measurement on the engine, a FLOP/byte cost model
calibrated on those measurements, crossover tables, multi-agent mode predictions and plots.

Files, one concept each:
  cost_model.py   FLOPs and bytes per component, from a config
  devices.py      hardware presets (peak specs, efficiencies), overridable
  calibration.py  the two-constant time model and its fit
  predictor.py    seconds per component for one model on one device
"""
