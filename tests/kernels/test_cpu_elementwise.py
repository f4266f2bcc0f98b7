"""The native CPU rotary and KV store (csrc/cpu_elementwise.cpp) against the
plain-torch references (which the parity tests tie to transformers) and float64 formulas."""
import pytest
import torch

from baton.kernels import kv_store_cpu, kv_store_ref, rotary_cpu, rotary_ref
from baton.kernels.registry import get_ops

pytestmark = pytest.mark.skipif(not (rotary_cpu.NATIVE_AVAILABLE and kv_store_cpu.NATIVE_AVAILABLE),
                                reason="baton.kernels._native not built")
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(params=[1, 2])
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


def test_the_torch_backend_uses_them():
    ops = get_ops("torch")
    assert ops.apply_rotary_ is rotary_cpu.apply_rotary_
    assert ops.store_kv is kv_store_cpu.store_kv


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,hq,hkv,d", [(1, 16, 8, 128), (7, 3, 1, 10), (33, 4, 2, 64)])
def test_rotary_matches_the_reference_bit_for_bit(threads, dtype, n, hq, hkv, d):
    """Strided q/k views of one fused qkv buffer, as the decoder passes them."""
    g = torch.Generator().manual_seed(n * d)
    qkv = torch.randn(n, (hq + 2 * hkv) * d, generator=g).to(dtype)
    pos = torch.randint(0, 5000, (3, n), generator=g)
    cos, sin = rotary_ref.mrope_cos_sin(pos, 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d)), [d // 6, d // 6, d // 6])
    got, want = qkv.clone(), qkv.clone()
    for buf, fn in ((got, rotary_cpu.apply_rotary_), (want, rotary_ref.apply_rotary_)):
        q, k, _ = buf.split([hq * d, hkv * d, hkv * d], dim=-1)
        q, k = q.view(n, hq, d), k.view(n, hkv, d)
        if fn is rotary_cpu.apply_rotary_:
            assert rotary_cpu.uses_native(q, k, cos, sin)
        fn(q, k, cos, sin)
    assert torch.equal(got, want)
    # and against the rotation in float64 (v untouched)
    x = qkv[:, : (hq + hkv) * d].double().view(n, hq + hkv, d)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    c, s = cos.double()[:, None], sin.double()[:, None]
    ref = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).view(n, -1)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(got[:, : (hq + hkv) * d].double(), ref, **tol)
    assert torch.equal(got[:, (hq + hkv) * d:], qkv[:, (hq + hkv) * d:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_store_kv_matches_the_reference(threads, dtype):
    g = torch.Generator().manual_seed(0)
    blocks, block_size, hkv, d = 6, 4, 2, 24
    k_cache = torch.randn(blocks, block_size, hkv, d, generator=g).to(dtype)
    v_cache = torch.randn(blocks, block_size, hkv, d, generator=g).to(dtype)
    kv = torch.randn(5, 2 * hkv * d, generator=g).to(dtype)
    k, v = (t.view(5, hkv, d) for t in kv.split([hkv * d, hkv * d], dim=-1))  # strided views
    slots = torch.tensor([3, -1, 17, 0, 23])
    got, want = (k_cache.clone(), v_cache.clone()), (k_cache.clone(), v_cache.clone())
    kv_store_cpu.store_kv(k, v, *got, slots)
    kv_store_ref.store_kv(k, v, *want, slots)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(got[0].view(-1, hkv, d)[17], k[2]) and torch.equal(got[1].view(-1, hkv, d)[0], v[3])


def test_bad_arguments_raise_value_errors():
    from baton.kernels import _native

    cache = torch.zeros(2, 4, 1, 8)
    with pytest.raises(ValueError, match="past the cache"):
        _native.store_kv(torch.ones(1, 1, 8), torch.ones(1, 1, 8), cache, cache.clone(), torch.tensor([8]))
    with pytest.raises(ValueError, match="k and v must be"):
        _native.store_kv(torch.ones(1, 2, 8), torch.ones(1, 2, 8), cache, cache.clone(), torch.tensor([0]))
    with pytest.raises(ValueError, match="contiguous last dimension"):
        _native.apply_rotary_(torch.ones(2, 8, 3).transpose(1, 2), torch.ones(2, 1, 8), torch.ones(2, 4), torch.ones(2, 4))
