"""The entropy-stream selector against a plain per-chunk reference, and its incremental form
against the whole-sequence one."""
import random

import pytest

from baton import InvalidRequestError
from baton.engine.stream_selector import ChunkCommitter, stream_select


def reference(entropy, n, budget, max_tokens, chunk):
    """Per chunk: the q highest entropies, earlier index on ties, kept in order."""
    if budget is None:
        frac, cap = 1.0, None
    elif isinstance(budget, float):
        frac, cap = budget, None
    else:
        frac, cap = min(1.0, budget / max_tokens), budget
    kept = []
    for start in range(0, n, chunk):
        idx = list(range(start, min(start + chunk, n)))
        q = len(idx) if frac >= 1 else max(1, round(frac * len(idx)))
        ranked = sorted(idx, key=lambda i: (-entropy[i], i))[:q]
        for i in sorted(ranked):
            if cap is None or len(kept) < cap:
                kept.append(i)
    return kept


@pytest.mark.parametrize("budget", [None, 0.25, 0.5, 1.0, 3, 10, 0])
@pytest.mark.parametrize("n,chunk", [(0, 4), (1, 4), (23, 4), (24, 8), (40, 16)])
def test_stream_select_matches_reference(budget, n, chunk):
    rng = random.Random(n * 31 + chunk)
    entropy = [round(rng.random(), 1) for _ in range(n + 3)]  # rounded: ties happen
    assert stream_select(entropy, n, budget, 24, chunk) == reference(entropy, n, budget, 24, chunk)


@pytest.mark.parametrize("holdback", [0, 3, 8])
def test_incremental_commits_equal_the_whole_selection(holdback):
    rng = random.Random(holdback)
    entropy = [rng.random() for _ in range(37)]
    c = ChunkCommitter(0.5, 40, 5, holdback)
    seen, t = [], 0
    while t < len(entropy):
        t = min(len(entropy), t + rng.randint(1, 4))
        got = c.feed(entropy[:t])
        assert all(i + holdback < t for i in got)  # decided only past the holdback
        seen += got
    seen += c.feed(entropy, final_len=len(entropy))
    assert seen == stream_select(entropy, len(entropy), 0.5, 40, 5)


def test_stream_select_needs_stats():
    with pytest.raises(InvalidRequestError):
        stream_select([0.1], 3, None, 8)
    with pytest.raises(InvalidRequestError):
        stream_select([0.1] * 3, 3, 1.5, 8)
