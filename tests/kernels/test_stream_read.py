"""The benches' read floor: stream_read_sum reads every byte of a tensor (its word sum against
numpy's, any dtype, odd sizes, 1-8 streams, 1 and 2 threads), rejects what it cannot read,
and bench.common.weights_read_time picks the fastest read it timed."""
import numpy as np
import pytest
import torch

from baton.kernels import cpu_isa

pytestmark = pytest.mark.skipif(not cpu_isa.available(), reason="baton.kernels._native not built")


def _word_sum(t: torch.Tensor) -> int:
    """Little-endian 32-bit words of t's bytes summed mod 2^32, plus any last 1-3 bytes."""
    raw = t.contiguous().view(torch.uint8).numpy().tobytes()
    whole = len(raw) // 4 * 4
    words = np.frombuffer(raw[:whole], dtype="<u4").astype(np.uint64)
    return int((int(words.sum()) + sum(raw[whole:])) % 2**32)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("streams", [1, 2, 4, 8])
@pytest.mark.parametrize("dtype,numel", [(torch.float32, 1), (torch.float32, 100_003), (torch.bfloat16, 777),
                                         (torch.bfloat16, 65_537), (torch.uint8, 1_000_003), (torch.int64, 4099)])
def test_stream_read_sum_reads_every_byte(threads, streams, dtype, numel):
    from baton.kernels import _native

    g = torch.Generator().manual_seed(numel)
    t = torch.randint(0, 255, (numel,), generator=g, dtype=torch.int64).to(dtype)
    if dtype.is_floating_point:
        t = torch.randn(numel, generator=g).to(dtype)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = _native.stream_read_sum(t, streams)
    finally:
        torch.set_num_threads(old)
    assert got == _word_sum(t)


def test_stream_read_sum_rejects_bad_arguments():
    from baton.kernels import _native

    with pytest.raises(ValueError, match="streams must be"):
        _native.stream_read_sum(torch.ones(8), 3)
    with pytest.raises(ValueError, match="contiguous"):
        _native.stream_read_sum(torch.ones(8, 8).T, 1)


def test_weights_read_time_picks_the_fastest_read(monkeypatch):
    from bench import common

    slow_calls = []
    reads = {"slow": lambda t: (slow_calls.append(1), torch.ones(20_000_000).sum()),
             "fast": lambda t: t.sum()}
    monkeypatch.setattr(common, "plain_reads", lambda: reads)
    seconds, name = common.weights_read_time([torch.ones(1000), torch.ones(10, 10).T], repeats=3)
    assert name == "fast" and 0 < seconds
    assert len(slow_calls) == 2 * 4  # both tensors, warm-up and 3 passes: every candidate ran
