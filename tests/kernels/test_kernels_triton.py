"""Each Triton kernel against its plain-torch reference.

On a CPU machine these run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1
before anything imports triton). The interpreter computes bf16 wrongly, so bf16 is only
tested on a GPU. Every output buffer the kernels allocate is poisoned with NaN, so an
element a kernel forgets to write fails the comparison.
"""
import math

import pytest
import torch

pytest.importorskip("triton")

from baton.kernels import (  # noqa: E402
    kv_store, kv_store_ref, paged_decode, paged_decode_ref, prefix_extend, prefix_extend_ref,
    rms_norm, rms_norm_ref, rotary, rotary_ref, silu_mul, silu_mul_ref,
)
from baton.kernels.registry import OP_NAMES, get_ops  # noqa: E402
from baton.kernels.testing import make_decode_case, make_extend_case, naive_decode_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
# (Hq, Hkv, D, block_size): GQA 1:1, 4:1, 7:1; head_dim 64 and 128; block sizes 16 and 32.
ATTENTION_SHAPES = [(4, 4, 64, 16), (8, 2, 128, 32), (7, 1, 64, 32)]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Make torch.empty / torch.empty_like return NaN-filled float tensors during a test."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(math.nan)
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(real_empty_like(*a, **kw)))


def assert_close(actual, expected, dtype):
    assert not torch.isnan(actual).any(), "kernel left unwritten (NaN) elements"
    torch.testing.assert_close(actual.float(), expected.float(), atol=TOL[dtype], rtol=TOL[dtype])


def test_get_ops_triton_has_every_op():
    ops = get_ops("triton")
    assert ops.backend == "triton"
    for name in OP_NAMES:
        assert callable(getattr(ops, name))


# ---------------------------------------------------------------------------- store_kv


@pytest.mark.parametrize("dtype", DTYPES)
def test_store_kv_matches_reference(dtype):
    # Enough tokens for several programs (each takes many tokens), some skipped (slot < 0).
    g = torch.Generator().manual_seed(11)
    num_tokens = 600
    k_cache = torch.randn(48, 16, 3, 64, generator=g).to(DEVICE, dtype)
    v_cache = torch.randn(48, 16, 3, 64, generator=g).to(DEVICE, dtype)
    # Fused-qkv style strided k/v (a wider buffer sliced per token).
    kv = torch.randn(num_tokens, 2, 3, 64, generator=g).to(DEVICE, dtype)
    k, v = kv[:, 0], kv[:, 1]
    slots = torch.randperm(48 * 16, generator=g)[:num_tokens]
    slots[::7] = -1
    slots = slots.to(DEVICE)
    expect_k, expect_v = k_cache.clone(), v_cache.clone()
    kv_store_ref.store_kv(k, v, expect_k, expect_v, slots)
    kv_store.store_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, expect_k) and torch.equal(v_cache, expect_v)


# ---------------------------------------------------------------------------- decode


def _decode_args(case):
    return (case.q, case.k_cache, case.v_cache, case.block_tables, case.context_lens, case.scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size", ATTENTION_SHAPES)
def test_paged_decode_matches_reference(num_heads, num_kv_heads, head_dim, block_size, dtype):
    case = make_decode_case([1, 37, block_size, 70], num_heads, num_kv_heads, head_dim, block_size,
                            dtype=dtype, seed=head_dim * num_heads, device=DEVICE)
    expect = paged_decode_ref.paged_decode_attention(*_decode_args(case))
    assert_close(paged_decode.paged_decode_attention(*_decode_args(case)), expect, dtype)


@pytest.mark.parametrize("num_splits", [2, 5])
def test_paged_decode_split_kv_merge(num_splits):
    # Splits of different lengths, some empty for the short sequences: the merge must weigh
    # them by log-sum-exp and ignore the empty ones.
    case = make_decode_case([3, 150, 64, 97], 8, 2, 64, 16, seed=num_splits, device=DEVICE)
    out = paged_decode.paged_decode_attention(*_decode_args(case), num_splits=num_splits)
    assert_close(out, naive_decode_attention(*_decode_args(case)), torch.float32)


# ---------------------------------------------------------------------------- prefix + extend


def _extend_args(case):
    return (case.q, case.k, case.v, case.k_cache, case.v_cache, case.block_tables,
            case.cu_seqlens_q, case.prefix_lens, case.scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size", ATTENTION_SHAPES)
def test_prefix_extend_matches_reference(num_heads, num_kv_heads, head_dim, block_size, dtype):
    # Fresh prefill, a prefix ending mid-block, a block-aligned prefix, one new token.
    case = make_extend_case([0, block_size + 5, 2 * block_size, 9], [7, 12, 3, 1],
                            num_heads, num_kv_heads, head_dim, block_size, dtype=dtype,
                            seed=head_dim + num_heads, device=DEVICE)
    expect = prefix_extend_ref.prefix_extend_attention(*_extend_args(case))
    out = prefix_extend.prefix_extend_attention(*_extend_args(case), max_seqlen_q=case.max_seqlen_q)
    assert_close(out, expect, dtype)


def test_prefix_extend_several_query_tiles_without_hint():
    # More new tokens than one query tile (tiles hold tokens x a 3-head group, with padding
    # rows), and no max_seqlen_q hint.
    case = make_extend_case([21, 0], [150, 5], 3, 1, 64, 16, seed=7, device=DEVICE)
    expect = prefix_extend_ref.prefix_extend_attention(*_extend_args(case))
    assert_close(prefix_extend.prefix_extend_attention(*_extend_args(case)), expect, torch.float32)


# ---------------------------------------------------------------------------- elementwise
# Row counts are large enough that the row-batched kernels run several programs, the last
# one partial.


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_reference(dtype):
    x = torch.randn(600, 200, device=DEVICE).to(dtype)  # hidden not a power of two
    residual = torch.randn(600, 200, device=DEVICE).to(dtype)
    weight = torch.randn(200, device=DEVICE).to(dtype)
    assert_close(rms_norm.rms_norm(x, weight, 1e-6), rms_norm_ref.rms_norm(x, weight, 1e-6), dtype)
    out, new_residual = rms_norm.rms_norm(x, weight, 1e-6, residual=residual)
    expect_out, expect_residual = rms_norm_ref.rms_norm(x, weight, 1e-6, residual=residual)
    assert torch.equal(new_residual, expect_residual)
    assert_close(out, expect_out, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_rotary_matches_reference_on_fused_qkv(dtype):
    n, hq, hkv, d = 150, 4, 2, 128
    qkv = torch.randn(n, (hq + 2 * hkv) * d, device=DEVICE).to(dtype)
    expect = qkv.clone()

    def views(buf):
        return buf[:, : hq * d].view(n, hq, d), buf[:, hq * d:(hq + hkv) * d].view(n, hkv, d)

    inv_freq = 1.0 / (5e6 ** (torch.arange(0, d, 2, dtype=torch.float32, device=DEVICE) / d))
    positions = torch.randint(0, 300, (3, n), device=DEVICE)
    cos, sin = rotary_ref.mrope_cos_sin(positions, inv_freq, [24, 20, 20])
    rotary_ref.apply_rotary_(*views(expect), cos, sin)
    rotary.apply_rotary_(*views(qkv), cos, sin)
    assert_close(qkv, expect, dtype)  # includes v, which must be untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_matches_reference(dtype):
    x = torch.randn(300, 2 * 300, device=DEVICE).to(dtype)
    assert_close(silu_mul.silu_and_mul(x), silu_mul_ref.silu_and_mul(x), dtype)
