"""Native scoring ops (baton.kernels._native via baton.kernels.scoring) against plain-torch references.

Every correctness test runs on each device the build supports: CPU always, CUDA when torch
sees a GPU and the extension was built with CUDA.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from baton.errors import InvalidRequestError
from baton.kernels import _native
from baton.kernels.scoring import (
    BUILD_COMMAND,
    TokenStats,
    attention_scores,
    attention_scores_reference,
    select_tokens,
    select_tokens_reference,
    token_stats,
    token_stats_reference,
)

VOCAB = 151936  # Qwen3-VL
INF = float("inf")
NAN = float("nan")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and _native.with_cuda() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _random_logits(T, V, seed, scale=4.0):
    return torch.randn(T, V, generator=_gen(seed)) * scale


def _random_ids(T, V, seed):
    return torch.randint(0, V, (T,), generator=_gen(seed + 1))


def _assert_stats_close(got: TokenStats, want: TokenStats, device):
    # CUDA accumulates per thread in float32 with fast exp; the CPU sums blocks in float64.
    tol = 1e-5 if device == "cpu" else 1e-4
    assert isinstance(got, TokenStats)
    for name in TokenStats._fields:
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == torch.float32 and g.shape == w.shape, name
        torch.testing.assert_close(g.cpu(), w, rtol=tol, atol=tol, equal_nan=True, msg=name)


def _check_token_stats(logits, ids, device):
    got = token_stats(logits.to(device), ids.to(device))
    _assert_stats_close(got, token_stats_reference(logits, ids), device)
    return got


# --- token_stats --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_stats_matches_float64_reference_at_full_vocab(device, dtype):
    logits = _random_logits(5, VOCAB, seed=0).to(dtype)
    _check_token_stats(logits, _random_ids(5, VOCAB, 0), device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_stats_single_row(device, dtype):
    logits = _random_logits(1, VOCAB, seed=1).to(dtype)
    _check_token_stats(logits, _random_ids(1, VOCAB, 1), device)


@pytest.mark.parametrize("vocab", [1, 2, 15, 16, 17, 37, 2047, 2048, 2049, 4097, 10000])
def test_token_stats_vocab_sizes_off_the_block_grid(device, vocab):
    logits = _random_logits(3, vocab, seed=vocab)
    _check_token_stats(logits, _random_ids(3, vocab, vocab), device)


def test_token_stats_vocab_of_one_is_certain(device):
    st = token_stats(torch.tensor([[3.0], [-7.0]], device=device), torch.zeros(2, dtype=torch.long, device=device))
    for value, name in [(0.0, "entropy"), (1.0, "max_prob"), (1.0, "margin"), (0.0, "logprob")]:
        assert getattr(st, name).cpu().tolist() == [value, value], name


@pytest.mark.parametrize("position", [0, 7, 2048, VOCAB - 1])
def test_token_stats_one_finite_entry_in_a_row_of_minus_inf(device, position):
    logits = torch.full((2, VOCAB), -INF)
    logits[:, position] = torch.tensor([5.0, -1e4])
    ids = torch.tensor([position, (position + 1) % VOCAB])
    st = _check_token_stats(logits, ids, device)
    assert st.entropy.cpu().tolist() == [0.0, 0.0]  # exactly 0, not NaN
    assert st.max_prob.cpu().tolist() == [1.0, 1.0]
    assert st.margin.cpu().tolist() == [1.0, 1.0]
    assert st.logprob.cpu().tolist() == [0.0, -INF]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_stats_partially_masked_rows(device, dtype):
    logits = _random_logits(4, VOCAB, seed=2)
    mask = torch.rand(4, VOCAB, generator=_gen(3)) < 0.9  # as after top-k / top-p masking
    logits = logits.masked_fill(mask, -INF).to(dtype)
    ids = logits.float().argmax(-1)
    _check_token_stats(logits, ids, device)


def test_token_stats_leading_blocks_all_minus_inf(device):
    logits = _random_logits(2, VOCAB, seed=4)
    logits[:, :50000] = -INF
    _check_token_stats(logits, _random_ids(2, VOCAB, 4), device)


def test_token_stats_maximum_rising_through_the_row(device):
    # The running maximum moves in every block: exercises the online rescaling.
    ramp = torch.linspace(-30.0, 30.0, VOCAB)
    logits = torch.stack([ramp, ramp.flip(0), ramp + torch.randn(VOCAB, generator=_gen(5))])
    _check_token_stats(logits, _random_ids(3, VOCAB, 5), device)


def test_token_stats_peaked_and_large_magnitude_rows(device):
    logits = _random_logits(3, VOCAB, seed=6)
    logits[0, 1234] += 60.0  # max_prob ~ 1, entropy ~ 0
    logits[1] *= 2000.0  # |logits| ~ 1e4: exp would overflow without the running max
    logits[2] = logits[2] - 5e4
    ids = torch.tensor([1234, 99, 4321])
    _check_token_stats(logits, ids, device)


def test_token_stats_tied_maxima_have_zero_margin(device):
    logits = _random_logits(2, VOCAB, seed=7)
    logits[0, 10] = logits[0, VOCAB - 3] = 40.0
    logits[1] = 0.25  # uniform
    st = _check_token_stats(logits, torch.tensor([10, 0]), device)
    assert st.margin.cpu().tolist() == [0.0, 0.0]
    assert st.max_prob[1].item() == pytest.approx(1.0 / VOCAB, rel=1e-5)
    assert st.entropy[1].item() == pytest.approx(math.log(VOCAB), rel=1e-6)


@pytest.mark.parametrize("poison", [-INF, NAN, INF])
def test_token_stats_rows_without_a_distribution_are_nan(device, poison):
    logits = _random_logits(3, 4099, seed=8)
    if poison == -INF:
        logits[1] = -INF
    else:
        logits[1, 2500] = poison
    st = _check_token_stats(logits, _random_ids(3, 4099, 8), device)
    for name in TokenStats._fields:
        values = getattr(st, name).cpu()
        assert torch.isnan(values[1]), name
        assert torch.isfinite(values[[0, 2]]).all(), name  # other rows unaffected


def test_token_stats_accepts_strided_logits(device):
    base = _random_logits(VOCAB, 6, seed=9)  # [V, T]: the transpose is not contiguous
    logits = base.t()
    _check_token_stats(logits, _random_ids(6, VOCAB, 9), device)
    _check_token_stats(_random_logits(8, 3000, seed=10)[::2, 1:], _random_ids(4, 2999, 10), device)


def test_token_stats_empty_batch(device):
    st = token_stats(torch.empty(0, VOCAB, device=device), torch.empty(0, dtype=torch.long, device=device))
    assert all(getattr(st, n).shape == (0,) for n in TokenStats._fields)


def test_token_stats_same_result_with_one_thread():
    logits, ids = _random_logits(8, 20000, seed=11), _random_ids(8, 20000, 11)
    threads = torch.get_num_threads()
    parallel = token_stats(logits, ids)
    torch.set_num_threads(1)
    try:
        serial = token_stats(logits, ids)
    finally:
        torch.set_num_threads(threads)
    for name in TokenStats._fields:
        assert torch.equal(getattr(parallel, name), getattr(serial, name)), name


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_token_stats_allocates_no_logits_sized_temporaries():
    logits = _random_logits(256, VOCAB, seed=12)  # 155 MB
    ids = _random_ids(256, VOCAB, 12)
    token_stats(logits[:2], ids[:2])  # warm up threads and allocator
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    except OSError:
        pytest.skip("cannot reset the peak-RSS counter here")
    before = _rss_kib("VmRSS")
    token_stats(logits, ids)
    extra_bytes = (_rss_kib("VmHWM") - before) * 1024
    assert extra_bytes < logits.numel() * logits.element_size() / 8, extra_bytes


def _rss_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.parametrize(
    "logits, ids, message",
    [
        (torch.zeros(VOCAB), torch.zeros(1, dtype=torch.long), r"\[T, V\]"),
        (torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), r"\[T, V\]"),
        (torch.zeros(2, 8, dtype=torch.float16), torch.zeros(2, dtype=torch.long), "float32 or bfloat16"),
        (torch.zeros(2, 8, dtype=torch.float64), torch.zeros(2, dtype=torch.long), "float32 or bfloat16"),
        (torch.zeros(2, 0), torch.zeros(2, dtype=torch.long), "empty vocabulary"),
        (torch.zeros(2, 8), torch.zeros(3, dtype=torch.long), "token_ids must be"),
        (torch.zeros(2, 8), torch.zeros(2, 1, dtype=torch.long), "token_ids must be"),
        (torch.zeros(2, 8), torch.zeros(2, dtype=torch.int32), "int64"),
        (torch.zeros(2, 8), torch.tensor([0, 8]), r"\[0, 8\)"),
        (torch.zeros(2, 8), torch.tensor([-1, 0]), r"\[0, 8\)"),
        ([[0.0]], torch.zeros(1, dtype=torch.long), "torch.Tensor"),
    ],
)
def test_token_stats_rejects_invalid_input(logits, ids, message):
    with pytest.raises(InvalidRequestError, match=message) as info:
        token_stats(logits, ids)
    assert isinstance(info.value, ValueError)


# --- attention_scores ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", ["sum", "max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_attention_scores_match_float64_reference(device, reduce, dtype):
    attn = torch.softmax(torch.randn(4, 33, 1000, generator=_gen(20)), dim=-1).to(dtype)
    got = attention_scores(attn.to(device), reduce=reduce)
    assert got.dtype == torch.float32 and got.shape == (1000,)
    torch.testing.assert_close(got.cpu(), attention_scores_reference(attn, reduce), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keys", [1, 31, 255, 257, 4096])
def test_attention_scores_key_counts_off_the_strip_grid(device, keys):
    attn = torch.rand(3, 5, keys, generator=_gen(keys))
    for reduce in ("sum", "max"):
        got = attention_scores(attn.to(device), reduce)
        torch.testing.assert_close(got.cpu(), attention_scores_reference(attn, reduce), rtol=1e-5, atol=1e-6)


def test_attention_scores_default_is_sum_over_heads_and_queries(device):
    attn = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 9.0]]])  # [2, 2, 2]
    assert attention_scores(attn.to(device)).cpu().tolist() == [16.0, 21.0]
    assert attention_scores(attn.to(device), "max").cpu().tolist() == [7.0, 9.0]


def test_attention_scores_masked_scores_and_nan(device):
    attn = torch.randn(2, 3, 40, generator=_gen(21))
    attn[:, :, 5] = -INF  # a key no query may see
    attn[1, 2, 9] = NAN
    for reduce in ("sum", "max"):
        got = attention_scores(attn.to(device), reduce).cpu()
        want = attention_scores_reference(attn, reduce)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
        assert got[5] == -INF and torch.isnan(got[9])


def test_attention_scores_accepts_strided_input(device):
    attn = torch.rand(6, 4, 300, generator=_gen(22)).permute(1, 0, 2)  # [4, 6, 300] view
    torch.testing.assert_close(attention_scores(attn.to(device), "sum").cpu(), attention_scores_reference(attn, "sum"))


def test_attention_scores_no_keys(device):
    assert attention_scores(torch.empty(2, 3, 0, device=device)).shape == (0,)


@pytest.mark.parametrize(
    "attn, reduce, message",
    [
        (torch.rand(3, 4), "sum", r"\[H, Q, K\]"),
        (torch.ones(2, 3, 4, dtype=torch.long), "sum", "floating"),
        (torch.rand(2, 3, 4), "mean", "'sum' or 'max'"),
        (torch.rand(0, 3, 4), "max", "no heads or no queries"),
        (torch.rand(2, 0, 4), "sum", "no heads or no queries"),
    ],
)
def test_attention_scores_rejects_invalid_input(attn, reduce, message):
    with pytest.raises(InvalidRequestError, match=message):
        attention_scores(attn, reduce)


# --- select_tokens ------------------------------------------------------------------------------


def _check_selection(scores, budget, device, segment_ids=None, expand=False):
    got = select_tokens(
        scores.to(device), budget, None if segment_ids is None else segment_ids.to(device), expand
    )
    assert got.dtype == torch.int64 and got.device.type == device
    want = select_tokens_reference(scores, budget, segment_ids, expand)
    assert got.cpu().tolist() == want.tolist()
    return got.cpu()


@pytest.mark.parametrize("budget", [0, 1, 7, 512, 4095, 4096, 5000])
def test_select_tokens_matches_reference(device, budget):
    scores = torch.randn(4096, generator=_gen(30))
    got = _check_selection(scores, budget, device)
    assert len(got) == min(budget, 4096)


def test_select_tokens_ties_prefer_lower_indices(device):
    scores = torch.randint(0, 4, (3000,), generator=_gen(31)).float()  # heavy ties
    for budget in (1, 100, 999, 2000):
        _check_selection(scores, budget, device)
    assert select_tokens(torch.zeros(10, device=device), 3).cpu().tolist() == [0, 1, 2]
    assert select_tokens(torch.tensor([1.0, 5.0, 5.0, 2.0, 5.0], device=device), 2).cpu().tolist() == [1, 2]


def test_select_tokens_keeps_float64_resolution(device):
    # Distinct in float64, equal after rounding to float32: the order must come from float64.
    scores = 1.0 + torch.tensor([0.0, 3e-12, 1e-12, 2e-12], dtype=torch.float64)
    assert select_tokens(scores.to(device), 2).cpu().tolist() == [1, 3]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_select_tokens_half_precision_scores(device, dtype):
    scores = torch.randn(1000, generator=_gen(32)).to(dtype)
    _check_selection(scores, 250, device)


def test_select_tokens_infinite_scores(device):
    scores = torch.tensor([0.0, INF, -INF, 1.0, INF, -INF])
    assert select_tokens(scores.to(device), 3).cpu().tolist() == [1, 3, 4]
    assert select_tokens(scores.to(device), 5).cpu().tolist() == [0, 1, 2, 3, 4]


def test_select_tokens_empty_scores(device):
    assert select_tokens(torch.empty(0, device=device), 4).shape == (0,)


def _random_segments(n, seed, max_len=9):
    lengths = torch.randint(1, max_len + 1, (n,), generator=_gen(seed))
    ids = torch.repeat_interleave(torch.arange(n), lengths)[:n]
    return ids * 3 + 100  # ids need only be non-decreasing, not 0..S-1


@pytest.mark.parametrize("budget", [0, 1, 5, 100, 1000, 4096, 9999])
def test_select_tokens_whole_segments_match_reference(device, budget):
    scores = torch.randn(4096, generator=_gen(33))
    segments = _random_segments(4096, seed=34)
    got = _check_selection(scores, budget, device, segments, expand=True)
    assert len(got) <= budget
    chosen_ids = set(segments[got].tolist())
    assert len(got) == sum(int((segments == s).sum()) for s in chosen_ids)  # complete segments


def test_select_tokens_skips_a_segment_that_does_not_fit(device):
    #                      segment A (best 0.9)  B (best 0.8)  C (0.7)
    scores = torch.tensor([0.9, 0.1, 0.1, 0.8, 0.2, 0.7])
    segments = torch.tensor([0, 0, 0, 1, 1, 2])
    # budget 4: A fits (1 left), B does not fit and is skipped, C still fits.
    assert select_tokens(scores.to(device), 4, segments.to(device), True).cpu().tolist() == [0, 1, 2, 5]
    assert select_tokens(scores.to(device), 2, segments.to(device), True).cpu().tolist() == [3, 4]
    # Without expansion the segments are ignored.
    assert select_tokens(scores.to(device), 2, segments.to(device)).cpu().tolist() == [0, 3]


def test_select_tokens_segment_ties_rank_by_best_token_index(device):
    scores = torch.tensor([1.0, 3.0, 3.0, 1.0, 3.0])
    segments = torch.tensor([0, 0, 1, 1, 2], dtype=torch.int32)  # int32 is accepted
    # All three segments have best score 3.0; the best tokens are 1, 2, 4 in that order.
    assert select_tokens(scores.to(device), 3, segments.to(device), True).cpu().tolist() == [0, 1, 4]
    _check_selection(scores, 3, device, segments.long(), expand=True)


def test_select_tokens_heavy_ties_with_segments(device):
    scores = torch.randint(0, 3, (2000,), generator=_gen(35)).double()
    segments = _random_segments(2000, seed=36, max_len=30)
    for budget in (10, 333, 1500):
        _check_selection(scores, budget, device, segments, expand=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scores=torch.rand(2, 3), budget=1), r"scores must be \[N\]"),
        (dict(scores=torch.arange(5), budget=1), "floating"),
        (dict(scores=torch.rand(5), budget=-1), ">= 0"),
        (dict(scores=torch.rand(5), budget=2.5), "must be an int"),
        (dict(scores=torch.rand(5), budget=True), "must be an int"),
        (dict(scores=torch.tensor([1.0, NAN]), budget=1), "NaN"),
        (dict(scores=torch.rand(5), budget=1, expand_segments=True), "needs segment_ids"),
        (dict(scores=torch.rand(3), budget=1, segment_ids=torch.tensor([0, 1])), r"\[N\]"),
        (dict(scores=torch.rand(3), budget=1, segment_ids=torch.tensor([0.0, 1.0, 1.0])), "integers"),
        (dict(scores=torch.rand(3), budget=1, segment_ids=torch.tensor([0, 2, 1])), "non-decreasing"),
    ],
)
def test_select_tokens_rejects_invalid_input(kwargs, message):
    with pytest.raises(InvalidRequestError, match=message):
        select_tokens(**kwargs)


# --- packaging and dispatch ---------------------------------------------------------------------


def test_unsupported_device_is_rejected():
    meta = torch.empty(2, 8, device="meta")
    with pytest.raises(InvalidRequestError, match="unsupported device"):
        token_stats(meta, torch.zeros(2, dtype=torch.long, device="meta"))


def test_public_names_come_from_the_package():
    from baton import kernels

    assert kernels.token_stats is token_stats
    assert kernels.TokenStats is TokenStats
    assert kernels.select_tokens is select_tokens
    assert kernels.attention_scores is attention_scores


def test_missing_extension_is_an_import_error_naming_the_build_command():
    code = (
        "import sys\n"
        "sys.modules['baton.kernels._native'] = None  # as if the extension was never built\n"
        "try:\n"
        "    import baton.kernels.scoring\n"
        "except ImportError as exc:\n"
        "    print('IMPORT-ERROR:', exc)\n"
        "else:\n"
        "    print('imported without the extension')\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env)
    assert "IMPORT-ERROR:" in out.stdout, out.stdout + out.stderr
    assert BUILD_COMMAND in out.stdout
    assert BUILD_COMMAND == "pip install -e . --no-build-isolation"
