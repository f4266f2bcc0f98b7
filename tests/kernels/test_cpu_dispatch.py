"""Every instruction-set path of the native CPU kernels this machine runs (forced down with
kernels.cpu_isa), against a float64 reference and the torch path; the refusal of a path the
CPU lacks; the paths shown by `baton info` and llm.stats()."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from baton.errors import InvalidRequestError
from baton.kernels import cpu_isa, paged_decode_cpu, paged_decode_ref, rms_norm_ref
from baton.kernels.testing import make_decode_case, naive_decode_attention
from tests.helpers import same_at_1_and_2_threads

pytestmark = pytest.mark.skipif(not cpu_isa.available(), reason="baton.kernels._native not built")
LEVELS = cpu_isa.levels()  # lowest first; generic everywhere, avx2 here, more on AVX-512 CPUs


@pytest.fixture(params=LEVELS)
def level(request):
    with cpu_isa.forced(request.param):
        assert cpu_isa.active() == request.param
        yield request.param


@pytest.fixture(params=[1, 2])
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


def _product64(x, w, b):
    y = x.double() @ w.double().T
    return y if b is None else y + b.double()


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 9, 12])
@pytest.mark.parametrize("n,k", [(1, 1), (13, 9), (29, 27), (37, 100), (70, 131), (33, 64)])
@pytest.mark.parametrize("kind", ["float32", "float32 x bf16 weight", "bfloat16"])
def test_skinny_linear_every_path(level, threads, rows, n, k, kind):
    """N not a multiple of 4, K not a multiple of 8/16/32 (27: one paired bf16 block, one
    8-wide step, a scalar tail): every tile and tail of every path, bf16 weights widened in
    registers (up to 5 column chunks: 15 rows on AVX2, 10 on the generic path) or once per
    block of rows (12 rows on the generic path)."""
    from baton.kernels import _native

    g = torch.Generator().manual_seed(rows * 7919 + n * 31 + k)
    x, w, b = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    if kind != "float32":
        w = w.bfloat16()
    if kind == "bfloat16":
        x, b = x.bfloat16(), b.bfloat16()
    for bias in (None, b):
        y = _native.skinny_linear(x, w, bias)
        assert y.shape == (rows, n) and y.dtype == x.dtype
        want = _product64(x, w, bias)
        if kind == "bfloat16":  # products of bf16 values are exact: only the final rounding differs
            torch.testing.assert_close(y.double(), want.bfloat16().double(), rtol=8e-3, atol=1e-2)
            torch.testing.assert_close(y, F.linear(x, w, bias), rtol=1.6e-2, atol=2e-2)
        else:
            torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5 * k ** 0.5)
            torch.testing.assert_close(y, F.linear(x, w.float(), bias), rtol=1e-5, atol=1e-5 * k ** 0.5)


@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("kind", ["float32", "bfloat16"])
def test_skinny_linear_row_chunks(level, rows, kind):
    """Products big enough that two threads claim several chunks of weight rows (132 rows
    each at N = 1030: at least 4 chunks a thread, csrc/row_chunks.h), each read as 4 runs of
    rows side by side; the last chunk has 106 rows (4 runs of 26 and 2 single rows), and one
    thread reads all 1030 rows as 4 runs of 257 and 2 single rows. Against float64, and bit
    for bit the same with 1 and 2 threads: which thread computes a row must not change it."""
    from baton.kernels import _native

    g = torch.Generator().manual_seed(rows)
    dt = getattr(torch, kind)
    x, w, b = (torch.randn(rows, 1000, generator=g).to(dt), torch.randn(1030, 1000, generator=g).to(dt),
               torch.randn(1030, generator=g).to(dt))
    y = same_at_1_and_2_threads(_native.skinny_linear, x, w, b)
    want = _product64(x, w, b)
    tol = dict(rtol=8e-3, atol=5e-2) if kind == "bfloat16" else dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(y.double(), want.to(dt).double() if kind == "bfloat16" else want, **tol)


@pytest.mark.parametrize("rows,k", [(16, 600), (24, 600), (33, 600), (40, 600), (40, 1300), (70, 1300)])
@pytest.mark.parametrize("kind", ["float32", "float32 x bf16 weight", "bfloat16"])
def test_skinny_linear_panels(level, rows, k, kind):
    """Enough input rows for the panel GEMM (a full panel: 16 rows on AVX2, 32 on AVX-512):
    a last panel over or under half full, 3 K blocks with a short last one (K = 600), chunks
    of weight rows with a tail that is not a whole tile (N = 101). At K = 1300 a thread's chunk
    of bfloat16 weight rows is 24 rows below 64 input rows (widened into about 192 KB) and 48
    from 64 on (csrc/skinny_linear.cpp, panel_chunk_rows). Against float64 and torch, and bit
    for bit the same with 1 and 2 threads."""
    from baton.kernels import _native

    g = torch.Generator().manual_seed(rows * 13 + len(kind) + k)
    x, w, b = torch.randn(rows, k, generator=g), torch.randn(101, k, generator=g), torch.randn(101, generator=g)
    if kind != "float32":
        w = w.bfloat16()
    if kind == "bfloat16":
        x, b = x.bfloat16(), b.bfloat16()
    y, want = same_at_1_and_2_threads(_native.skinny_linear, x, w, b), _product64(x, w, b)
    if kind == "bfloat16":
        torch.testing.assert_close(y.double(), want.bfloat16().double(), rtol=8e-3, atol=5e-2)
        torch.testing.assert_close(y, F.linear(x, w, b), rtol=1.6e-2, atol=5e-2)
    else:
        torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(y, F.linear(x, w.float(), b), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size", [(6, 2, 24, 5), (4, 4, 8, 3), (8, 1, 40, 16)])
def test_paged_decode_every_path(level, threads, dtype, num_heads, num_kv_heads, head_dim, block_size):
    """head_dim 8, 24, 40: not multiples of 16 (the AVX-512 tail); odd block sizes."""
    case = make_decode_case([1, 7, 23, 50], num_heads, num_kv_heads, head_dim, block_size, dtype=dtype,
                            seed=head_dim + block_size)
    args = (case.q, case.k_cache, case.v_cache, case.block_tables, case.context_lens, case.scale)
    assert paged_decode_cpu.uses_native(case.q, case.k_cache, case.v_cache)
    out = paged_decode_cpu.paged_decode_attention(*args)
    assert out.dtype == dtype
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out.double(), naive_decode_attention(*args), **tol)
    torch.testing.assert_close(out, paged_decode_ref.paged_decode_attention(*args), **tol)


def _rms64(x, w, eps, r):
    v = (x.double() + r.double()).to(x.dtype).double() if r is not None else x.double()
    return w.double() * (v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 13), (5, 100), (3, 257), (2, 4096)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_every_path(level, threads, dtype, shape, with_residual):
    from baton.kernels import _native

    g = torch.Generator().manual_seed(shape[1])
    x = torch.randn(*shape, generator=g).to(dtype)
    w = torch.randn(shape[1], generator=g).to(dtype)
    r = torch.randn(*shape, generator=g).to(dtype) if with_residual else None
    out, new_r = _native.rms_norm(x, w, 1e-6, r)
    want = rms_norm_ref.rms_norm(x, w, 1e-6, r)
    if with_residual:
        assert torch.equal(new_r, want[1])  # one rounding of an exact sum, in both
        want = want[0]
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=2e-2)
    torch.testing.assert_close(out, want, **tol)
    torch.testing.assert_close(out.double(), _rms64(x, w, 1e-6, r), **({"rtol": 1e-5, "atol": 1e-5}
                               if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 4e-2}))


def test_kernel_paths_follow_the_forced_level():
    for name in LEVELS:
        with cpu_isa.forced(name):
            paths = cpu_isa.kernel_paths()
            assert paths["skinny_linear_bfloat16"] == name
            assert paths["rms_norm"] == paths["paged_decode_attention"] == paths["skinny_linear_float32"] == (
                "avx512" if name in ("avx512bf16", "amx") else name)
    assert cpu_isa.active() == cpu_isa.default() or os.environ.get(cpu_isa.ENV)


def test_a_path_the_cpu_lacks_is_refused():
    with pytest.raises(InvalidRequestError, match="unknown CPU kernel path"):
        cpu_isa.set_level("sse9")
    missing = [name for name in cpu_isa.LEVELS if name not in LEVELS]
    if not missing:
        pytest.skip("this CPU runs every path")
    before = cpu_isa.active()
    with pytest.raises(InvalidRequestError, match="needs instructions this CPU lacks"):
        cpu_isa.set_level(missing[0])
    assert cpu_isa.active() == before  # unchanged


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_environment_variable_forces_a_lower_path_or_is_refused():
    got = _run("from baton.kernels import cpu_isa; print(cpu_isa.active())", BATON_CPU_ISA="generic")
    assert got.returncode == 0 and got.stdout.strip() == "generic", got.stderr
    missing = [name for name in cpu_isa.LEVELS if name not in LEVELS]
    if missing:
        got = _run("import baton.kernels.linear", BATON_CPU_ISA=missing[-1])
        assert got.returncode != 0
        assert f"BATON_CPU_ISA={missing[-1]}" in got.stderr and "this CPU runs" in got.stderr
        info = _run("from baton.engine.cli import main; main(['info'])", BATON_CPU_ISA=missing[-1])
        assert info.returncode == 0 and "refused" in info.stdout and "flags" in info.stdout  # still informs


def test_baton_info_reports_flags_paths_and_versions(tmp_path):
    got = _run("from baton.engine.cli import main; main(['info', '--json'])", BATON_CACHE_DIR=str(tmp_path))
    assert got.returncode == 0, got.stderr
    info = json.loads(got.stdout)
    assert info["isa_detected"] == LEVELS[-1]
    assert info["isa_active"] == info["isa_default"] == ("avx512bf16" if LEVELS[-1] == "amx" else LEVELS[-1])
    assert set(info["flags"]) >= {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}
    assert info["kernel_paths"]["skinny_linear_bfloat16"] == info["isa_default"]
    assert info["torch"] == torch.__version__ and info["routing"]["cache"].startswith(str(tmp_path))
    text = _run("from baton.engine.cli import main; main(['info'])", BATON_CACHE_DIR=str(tmp_path))
    assert "flags" in text.stdout and "oneDNN" in text.stdout and "AMX path: " in text.stdout
    assert ("runnable here, opt-in" if "amx" in LEVELS else "not runnable here") in text.stdout


def test_llm_stats_show_the_cpu_paths(tiny_llm_factory):
    from baton import SamplingParams

    llm = tiny_llm_factory()
    llm.generate("hello", SamplingParams(max_tokens=2, temperature=0))
    cpu = llm.stats()["cpu_kernels"]
    assert cpu["isa"] == cpu_isa.active() and cpu["kernel_paths"] == cpu_isa.kernel_paths()
    assert cpu["linear_routes"] and set(cpu["linear_routes"].values()) <= {"native", "torch"}
