"""The native CPU paged decode attention against the slow float64 loop and the torch path."""
import pytest
import torch

from baton.kernels import paged_decode_cpu, paged_decode_ref
from baton.kernels.registry import get_ops
from baton.kernels.testing import PAD_BLOCK, make_decode_case, naive_decode_attention

needs_kernel = pytest.mark.skipif(not paged_decode_cpu.NATIVE_AVAILABLE, reason="CPU without AVX2/FMA")


def _args(case):
    return (case.q, case.k_cache, case.v_cache, case.block_tables, case.context_lens, case.scale)


@needs_kernel
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size",
                         [(4, 4, 64, 16), (8, 2, 128, 32), (7, 1, 64, 32), (16, 8, 128, 16), (2, 1, 8, 4)])
@pytest.mark.parametrize("lens", [[1], [37], [16, 1, 70, 33], [0, 5]])
def test_matches_float64_loop(num_heads, num_kv_heads, head_dim, block_size, lens):
    """GQA groups of 1, 2, 4, 7; block edges; a zero-length context gives a zero row."""
    case = make_decode_case(lens, num_heads, num_kv_heads, head_dim, block_size, seed=sum(lens) + head_dim)
    assert paged_decode_cpu.uses_native(case.q, case.k_cache, case.v_cache)
    out = paged_decode_cpu.paged_decode_attention(*_args(case))
    assert out.shape == case.q.shape and out.dtype == torch.float32
    empty = case.context_lens == 0
    args = list(_args(case))
    args[3] = case.block_tables.clone()
    args[3][empty, 0] = 0  # the loop needs a key: any block; those rows are replaced below
    args[4] = case.context_lens.clamp(min=1)
    expect = naive_decode_attention(*args)
    expect[empty] = 0.0
    torch.testing.assert_close(out.double(), expect, atol=1e-5, rtol=1e-5)


@needs_kernel
def test_bfloat16_matches_the_torch_path():
    case = make_decode_case([300, 45, 1], 16, 8, 128, 16, dtype=torch.bfloat16, seed=3)
    out = paged_decode_cpu.paged_decode_attention(*_args(case))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), naive_decode_attention(*_args(case)), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out, paged_decode_ref.paged_decode_attention(*_args(case)), atol=2e-2, rtol=2e-2)


@needs_kernel
@pytest.mark.parametrize("spread", [1.0, 30.0, 400.0])
def test_peaked_and_flat_softmax_match_float64(spread):
    """Scores spread over hundreds (the kernel's exp clamps below e^-86 and rebuilds 2^n in the
    exponent bits): near-one-hot and flat weights both match the float64 loop."""
    case = make_decode_case([77, 300], 8, 2, 64, 16, seed=int(spread))
    case.q.mul_(spread)
    out = paged_decode_cpu.paged_decode_attention(*_args(case))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), naive_decode_attention(*_args(case)), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_one_and_two_threads_agree():
    case = make_decode_case([1290, 64, 3], 8, 2, 128, 16, seed=5)
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(paged_decode_cpu.paged_decode_attention(*_args(case)))
    finally:
        torch.set_num_threads(old)
    # the split into runs follows the thread count; merging runs only changes rounding
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(outs[0].double(), naive_decode_attention(*_args(case)), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_rejects_block_ids_outside_the_cache():
    case = make_decode_case([20], 4, 2, 64, 16, seed=1)
    bad = case.block_tables.clone()
    bad[0, 1] = PAD_BLOCK  # a block the 20-token context needs
    with pytest.raises(ValueError, match="not a block of the cache"):
        paged_decode_cpu.paged_decode_attention(case.q, case.k_cache, case.v_cache, bad, case.context_lens, case.scale)
    too_long = torch.tensor([10_000], dtype=torch.int32)
    with pytest.raises(ValueError, match="does not fit"):
        paged_decode_cpu.paged_decode_attention(case.q, case.k_cache, case.v_cache, case.block_tables, too_long,
                                                case.scale)


def test_other_inputs_take_the_torch_path():
    case = make_decode_case([9], 4, 2, 12, 4, seed=2)  # head_dim not a multiple of 8
    assert not paged_decode_cpu.uses_native(case.q, case.k_cache, case.v_cache)
    torch.testing.assert_close(paged_decode_cpu.paged_decode_attention(*_args(case)).double(),
                               naive_decode_attention(*_args(case)), atol=1e-5, rtol=1e-5)
    assert get_ops("torch").paged_decode_attention is paged_decode_cpu.paged_decode_attention


@needs_kernel
def test_engine_greedy_tokens_equal_the_torch_path(tiny_llm_factory, monkeypatch):
    from baton import SamplingParams

    prompts = [f"<|im_start|>user\nCount to {i}.<|im_end|>\n<|im_start|>assistant\n" for i in range(3)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    calls = []
    native = paged_decode_cpu._native

    class Counting:
        def __getattr__(self, name):
            return getattr(native, name)

        def paged_decode_attention(self, *args):
            calls.append(args[0].shape[0])
            return native.paged_decode_attention(*args)

    monkeypatch.setattr(paged_decode_cpu, "_native", Counting())
    # the per-op path: the native decode stack bypasses these wrappers (and equals this path,
    # tests/models/test_native_decode.py)
    monkeypatch.setenv("BATON_NATIVE_DECODE", "0")
    fast = [o.token_ids for o in tiny_llm_factory().generate(prompts, params)]
    assert calls
    monkeypatch.setattr(paged_decode_cpu, "NATIVE_AVAILABLE", False)
    assert [o.token_ids for o in tiny_llm_factory().generate(prompts, params)] == fast
