"""The measured native-vs-torch routing of CPU linear layers (kernels.cpu_routing): the
on-disk cache survives corruption, staleness and concurrent writers; BATON_CPU_KERNELS wins."""
import json
import multiprocessing

import pytest
import torch
import torch.nn.functional as F

from baton.errors import InvalidRequestError
from baton.kernels import cpu_isa, cpu_routing, linear

pytestmark = pytest.mark.skipif(not linear.SKINNY_AVAILABLE, reason="baton.kernels._native not built")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory and measured routing; the in-process decisions forgotten."""
    monkeypatch.setenv("BATON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(cpu_routing.ENV_MODE, "auto")
    # any two timings count as agreeing, so a busy test machine still gets a kept decision
    monkeypatch.setattr(cpu_routing, "STABLE", 1e9)
    cpu_routing.reset()
    yield tmp_path / cpu_routing.FILE_NAME
    monkeypatch.undo()
    cpu_routing.reset()


def _case(rows=3, n=40, k=72, dtype=torch.float32):
    return torch.randn(rows, k).to(dtype), torch.randn(n, k).to(dtype)


def _name(x, w):
    return cpu_routing.entry_name(x.dtype, cpu_routing.bucket(x.shape[0]), w.shape[0], w.shape[1],
                                  torch.get_num_threads(), cpu_isa.active() or "none")


def _write(path, entries, header=None):
    path.write_text(json.dumps({"header": header or cpu_routing.header(), "entries": entries}))


def _no_measuring(monkeypatch):
    def fail(*args):
        raise AssertionError("measured although the cache had the answer")

    monkeypatch.setattr(cpu_routing, "measure", fail)


def test_first_use_measures_both_and_caches_the_faster(cache):
    x, w = _case(dtype=torch.bfloat16)
    linear.linear(x, w)
    entry = json.loads(cache.read_text())["entries"][_name(x, w)]
    assert entry["native_ms"] > 0 and entry["torch_ms"] > 0
    assert entry["path"] == ("native" if entry["native_ms"] <= entry["torch_ms"] else "torch")
    assert linear.uses_skinny(x, w) == (entry["path"] == "native")
    assert cpu_routing.decisions()[_name(x, w)] == entry["path"]


def test_noisy_timings_are_not_kept(cache, monkeypatch):
    """Neither stable nor decisive (a machine too busy to time): the static rule, nothing written."""
    monkeypatch.setattr(cpu_routing, "STABLE", -1.0)
    monkeypatch.setattr(cpu_routing, "DECISIVE", 1e9)
    monkeypatch.setattr(cpu_routing, "MEASURE_MAX_ROUNDS", 3)
    x, w = _case(rows=cpu_routing.STATIC_MAX_ROWS + 1)
    assert not linear.uses_skinny(x, w)  # the static rule: float32 past STATIC_MAX_ROWS is torch's
    x, w = _case(dtype=torch.bfloat16)
    assert linear.uses_skinny(x, w)
    assert not cache.exists()


@pytest.mark.parametrize("path", ["native", "torch"])
def test_the_cached_decision_routes_without_measuring(cache, monkeypatch, path):
    x, w = _case()
    _write(cache, {_name(x, w): {"path": path, "native_ms": 1.0, "torch_ms": 1.0}})
    _no_measuring(monkeypatch)
    assert linear.uses_skinny(x, w) == (path == "native")
    want = linear._native.skinny_linear(x, w) if path == "native" else F.linear(x, w)
    assert torch.equal(linear.linear(x, w), want)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"header": 1}', ""])
def test_a_corrupt_file_is_ignored_and_rewritten(cache, content):
    cache.write_text(content)
    x, w = _case()
    linear.linear(x, w)
    data = json.loads(cache.read_text())
    assert data["header"] == cpu_routing.header() and _name(x, w) in data["entries"]


@pytest.mark.parametrize("field,value", [("cpu", "another CPU"), ("torch", "0.0.1"), ("schema", -1)])
def test_a_stale_file_is_ignored_and_rewritten(cache, field, value):
    x, w = _case()
    stale = {**cpu_routing.header(), field: value}
    # a stale answer that would be wrong to trust: the bogus path value is never read
    _write(cache, {_name(x, w): {"path": "bogus"}, "left over": {"path": "torch"}}, header=stale)
    linear.linear(x, w)
    data = json.loads(cache.read_text())
    assert data["header"] == cpu_routing.header()
    assert "left over" not in data["entries"] and data["entries"][_name(x, w)]["path"] in ("native", "torch")


def _writer(cache_dir, index, rounds):
    import os

    os.environ["BATON_CACHE_DIR"] = cache_dir
    for i in range(rounds):
        cpu_routing._save({f"writer{index}|{i}": {"path": "native", "native_ms": 1.0, "torch_ms": 2.0}})


def test_concurrent_writers_leave_a_valid_file(cache):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(cache.parent), i, 40)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    data = json.loads(cache.read_text())  # whole, parseable JSON
    assert data["header"] == cpu_routing.header()
    entries = cpu_routing.read_entries(cache)
    assert entries and all(v["path"] == "native" for v in entries.values())
    # each writer merged what was on disk: the last write of every writer that wrote last survives
    assert any(f"writer{i}|39" in entries for i in range(4))
    assert not list(cache.parent.glob("*.tmp"))  # no temp files left behind


@pytest.mark.parametrize("mode", ["native", "torch"])
def test_the_environment_override_wins_over_the_cache(cache, monkeypatch, mode):
    x, w = _case(dtype=torch.bfloat16)
    other = "torch" if mode == "native" else "native"
    _write(cache, {_name(x, w): {"path": other, "native_ms": 1.0, "torch_ms": 1.0}})
    monkeypatch.setenv(cpu_routing.ENV_MODE, mode)
    cpu_routing.reset()
    _no_measuring(monkeypatch)
    assert linear.uses_skinny(x, w) == (mode == "native")
    want = linear._native.skinny_linear(x, w) if mode == "native" else F.linear(x, w)
    assert torch.equal(linear.linear(x, w), want)


def test_static_mode_is_the_fixed_rule(cache, monkeypatch):
    monkeypatch.setenv(cpu_routing.ENV_MODE, "static")
    cpu_routing.reset()
    _no_measuring(monkeypatch)
    w = torch.randn(8, 16)
    assert linear.uses_skinny(torch.randn(cpu_routing.STATIC_MAX_ROWS, 16), w)
    assert not linear.uses_skinny(torch.randn(cpu_routing.STATIC_MAX_ROWS + 1, 16), w)
    assert linear.uses_skinny(torch.randn(1000, 16).bfloat16(), w.bfloat16())
    assert not cache.exists()


def test_a_bad_mode_is_refused(cache, monkeypatch):
    monkeypatch.setenv(cpu_routing.ENV_MODE, "fastest")
    cpu_routing.reset()
    with pytest.raises(InvalidRequestError, match="BATON_CPU_KERNELS"):
        linear.linear(*_case())


def test_shape_classes(cache):
    assert [cpu_routing.bucket(r) for r in (1, 2, 3, 4, 5, 100, 129, 1024, 5000)] == [1, 2, 4, 4, 8, 128, 256, 1024, 1024]


def test_measuring_leaves_no_eviction_buffer_resident():
    """The engine has glibc keep freed memory (host_allocator); the measurement's 64+ MB
    eviction buffer must still go back to the OS, or every measured shape class could leave
    that much resident."""
    from baton.engine.host_allocator import release_free_memory, tune_host_allocator

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))

    if not tune_host_allocator():
        pytest.skip("glibc malloc tuning unavailable")
    w = torch.randn(64, 64)
    release_free_memory()
    before = rss_mb()
    for rows in (1, 2, 3):
        cpu_routing.measure(torch.float32, rows, w, None)
    assert rss_mb() - before < cpu_routing.EVICT_MIN_BYTES / 2 ** 20 / 2
