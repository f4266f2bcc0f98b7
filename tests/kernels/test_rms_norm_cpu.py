"""The native CPU RMSNorm against the torch composition (which matches transformers bit for bit)."""
import pytest
import torch

from baton.kernels import rms_norm_cpu, rms_norm_ref
from baton.kernels.registry import get_ops

needs_kernel = pytest.mark.skipif(not rms_norm_cpu.NATIVE_AVAILABLE, reason="baton.kernels._native not built")


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 1024), (7, 128), (300, 2048), (3, 5, 64), (4, 13)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_float32_matches_reference(shape, with_residual):
    """Rows of every width (13: no vector path), 3-D per-head input, fused residual add."""
    g = torch.Generator().manual_seed(shape[-1])
    x = torch.randn(*shape, generator=g)
    w = torch.randn(shape[-1], generator=g)
    r = torch.randn(*shape, generator=g) if with_residual else None
    assert rms_norm_cpu.uses_native(x, w, r)
    got = rms_norm_cpu.rms_norm(x, w, 1e-6, r)
    want = rms_norm_ref.rms_norm(x, w, 1e-6, r)
    if with_residual:
        assert torch.equal(got[1], want[1])  # the sum itself is exact in float32
        got, want = got[0], want[0]
    assert got.shape == x.shape and got.dtype == x.dtype
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)


@needs_kernel
@pytest.mark.parametrize("with_residual", [False, True])
def test_bfloat16_rounds_like_the_reference(with_residual):
    """The sum and the normalised value are rounded to bf16: at most one bf16 step apart
    (the float32 sum of squares may differ in its last bits)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g).bfloat16()
    w = torch.randn(256, generator=g).bfloat16()
    r = torch.randn(64, 256, generator=g).bfloat16() if with_residual else None
    got = rms_norm_cpu.rms_norm(x, w, 1e-6, r)
    want = rms_norm_ref.rms_norm(x, w, 1e-6, r)
    if with_residual:
        assert torch.equal(got[1], want[1])
        got, want = got[0], want[0]
    assert got.dtype == torch.bfloat16
    mismatch = (got != want).float().mean().item()
    assert mismatch < 0.01, f"{mismatch:.2%} of values differ"
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)


def test_other_inputs_take_the_torch_path():
    x, w = torch.randn(3, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    assert not rms_norm_cpu.uses_native(x, w)
    assert torch.equal(rms_norm_cpu.rms_norm(x, w, 1e-6), rms_norm_ref.rms_norm(x, w, 1e-6))
    xg = torch.randn(3, 8, requires_grad=True)
    assert not rms_norm_cpu.uses_native(xg, torch.ones(8))  # autograd needs the torch ops
    assert get_ops("torch").rms_norm is rms_norm_cpu.rms_norm


@needs_kernel
def test_native_op_rejects_bad_arguments():
    from baton.kernels import _native

    with pytest.raises(ValueError, match="weight"):
        _native.rms_norm(torch.randn(2, 8), torch.randn(7), 1e-6)
    with pytest.raises(ValueError, match="dtype"):
        _native.rms_norm(torch.randn(2, 8), torch.randn(8).bfloat16(), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        _native.rms_norm(torch.randn(2, 8), torch.randn(8), 1e-6, torch.randn(3, 8))
