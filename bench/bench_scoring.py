"""Native scoring ops vs the plain-torch composition, on this machine's CPU (pytest-benchmark).

    python -m pytest bench/bench_scoring.py

Fused `token_stats` vs `token_stats_reference(..., dtype=torch.float32)` (log_softmax, exp,
entropy, topk, gather: what one would write in torch) on [1024, 151936] logits in float32 and
bfloat16, and `select_tokens` on 4096 scores. pytest-benchmark's table lists the timings (its
parenthesised numbers are ratios to the fastest in each group); a summary at the end prints the
speed-up of each op beside the peak extra memory of each implementation: peak resident memory
during one call minus resident memory before it, read from /proc (Linux; "n/a" elsewhere).
BATON_BENCH_ROWS overrides the 1024 rows for a quick run.
"""
import gc
import os
from pathlib import Path

import pytest
import torch

from baton.kernels.scoring import (
    select_tokens,
    select_tokens_reference,
    token_stats,
    token_stats_reference,
)

VOCAB = 151936
ROWS = int(os.environ.get("BATON_BENCH_ROWS", "1024"))
SELECT_TOKENS = 4096
SELECT_BUDGET = 512

_RESULTS = {}  # (group, impl) -> {"seconds": float | None, "peak_mib": float | None}


def _proc_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_extra_mib(fn):
    """Peak resident memory of one fn() call above what was resident before it, in MiB."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = _proc_kib("VmRSS")
    except (OSError, KeyError):
        return None
    fn()
    return (_proc_kib("VmHWM") - before) / 1024


class _Summary:
    def pytest_terminal_summary(self, terminalreporter):
        if not _RESULTS:
            return
        tr = terminalreporter
        tr.section("scoring ops: native vs torch")
        tr.write_line(f"threads: {torch.get_num_threads()}, logits rows: {ROWS}, vocab: {VOCAB}")
        header = f"{'op':<38}{'native ms':>11}{'torch ms':>11}{'speed-up':>10}{'native MiB':>12}{'torch MiB':>11}"
        tr.write_line(header)
        for group in sorted({g for g, _ in _RESULTS}):
            native = _RESULTS.get((group, "native"), {})
            ref = _RESULTS.get((group, "torch"), {})
            ratio = (
                f"{ref['seconds'] / native['seconds']:.1f}x"
                if native.get("seconds") and ref.get("seconds")
                else "n/a"
            )
            tr.write_line(
                f"{group:<38}{_fmt(_ms(native), '.3f'):>11}{_fmt(_ms(ref), '.3f'):>11}{ratio:>10}"
                f"{_fmt(native.get('peak_mib'), '.2f'):>12}{_fmt(ref.get('peak_mib'), '.2f'):>11}"
            )
        tr.write_line("times: minimum over rounds; MiB: peak resident memory above the start of one call")


def _ms(result):
    return None if result.get("seconds") is None else result["seconds"] * 1e3


def _fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    plugin = _Summary()
    request.config.pluginmanager.register(plugin, "baton-bench-scoring-summary")
    yield
    # Stays registered: pytest_terminal_summary runs after the module finishes.


@pytest.fixture(scope="module")
def logits_f32():
    return torch.randn(ROWS, VOCAB, generator=torch.Generator().manual_seed(0)) * 4


@pytest.fixture(scope="module")
def token_ids():
    return torch.randint(0, VOCAB, (ROWS,), generator=torch.Generator().manual_seed(1))


def _record(benchmark, group, impl, fn):
    peak = peak_extra_mib(fn)
    stats = getattr(benchmark, "stats", None)
    seconds = stats.stats.min if stats is not None else None
    benchmark.extra_info["peak_extra_mib"] = peak
    _RESULTS[(group, impl)] = {"seconds": seconds, "peak_mib": peak}


@pytest.mark.parametrize("impl", ["native", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_token_stats(benchmark, logits_f32, token_ids, dtype, impl):
    logits = logits_f32 if dtype == torch.float32 else logits_f32.to(dtype)
    if impl == "native":
        fn = lambda: token_stats(logits, token_ids)  # noqa: E731
        rounds, warmup = 5, 1
    else:
        fn = lambda: token_stats_reference(logits, token_ids, dtype=torch.float32)  # noqa: E731
        rounds, warmup = 3, 0
    group = f"token_stats [{ROWS}, {VOCAB}] {str(dtype).split('.')[-1]}"
    benchmark.group = group
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)
    _record(benchmark, group, impl, fn)


@pytest.mark.parametrize("impl", ["native", "torch"])
def test_select_tokens(benchmark, impl):
    scores = torch.randn(SELECT_TOKENS, generator=torch.Generator().manual_seed(2))
    if impl == "native":
        fn = lambda: select_tokens(scores, SELECT_BUDGET)  # noqa: E731
    else:  # same contract in torch: stable sort gives lower index first on ties
        fn = lambda: torch.sort(  # noqa: E731
            torch.sort(scores, descending=True, stable=True).indices[:SELECT_BUDGET]
        ).values
    group = f"select_tokens {SELECT_TOKENS} -> {SELECT_BUDGET}"
    benchmark.group = group
    benchmark.pedantic(fn, rounds=200, iterations=10, warmup_rounds=1)
    _record(benchmark, group, impl, fn)


@pytest.mark.parametrize("impl", ["native", "torch"])
def test_select_whole_segments(benchmark, impl):
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(SELECT_TOKENS, generator=gen)
    lengths = torch.randint(1, 12, (SELECT_TOKENS,), generator=gen)
    segments = torch.repeat_interleave(torch.arange(SELECT_TOKENS), lengths)[:SELECT_TOKENS]
    if impl == "native":
        fn = lambda: select_tokens(scores, SELECT_BUDGET, segments, expand_segments=True)  # noqa: E731
        rounds, iterations = 200, 10
    else:  # the reference: a stable torch sort, then the greedy walk in Python
        fn = lambda: select_tokens_reference(scores, SELECT_BUDGET, segments, True)  # noqa: E731
        rounds, iterations = 20, 1
    group = f"select_tokens segments {SELECT_TOKENS} -> {SELECT_BUDGET}"
    benchmark.group = group
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)
    _record(benchmark, group, impl, fn)
