"""Paged decode attention at Qwen3-VL-2B / 8B head counts and 1k-8k contexts.

The baseline is the torch path (K/V gathered, then SDPA with the GQA group folded into the
query rows); the one-query-row-per-head form shows what folding buys. CPU: the native
kernel the CPU engine runs (csrc/paged_decode_cpu.cpp, reads K/V in place). GPU: the Triton
split-KV kernel. Both stream every cached K and V once, so GB/s of K/V read is the figure
to hold against the memory bandwidth.
"""
import pytest
import torch

from kernel_bench import DEVICE, DTYPE, ON_GPU
from baton.kernels import paged_decode_cpu, paged_decode_ref
from baton.kernels.testing import make_decode_case

MODELS = {"2B": (16, 8, 128), "8B": (32, 8, 128)}
BLOCK_SIZE = 16


@pytest.fixture(params=[(m, b, n) for m in MODELS for b in (1, 8) for n in (1024, 4096, 8192)],
                ids=lambda p: f"{p[0]}-B{p[1]}-ctx{p[2]}")
def case(request):
    model, batch, context = request.param
    num_heads, num_kv_heads, head_dim = MODELS[model]
    # Slightly unequal lengths, as in a real batch.
    lens = [context - 7 * i for i in range(batch)]
    c = make_decode_case(lens, num_heads, num_kv_heads, head_dim, BLOCK_SIZE, dtype=DTYPE, device=DEVICE)
    kv_bytes = 2 * sum(lens) * num_kv_heads * head_dim * c.k_cache.element_size()
    return f"decode {model} B={batch} ctx={context}", c, kv_bytes


def _args(c):
    return (c.q, c.k_cache, c.v_cache, c.block_tables, c.context_lens, c.scale)


def test_torch_folded_gqa(case, measure):
    group, c, kv_bytes = case
    measure(lambda: paged_decode_ref.paged_decode_attention(*_args(c)), group=group,
            name="torch GQA-folded", bytes_moved=kv_bytes, baseline=True)


def test_torch_one_row_per_head(case, measure):
    group, c, kv_bytes = case
    measure(lambda: paged_decode_ref.paged_decode_attention_per_head(*_args(c)), group=group,
            name="torch one row per head", bytes_moved=kv_bytes)


@pytest.mark.skipif(ON_GPU or not paged_decode_cpu.NATIVE_AVAILABLE, reason="the native kernel is the CPU path")
def test_native_cpu(case, measure):
    group, c, kv_bytes = case
    out = measure(lambda: paged_decode_cpu.paged_decode_attention(*_args(c)), group=group,
                  name="native CPU (engine)", bytes_moved=kv_bytes)
    expect = paged_decode_ref.paged_decode_attention(*_args(c))
    torch.testing.assert_close(out.float(), expect.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(not ON_GPU, reason="Triton kernels are benchmarked on a GPU only")
def test_triton_split_kv(case, measure):
    from baton.kernels import paged_decode

    group, c, kv_bytes = case
    out = measure(lambda: paged_decode.paged_decode_attention(*_args(c)), group=group,
                  name="triton split-KV", bytes_moved=kv_bytes)
    expect = paged_decode_ref.paged_decode_attention(*_args(c))
    torch.testing.assert_close(out.float(), expect.float(), atol=2e-2, rtol=2e-2)
