"""The CPU skinny GEMM (kernels.linear, csrc/skinny_linear.cpp) against a float64 product."""
import pytest
import torch
import torch.nn.functional as F

from baton.kernels import _native, cpu_routing
from baton.kernels.linear import SKINNY_AVAILABLE, SKINNY_MAX_ROWS, linear, uses_skinny

needs_kernel = pytest.mark.skipif(not SKINNY_AVAILABLE, reason="baton.kernels._native not built: F.linear only")


@pytest.fixture(autouse=True)
def static_routing(monkeypatch):
    """The fixed routing rule, so which path runs does not depend on this CPU's timings
    (tests/kernels/test_cpu_routing.py covers the measured routing)."""
    monkeypatch.setenv(cpu_routing.ENV_MODE, "static")
    cpu_routing.reset()
    yield
    monkeypatch.undo()
    cpu_routing.reset()


def _reference(x, w, b=None):
    y = x.double() @ w.double().T
    return y if b is None else y + b.double()


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, SKINNY_MAX_ROWS])
@pytest.mark.parametrize("n,k", [(4, 8), (7, 13), (61, 130), (256, 1024)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_float64_product(rows, n, k, with_bias):
    """Covers every tail: odd row counts, N not a multiple of 4, K not a multiple of 8."""
    g = torch.Generator().manual_seed(rows * 1000 + n + k)
    x = torch.randn(rows, k, generator=g)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if with_bias else None
    assert uses_skinny(x, w, b)
    y = linear(x, w, b)
    assert y.shape == (rows, n) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), _reference(x, w, b), rtol=1e-5, atol=1e-5 * k ** 0.5)


@needs_kernel
@pytest.mark.parametrize("rows", [1, 3, SKINNY_MAX_ROWS, 2 * SKINNY_MAX_ROWS + 5])
@pytest.mark.parametrize("with_bias", [False, True])
def test_bfloat16_weights_accumulate_in_float32(rows, with_bias):
    """bf16 in and out, at any row count (torch's bf16 GEMM is emulated on CPUs without bf16
    instructions); the product of the bf16 values is exact in float64, so the only error left
    is the final rounding to bf16 (and float32 accumulation)."""
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 203, generator=g).bfloat16()
    w = torch.randn(37, 203, generator=g).bfloat16()
    b = torch.randn(37, generator=g).bfloat16() if with_bias else None
    assert uses_skinny(x, w, b)
    y = linear(x, w, b)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), _reference(x, w, b).bfloat16().double(), rtol=8e-3, atol=1e-2)


@needs_kernel
def test_strided_input_and_many_threads():
    x = torch.randn(6, 200)[:, ::2]  # not contiguous
    w = torch.randn(300, 100)
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.testing.assert_close(linear(x, w).double(), _reference(x, w), rtol=1e-5, atol=1e-4)
    finally:
        torch.set_num_threads(old)


def test_other_shapes_and_dtypes_fall_back_to_f_linear():
    w = torch.randn(32, 16)
    for x in (torch.randn(SKINNY_MAX_ROWS + 1, 16), torch.randn(2, 3, 16), torch.randn(0, 16)):
        assert not uses_skinny(x, w)
        torch.testing.assert_close(linear(x, w), F.linear(x, w))
    xh, wh = torch.randn(2, 16, dtype=torch.float16), w.half()
    assert not uses_skinny(xh, wh)
    torch.testing.assert_close(linear(xh, wh), F.linear(xh, wh))
    x = torch.randn(2, 16, requires_grad=True)
    assert not uses_skinny(x, w)  # autograd needs F.linear's backward
    linear(x, w).sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(2, 16))


@needs_kernel
def test_native_op_rejects_bad_arguments():
    with pytest.raises(ValueError, match="need x"):
        _native.skinny_linear(torch.randn(2, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="float32"):
        _native.skinny_linear(torch.randn(2, 8).double(), torch.randn(4, 8).double())
    with pytest.raises(ValueError, match="float32"):  # bf16 inputs need bf16 weights
        _native.skinny_linear(torch.randn(2, 8).bfloat16(), torch.randn(4, 8))
    with pytest.raises(ValueError, match="contiguous"):
        _native.skinny_linear(torch.randn(2, 8), torch.randn(8, 4).T)
    with pytest.raises(ValueError, match="bias"):
        _native.skinny_linear(torch.randn(2, 8), torch.randn(4, 8), torch.randn(5))


@needs_kernel
def test_engine_runs_the_skinny_kernel_with_unchanged_outputs(tiny_llm_factory, monkeypatch):
    """Decode steps go through the kernel, and greedy tokens equal the all-BLAS run."""
    import baton.kernels.linear as linear_mod
    from baton import SamplingParams

    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(_native, name)

        def skinny_linear(self, *args):
            calls.append(args[0].shape[0])
            return _native.skinny_linear(*args)

    prompts = [f"<|im_start|>user\nCount to {i}.<|im_end|>\n<|im_start|>assistant\n" for i in range(3)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    llm = tiny_llm_factory()
    monkeypatch.setattr(linear_mod, "_native", Counting())
    fast = [o.token_ids for o in llm.generate(prompts, params)]
    assert calls and max(calls) <= SKINNY_MAX_ROWS
    monkeypatch.setattr(linear_mod, "SKINNY_AVAILABLE", False)
    llm = tiny_llm_factory()
    assert [o.token_ids for o in llm.generate(prompts, params)] == fast
