"""Linear layers with few rows (decode steps, warm prefills) at Qwen3-VL-2B shapes, CPU float32
(and bfloat16 weights for two shapes).

The baseline is F.linear (BLAS sgemm); the other row is the native skinny GEMM that
kernels.linear uses up to SKINNY_MAX_ROWS rows. Both read the same weight bytes, so GB/s is
the figure to compare with the machine's DRAM bandwidth; rows beyond SKINNY_MAX_ROWS show
where BLAS takes over.
"""
import pytest
import torch
import torch.nn.functional as F

from kernel_bench import ON_GPU
from baton.kernels import linear as linear_mod

# Qwen3-VL-2B text decoder: hidden 2048, 16 q / 8 kv heads of 128, intermediate 6144.
SHAPES = {"qkv": (4096, 2048), "o": (2048, 2048), "gate_up": (12288, 2048), "down": (2048, 6144)}

pytestmark = pytest.mark.skipif(ON_GPU or not linear_mod.SKINNY_AVAILABLE,
                                reason="CPU skinny-GEMM path (AVX2/FMA); GPUs use cuBLAS")


CASES = ([("float32", s, m) for s in SHAPES for m in (1, 2, 4, 8, 16, 32, 64, 128, 192, 256)]
         + [("bfloat16", s, m) for s in ("gate_up", "down") for m in (1, 4, 16)])


@pytest.fixture(params=CASES, ids=lambda p: f"{p[0]}-{p[1]}-M{p[2]}")
def case(request):
    dtype, shape, rows = request.param
    n, k = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g) * 0.02
    x, w = x.to(getattr(torch, dtype)), w.to(getattr(torch, dtype))
    return f"linear 2B {dtype} {shape} [{n}x{k}] M={rows}", x, w, w.numel() * w.element_size(), 2 * rows * n * k


def test_blas_f_linear(case, measure):
    group, x, w, nbytes, flops = case
    measure(lambda: F.linear(x, w), group=group, name="F.linear (BLAS)", bytes_moved=nbytes, flops=flops,
            baseline=True)


def test_native_skinny(case, measure):
    group, x, w, nbytes, flops = case
    # measured at every row count, also above SKINNY_MAX_ROWS, to show where BLAS wins
    out = measure(lambda: linear_mod._native.skinny_linear(x.float(), w), group=group, name="native skinny",
                  bytes_moved=nbytes, flops=flops)
    torch.testing.assert_close(out, F.linear(x, w).float(), rtol=2e-2, atol=2e-2)
