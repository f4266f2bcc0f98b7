"""KV store, RMSNorm + residual, rotary (M-RoPE) and SiLU-and-mul at Qwen3-VL sizes.

Token counts: 8 (a decode batch) and 4096 (a prefill chunk). All are memory-bound; the
summary reports the bandwidth each achieves (and on GPU the fraction of HBM peak).
"""
import pytest
import torch

from kernel_bench import DEVICE, DTYPE, ON_GPU
from baton.kernels import get_ops

# model -> (hidden, intermediate, Hq, Hkv, head_dim)
MODELS = {"2B": (2048, 6144, 16, 8, 128), "8B": (4096, 12288, 32, 8, 128)}
TOKENS = (8, 4096)
BACKENDS = ["torch"] + (["triton"] if ON_GPU else [])
PARAMS = [(m, n) for m in MODELS for n in TOKENS]
IDS = [f"{m}-N{n}" for m, n in PARAMS]


def _elt():
    return torch.finfo(DTYPE).bits // 8


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model,num_tokens", PARAMS, ids=IDS)
def test_store_kv(model, num_tokens, backend, measure):
    _, _, _, num_kv_heads, head_dim = MODELS[model]
    block_size = 16
    num_blocks = (num_tokens + block_size - 1) // block_size + 8
    k_cache = torch.zeros(num_blocks, block_size, num_kv_heads, head_dim, device=DEVICE, dtype=DTYPE)
    v_cache = torch.zeros_like(k_cache)
    k = torch.randn(num_tokens, num_kv_heads, head_dim, device=DEVICE, dtype=DTYPE)
    v = torch.randn_like(k)
    slots = torch.randperm(num_blocks * block_size, device=DEVICE)[:num_tokens]
    moved = 2 * 2 * k.numel() * _elt()
    ops = get_ops(backend)
    measure(lambda: ops.store_kv(k, v, k_cache, v_cache, slots),
            group=f"store_kv {model} N={num_tokens}", name=backend, bytes_moved=moved,
            baseline=backend == "torch")


@pytest.mark.parametrize("backend", ["composition"] + BACKENDS)
@pytest.mark.parametrize("model,num_tokens", PARAMS, ids=IDS)
def test_rms_norm_residual(model, num_tokens, backend, measure):
    """Baseline: the plain torch composition; the torch backend runs the native kernel on CPU."""
    from baton.kernels import rms_norm_ref

    hidden = MODELS[model][0]
    x = torch.randn(num_tokens, hidden, device=DEVICE, dtype=DTYPE)
    residual = torch.randn_like(x)
    weight = torch.randn(hidden, device=DEVICE, dtype=DTYPE)
    moved = 4 * x.numel() * _elt()  # read x, residual; write out, new residual
    fn = rms_norm_ref.rms_norm if backend == "composition" else get_ops(backend).rms_norm
    name = {"composition": "torch composition", "torch": "torch backend (native on CPU)"}.get(backend, backend)
    measure(lambda: fn(x, weight, 1e-6, residual=residual),
            group=f"rms_norm+residual {model} N={num_tokens}", name=name, bytes_moved=moved,
            baseline=backend == "composition")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model,num_tokens", PARAMS, ids=IDS)
def test_apply_rotary(model, num_tokens, backend, measure):
    _, _, num_heads, num_kv_heads, head_dim = MODELS[model]
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, device=DEVICE, dtype=DTYPE)
    q = qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim:(num_heads + num_kv_heads) * head_dim].view(num_tokens, num_kv_heads, head_dim)
    ops = get_ops(backend)
    inv_freq = 1.0 / (5e6 ** (torch.arange(0, head_dim, 2, device=DEVICE, dtype=torch.float32) / head_dim))
    positions = torch.randint(0, 4096, (3, num_tokens), device=DEVICE)
    cos, sin = ops.mrope_cos_sin(positions, inv_freq, [24, 20, 20])
    moved = 2 * (q.numel() + k.numel()) * _elt() + 2 * cos.numel() * 4
    measure(lambda: ops.apply_rotary_(q, k, cos, sin),
            group=f"apply_rotary_ {model} N={num_tokens}", name=backend, bytes_moved=moved,
            baseline=backend == "torch")


@pytest.mark.parametrize("model,num_tokens", PARAMS, ids=IDS)
def test_mrope_cos_sin(model, num_tokens, measure):
    head_dim = MODELS[model][4]
    inv_freq = 1.0 / (5e6 ** (torch.arange(0, head_dim, 2, device=DEVICE, dtype=torch.float32) / head_dim))
    positions = torch.randint(0, 4096, (3, num_tokens), device=DEVICE)
    ops = get_ops("torch")
    measure(lambda: ops.mrope_cos_sin(positions, inv_freq, [24, 20, 20]),
            group=f"mrope_cos_sin {model} N={num_tokens}", name="torch (both backends)",
            bytes_moved=3 * num_tokens * 8 + 2 * num_tokens * head_dim // 2 * 4, baseline=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model,num_tokens", PARAMS, ids=IDS)
def test_silu_and_mul(model, num_tokens, backend, measure):
    inter = MODELS[model][1]
    x = torch.randn(num_tokens, 2 * inter, device=DEVICE, dtype=DTYPE)
    moved = 3 * num_tokens * inter * _elt()
    ops = get_ops(backend)
    measure(lambda: ops.silu_and_mul(x), group=f"silu_and_mul {model} N={num_tokens}",
            name=backend, bytes_moved=moved, baseline=backend == "torch")
