"""The plain-torch ops (the CPU engine's runtime path) and the kernel registry.

Each fast reference is checked against a slow, obviously correct loop (kernels.testing) or,
where Hugging Face defines the semantics, against transformers itself.
"""
import pytest
import torch
import torch.nn.functional as F

from baton.kernels import paged_decode_ref, prefix_extend_ref
from baton.kernels.kv_store_ref import store_kv
from baton.kernels.registry import OP_NAMES, get_ops, resolve_backend, triton_available
from baton.kernels.rms_norm_ref import rms_norm
from baton.kernels.rotary_ref import apply_rotary_, mrope_cos_sin
from baton.kernels.silu_mul_ref import silu_and_mul
from baton.kernels.testing import (
    make_decode_case,
    make_extend_case,
    naive_decode_attention,
    naive_prefix_extend_attention,
)

# (Hq, Hkv, D, block_size): GQA 1:1, 4:1, 7:1; head_dim 64 and 128; block sizes 16 and 32.
ATTENTION_SHAPES = [(4, 4, 64, 16), (8, 2, 128, 32), (7, 1, 64, 32)]


# ---------------------------------------------------------------------------- registry


def test_get_ops_torch_has_every_op():
    ops = get_ops("torch")
    assert ops.backend == "torch"
    for name in OP_NAMES:
        assert callable(getattr(ops, name))


def test_get_ops_rejects_unknown_backend():
    with pytest.raises(ValueError, match="torch, triton"):
        get_ops("cuda")


def test_resolve_auto_on_cpu_is_torch():
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"


def test_resolve_rejects_unknown_name_listing_valid_ones():
    with pytest.raises(ValueError, match="auto, torch, triton"):
        resolve_backend("flash", "cpu")


@pytest.mark.skipif(not triton_available(), reason="triton not installed")
def test_resolve_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", "cpu") == "triton"


# ---------------------------------------------------------------------------- store_kv


def test_store_kv_writes_slots_and_skips_negative():
    g = torch.Generator().manual_seed(1)
    k_cache = torch.randn(5, 16, 2, 64, generator=g)
    v_cache = torch.randn(5, 16, 2, 64, generator=g)
    k, v = torch.randn(6, 2, 64, generator=g), torch.randn(6, 2, 64, generator=g)
    slots = torch.tensor([3, 70, -1, 16, 79, -1], dtype=torch.int64)
    expect_k, expect_v = k_cache.clone(), v_cache.clone()
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            expect_k[s // 16, s % 16] = k[i]
            expect_v[s // 16, s % 16] = v[i]
    store_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, expect_k)
    assert torch.equal(v_cache, expect_v)


# ---------------------------------------------------------------------------- attention


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size", ATTENTION_SHAPES)
def test_decode_reference_matches_naive_loop(num_heads, num_kv_heads, head_dim, block_size):
    case = make_decode_case([1, 37, block_size, 70], num_heads, num_kv_heads, head_dim, block_size,
                            seed=head_dim + num_heads)
    args = (case.q, case.k_cache, case.v_cache, case.block_tables, case.context_lens, case.scale)
    expect = naive_decode_attention(*args)
    torch.testing.assert_close(paged_decode_ref.paged_decode_attention(*args).double(), expect,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(paged_decode_ref.paged_decode_attention_per_head(*args).double(),
                               expect, atol=1e-5, rtol=1e-5)


def test_decode_reference_bf16_close_to_fp32():
    case = make_decode_case([300, 45], 16, 8, 128, 16, dtype=torch.bfloat16, seed=3)
    args = (case.q, case.k_cache, case.v_cache, case.block_tables, case.context_lens, case.scale)
    expect = naive_decode_attention(*args)
    out = paged_decode_ref.paged_decode_attention(*args)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expect, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size", ATTENTION_SHAPES)
def test_prefix_extend_reference_matches_naive_loop(num_heads, num_kv_heads, head_dim, block_size):
    # Fresh prefill, a prefix ending mid-block, a block-aligned prefix, a single new token.
    case = make_extend_case([0, block_size + 5, 2 * block_size, 9], [7, 12, 3, 1],
                            num_heads, num_kv_heads, head_dim, block_size, seed=head_dim + num_kv_heads)
    args = (case.q, case.k, case.v, case.k_cache, case.v_cache, case.block_tables,
            case.cu_seqlens_q, case.prefix_lens, case.scale)
    expect = naive_prefix_extend_attention(*args)
    out = prefix_extend_ref.prefix_extend_attention(*args, max_seqlen_q=case.max_seqlen_q)
    torch.testing.assert_close(out.double(), expect, atol=1e-5, rtol=1e-5)


def test_prefix_extend_equals_decode_for_one_new_token():
    case = make_extend_case([40, 17], [1, 1], 8, 2, 64, 16, seed=5)
    ext = prefix_extend_ref.prefix_extend_attention(
        case.q, case.k, case.v, case.k_cache, case.v_cache, case.block_tables,
        case.cu_seqlens_q, case.prefix_lens, case.scale)
    dec = paged_decode_ref.paged_decode_attention(
        case.q, case.k_cache, case.v_cache, case.block_tables, case.prefix_lens + 1, case.scale)
    torch.testing.assert_close(ext, dec, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------- rms_norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_hf_qwen3_exactly(dtype):
    hf = pytest.importorskip("transformers.models.qwen3_vl.modeling_qwen3_vl")
    x = torch.randn(9, 96).to(dtype)
    norm = hf.Qwen3VLTextRMSNorm(96, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96))
        expect = norm(x)
    assert torch.equal(rms_norm(x, norm.weight.detach(), 1e-6), expect)


def test_rms_norm_with_residual_adds_in_input_dtype():
    x = torch.randn(5, 64).to(torch.bfloat16)
    residual = torch.randn(5, 64).to(torch.bfloat16)
    weight = torch.randn(64).to(torch.bfloat16)
    out, new_residual = rms_norm(x, weight, 1e-6, residual=residual)
    assert new_residual.dtype == torch.bfloat16
    assert torch.equal(new_residual, x + residual)
    assert torch.equal(out, rms_norm(x + residual, weight, 1e-6))


# ---------------------------------------------------------------------------- rotary


def _naive_mrope_cos_sin(positions, inv_freq, section):
    half = inv_freq.shape[0]
    freqs = torch.empty(positions.shape[1], half, dtype=torch.float32)
    for j in range(half):
        axis = 1 if j % 3 == 1 and j < 3 * section[1] else 2 if j % 3 == 2 and j < 3 * section[2] else 0
        freqs[:, j] = positions[axis].float() * inv_freq[j]
    return freqs.cos(), freqs.sin()


def test_mrope_cos_sin_interleaves_sections():
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    positions = torch.randint(0, 500, (3, 11))
    section = [12, 10, 10]  # sums to D/2 = 32 like Qwen3-VL's [24, 20, 20] for D = 128
    cos, sin = mrope_cos_sin(positions, inv_freq, section)
    expect_cos, expect_sin = _naive_mrope_cos_sin(positions, inv_freq, section)
    assert cos.dtype == torch.float32 and cos.shape == (11, 32)
    assert torch.equal(cos, expect_cos) and torch.equal(sin, expect_sin)


def test_mrope_cos_sin_matches_hf_qwen3_vl():
    hf = pytest.importorskip("transformers.models.qwen3_vl.modeling_qwen3_vl")
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig

    config = Qwen3VLTextConfig(
        hidden_size=256, num_attention_heads=2, num_key_value_heads=1, head_dim=128,
        rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                         "mrope_section": [24, 20, 20], "mrope_interleaved": True},
    )
    rope = hf.Qwen3VLTextRotaryEmbedding(config)
    positions = torch.randint(0, 2000, (3, 1, 13))
    hf_cos, hf_sin = rope(torch.zeros(1, dtype=torch.float32), positions)
    cos, sin = mrope_cos_sin(positions[:, 0], rope.inv_freq, [24, 20, 20])
    torch.testing.assert_close(torch.cat([cos, cos], -1), hf_cos[0], atol=0, rtol=0)
    torch.testing.assert_close(torch.cat([sin, sin], -1), hf_sin[0], atol=0, rtol=0)


def test_mrope_text_positions_use_one_axis():
    inv_freq = torch.rand(32)
    pos = torch.arange(7)
    cos, sin = mrope_cos_sin(pos, inv_freq, [12, 10, 10])
    cos3, sin3 = mrope_cos_sin(pos.expand(3, -1), inv_freq, [12, 10, 10])
    assert torch.equal(cos, cos3) and torch.equal(sin, sin3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rotary_in_place_on_fused_qkv_views(dtype):
    n, hq, hkv, d = 6, 4, 2, 64
    qkv = torch.randn(n, (hq + 2 * hkv) * d).to(dtype)
    q = qkv[:, : hq * d].view(n, hq, d)  # strided views, as the engine slices them
    k = qkv[:, hq * d:(hq + hkv) * d].view(n, hkv, d)
    v_before = qkv[:, (hq + hkv) * d:].clone()
    angles = torch.rand(n, d // 2) * 10
    cos, sin = angles.cos(), angles.sin()

    def rotate(x):  # HF's rotate_half form in float32
        xf = x.float()
        rot = torch.cat((-xf[..., d // 2:], xf[..., : d // 2]), -1)
        c, s = torch.cat([cos, cos], -1)[:, None], torch.cat([sin, sin], -1)[:, None]
        return (xf * c + rot * s).to(dtype)

    expect_q, expect_k = rotate(q), rotate(k)
    apply_rotary_(q, k, cos, sin)
    assert torch.equal(q, expect_q) and torch.equal(k, expect_k)
    assert torch.equal(qkv[:, (hq + hkv) * d:], v_before)


# ---------------------------------------------------------------------------- silu_and_mul


def test_silu_and_mul():
    x = torch.randn(5, 2 * 48, dtype=torch.float64)
    expect = x[:, :48] * torch.sigmoid(x[:, :48]) * x[:, 48:]
    torch.testing.assert_close(silu_and_mul(x.float()).double(), expect, atol=1e-6, rtol=1e-6)
    xb = x.to(torch.bfloat16)
    assert torch.equal(silu_and_mul(xb), F.silu(xb[:, :48]) * xb[:, 48:])
