"""Device, dtype and roofline peaks shared by the kernel microbenchmarks."""
import os

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
DTYPE = torch.bfloat16

# name substring -> (HBM GB/s, dense bf16 TFLOP/s), from the vendors' data sheets.
GPU_PEAKS = {
    "H200": (4800.0, 989.0),
    "H100 PCIe": (2000.0, 756.0),
    "H100": (3350.0, 989.0),
    "A100": (2039.0, 312.0),
    "L40S": (864.0, 362.0),
    "4090": (1008.0, 165.0),
}


def device_peaks():
    """(GB/s, TFLOP/s) of this device, or (None, None). BATON_PEAK_GBPS / _TFLOPS override."""
    gbps = os.environ.get("BATON_PEAK_GBPS")
    tflops = os.environ.get("BATON_PEAK_TFLOPS")
    if gbps or tflops:
        return (float(gbps) if gbps else None, float(tflops) if tflops else None)
    if ON_GPU:
        name = torch.cuda.get_device_name()
        for key, peaks in GPU_PEAKS.items():
            if key in name:
                return peaks
    return (None, None)
