"""Prefix + extend attention: new tokens of a later agent stage over a cached prompt.

Shapes: Qwen3-VL-2B / 8B head counts; a fresh 1k-token prefill, a 512-token chunk after a
1k / 4k prefix, and a short 64-token stage after an 8k prefix. The FLOP count covers only
the unmasked scores (4 * D per query-key pair per head).
CPU: the torch path the CPU engine runs. GPU: the Triton kernel, the torch reference, and
torch SDPA (flash) on the same problem laid out contiguously with no paging (non-causal over
all keys, FLOPs counted the same way), the throughput target the kernel is measured against.
"""
import pytest
import torch
import torch.nn.functional as F

from kernel_bench import DEVICE, DTYPE, ON_GPU
from baton.kernels import prefix_extend_ref
from baton.kernels.testing import make_extend_case

MODELS = {"2B": (16, 8, 128), "8B": (32, 8, 128)}
STAGES = [(0, 1024), (1024, 512), (4096, 512), (8192, 64)]  # (prefix, new tokens)
BLOCK_SIZE = 16


def _flops(num_heads, head_dim, prefix, num_new):
    pairs = num_new * prefix + num_new * (num_new + 1) // 2
    return 4 * head_dim * num_heads * pairs


@pytest.fixture(params=[(m, p, n) for m in MODELS for p, n in STAGES],
                ids=lambda p: f"{p[0]}-prefix{p[1]}-new{p[2]}")
def case(request):
    model, prefix, num_new = request.param
    num_heads, num_kv_heads, head_dim = MODELS[model]
    c = make_extend_case([prefix], [num_new], num_heads, num_kv_heads, head_dim, BLOCK_SIZE,
                         dtype=DTYPE, device=DEVICE)
    return (f"extend {model} prefix={prefix} new={num_new}", c,
            _flops(num_heads, head_dim, prefix, num_new))


def _args(c):
    return (c.q, c.k, c.v, c.k_cache, c.v_cache, c.block_tables, c.cu_seqlens_q, c.prefix_lens,
            c.scale)


def test_torch_reference(case, measure):
    group, c, flops = case
    measure(lambda: prefix_extend_ref.prefix_extend_attention(*_args(c)), group=group,
            name="torch gather + SDPA (engine)", flops=flops, baseline=not ON_GPU)


@pytest.mark.skipif(not ON_GPU, reason="Triton kernels are benchmarked on a GPU only")
def test_triton(case, measure):
    from baton.kernels import prefix_extend

    group, c, flops = case
    out = measure(lambda: prefix_extend.prefix_extend_attention(*_args(c), max_seqlen_q=c.max_seqlen_q),
                  group=group, name="triton prefix+extend", flops=flops)
    expect = prefix_extend_ref.prefix_extend_attention(*_args(c))
    torch.testing.assert_close(out.float(), expect.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(not ON_GPU, reason="the SDPA-flash target is a GPU number")
def test_sdpa_flash_target(case, measure):
    group, c, _ = case
    num_new, num_heads, head_dim = c.q.shape
    prefix = int(c.prefix_lens[0])
    total = prefix + num_new
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q = torch.randn(1, num_heads, num_new, head_dim, device=DEVICE, dtype=DTYPE, generator=g)
    k = torch.randn(1, num_heads, total, head_dim, device=DEVICE, dtype=DTYPE, generator=g)
    v = torch.randn_like(k)
    flops = 4 * head_dim * num_heads * num_new * total
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        measure(lambda: F.scaled_dot_product_attention(q, k, v), group=group,
                name="SDPA flash, contiguous", flops=flops, baseline=True)
