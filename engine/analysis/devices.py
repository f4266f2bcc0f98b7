"""Hardware presets for the cost model: peak specs and the fraction of them a good engine reaches.

A preset turns into the two constants the time model needs (effective FLOP/s and effective
bytes/s) as peak * efficiency. On the machine we measure on, calibration replaces both with
fitted values; on other hardware the preset is all we have, so every number is overridable
(`--device h100:peak_flops=7.5e14,bandwidth_efficiency=0.7`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    dtype: str                   # the dtype the peak FLOP/s is quoted for
    peak_flops: float            # FLOP/s (dense, no sparsity)
    peak_bandwidth: float        # bytes/s from main memory (HBM / DRAM)
    memory_bytes: float          # what a model plus its KV cache must fit in
    flops_efficiency: float = 1.0
    bandwidth_efficiency: float = 1.0
    overlap: bool = False        # True: compute and memory traffic overlap (max); False: they add up
    note: str = ""

    @property
    def effective_flops(self) -> float:
        return self.peak_flops * self.flops_efficiency

    @property
    def effective_bandwidth(self) -> float:
        return self.peak_bandwidth * self.bandwidth_efficiency


PRESETS: dict[str, DeviceSpec] = {
    # The 2-vCPU AMD EPYC development machine, float32 through PyTorch (MKL, 2 threads). Its
    # "peaks" are microbenchmarks on it while idle: a float32 GEMM of 512+ rows (~140 GFLOP/s)
    # and a matrix-vector product streaming its weights (~20 GB/s); the efficiencies are 1
    # because those already are achievable rates. Other jobs on the shared machine cut both
    # by 2-4x, which is why the analysis calibrates on measurements instead of trusting these.
    "cpu": DeviceSpec("cpu", "float32", peak_flops=140e9, peak_bandwidth=20e9, memory_bytes=24 * 2**30,
                      note="2 vCPU AMD EPYC, idle-machine float32 GEMM and GEMV microbenchmarks"),
    # NVIDIA datasheets (SXM): dense BF16 tensor-core peak and HBM bandwidth. The efficiencies
    # are what tuned kernels typically sustain (large GEMMs ~60%, decode GEMV / paged attention ~80%).
    "h100": DeviceSpec("h100", "bfloat16", peak_flops=989e12, peak_bandwidth=3.35e12, memory_bytes=80e9,
                       flops_efficiency=0.6, bandwidth_efficiency=0.8, overlap=True,
                       note="H100 SXM5 80GB datasheet: 989 TFLOP/s BF16 dense, 3.35 TB/s HBM3"),
    "h200": DeviceSpec("h200", "bfloat16", peak_flops=989e12, peak_bandwidth=4.8e12, memory_bytes=141e9,
                       flops_efficiency=0.6, bandwidth_efficiency=0.8, overlap=True,
                       note="H200 SXM 141GB datasheet: 989 TFLOP/s BF16 dense, 4.8 TB/s HBM3e"),
}

_FLOAT_FIELDS = {"peak_flops", "peak_bandwidth", "memory_bytes", "flops_efficiency", "bandwidth_efficiency"}


def parse_device(text: str) -> DeviceSpec:
    """"h100" or "h100:peak_flops=7e14,bandwidth_efficiency=0.7,dtype=float16" (also overlap=0/1)."""
    name, _, overrides = text.partition(":")
    if name not in PRESETS:
        raise ValueError(f"unknown device preset {name!r}; known: {', '.join(PRESETS)}")
    spec = PRESETS[name]
    changes = {}
    for item in filter(None, overrides.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"device override {item!r}: expected key=value")
        if key in _FLOAT_FIELDS:
            changes[key] = float(value)
        elif key == "overlap":
            changes[key] = value.strip().lower() in ("1", "true", "yes")
        elif key == "dtype":
            changes[key] = value.strip()
        else:
            known = ", ".join(sorted(_FLOAT_FIELDS | {"overlap", "dtype"}))
            raise ValueError(f"device override {key!r} is not a field; known: {known}")
    return dataclasses.replace(spec, **changes)
