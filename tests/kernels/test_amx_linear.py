"""The AMX skinny GEMM (csrc/amx_linear.cpp): its kernel on emulated tiles on every CPU, against
a float64 loop and torch; on an AMX CPU also the real tiles, through the dispatcher."""
import pytest
import torch
import torch.nn.functional as F

from baton.kernels import cpu_isa
from tests.helpers import same_at_1_and_2_threads

pytestmark = pytest.mark.skipif(not cpu_isa.available(), reason="baton.kernels._native not built")


def _case(rows, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g).bfloat16()
    w = torch.randn(n, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16()
    return x, w, b


def _check(y, x, w, bias):
    """Products of bfloat16 values are exact in float32: y is the float64 product rounded once
    to bfloat16, up to float32 summation error."""
    want = x.double() @ w.double().T
    if bias is not None:
        want = want + bias.double()
    assert y.shape == want.shape and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), want.bfloat16().double(), rtol=8e-3, atol=2e-2)
    torch.testing.assert_close(y, F.linear(x, w, bias), rtol=1.6e-2, atol=3e-2)


# rows: one tile of input rows, partly or exactly full, and 2, 3 and 4 tiles (pairs of input
# tiles, and a lone last one). n: under one block of 16 weight rows (all by the plain loop),
# whole blocks (pairs and a lone last one), and a tail. k: under one tile of k (sums from the
# tail alone), whole tiles, and a tail.
@pytest.mark.parametrize("rows", [1, 4, 15, 16, 17, 33, 48, 64])
@pytest.mark.parametrize("n,k", [(9, 40), (16, 32), (48, 64), (47, 100), (80, 7), (33, 257)])
def test_emulated_tiles_match_float64(rows, n, k):
    from baton.kernels import _native

    x, w, b = _case(rows, n, k, seed=rows * 1009 + n * 31 + k)
    for bias in (None, b):
        _check(_native.skinny_linear_amx_emulated(x, w, bias), x, w, bias)


@pytest.mark.parametrize("rows", [5, 32])
def test_emulated_tiles_same_with_one_and_two_threads(rows):
    """300 weight rows: 18 blocks of 16, enough for both threads to claim chunks (each thread
    configures its own tiles: the emulator raises for a tile used before that), and a tail of 12."""
    from baton.kernels import _native

    x, w, b = _case(rows, 300, 200, seed=rows)
    _check(same_at_1_and_2_threads(_native.skinny_linear_amx_emulated, x, w, b), x, w, b)


def test_emulated_tiles_are_not_a_copy_of_the_avx_path():
    """Where the tiles sum, the order differs from the row tiles' (16 pairs per tile, then
    across tiles), so some outputs round differently: the emulated kernel is its own code."""
    from baton.kernels import _native

    x, w, b = _case(16, 256, 1024, seed=7)
    with cpu_isa.forced(cpu_isa.default()):
        row_path = _native.skinny_linear(x, w, b)
    emulated = _native.skinny_linear_amx_emulated(x, w, b)
    assert not torch.equal(emulated, row_path)
    _check(emulated, x, w, b)


def test_emulated_rejects_other_dtypes():
    from baton.kernels import _native

    with pytest.raises(ValueError, match="bfloat16"):
        _native.skinny_linear_amx_emulated(torch.randn(4, 32), torch.randn(16, 32).bfloat16())
    with pytest.raises(ValueError, match=r"need x \[M, K\]"):
        _native.skinny_linear_amx_emulated(torch.randn(4, 32).bfloat16(), torch.randn(16, 31).bfloat16())


needs_amx = pytest.mark.skipif("amx" not in cpu_isa.levels(), reason="this CPU has no AMX")


@needs_amx
@pytest.mark.parametrize("rows", [3, 4, 8, 17, 64, 65])
@pytest.mark.parametrize("n,k", [(300, 200), (47, 100), (2048, 2048)])
def test_real_tiles_through_the_dispatcher(rows, n, k):
    """3 and 65 rows stay on the avx512bf16 row tiles; 4-64 run on the tiles."""
    from baton.kernels import _native

    x, w, b = _case(rows, n, k, seed=rows + n)
    with cpu_isa.forced("amx"):
        assert cpu_isa.kernel_paths()["skinny_linear_bfloat16"] == "amx"
        y = _native.skinny_linear(x, w, b)
    _check(y, x, w, b)


def test_amx_is_opt_in():
    """An AMX CPU starts on avx512bf16; every other CPU on the best path it has."""
    want = "avx512bf16" if cpu_isa.detected() == "amx" else cpu_isa.detected()
    assert cpu_isa.default() == want


def _bench():
    import importlib
    import pathlib
    import sys

    root = str(pathlib.Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("bench.amx_check")


def test_amx_check_bench_without_amx_checks_the_emulated_tiles(capsys, tmp_path):
    import json
    import sys

    if "amx" in cpu_isa.levels():
        pytest.skip("this CPU has AMX: the bench times it instead")
    bench = _bench()
    out = tmp_path / "amx.json"
    old = sys.argv
    sys.argv = ["amx_check.py", "--json", str(out)]
    try:
        bench.main()
    finally:
        sys.argv = old
    got = json.loads(out.read_text())
    assert got["amx"] is False and got["emulated_error"] < 2e-2 and "CPU flags" in capsys.readouterr().out


def test_amx_check_bench_timing_branch_runs(monkeypatch, capsys):
    """The AMX branch on small shapes with the path switch stubbed (both columns run the
    default path here): catches a broken script before an AMX CPU's session spends time on it."""
    import contextlib
    import types

    bench = _bench()
    monkeypatch.setattr(bench, "SHAPES", {"o": (64, 64), "down": (48, 96)})
    monkeypatch.setattr(bench.cpu_isa, "forced", lambda level: contextlib.nullcontext())
    got = bench.time_rows(types.SimpleNamespace(rows=[1, 8], layers=2, repeats=2))
    assert got["amx"] is True and set(got["rows"]) == {1, 8}
    assert all(r["max_error"] < 2e-2 and r["amx_over_avx512bf16"] > 0 for r in got["rows"].values())
    assert "amx / avx512bf16" in capsys.readouterr().out
