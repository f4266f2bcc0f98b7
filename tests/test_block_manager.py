"""Block manager and prefix cache, without a model: reuse rules, image-aware keys, invariants."""
import hypothesis.strategies as st
from hypothesis import given, settings

from engine.block_manager import BlockManager
from tests.helpers import FakeImage, make_seq

BS = 4


def run_prefill(bm, seq):
    """Admit with prefix matching and 'compute' the whole prompt, as the scheduler would."""
    hits = bm.match_prefix(seq)
    n = len(seq) - len(hits) * BS
    assert bm.can_admit(seq, hits, n)
    bm.admit(seq, hits)
    bm.append_slots(seq, n)
    seq.num_computed_tokens += n
    bm.commit(seq)
    return len(hits) * BS


def test_repeated_prompt_hits_all_full_blocks_but_the_last_token():
    bm = BlockManager(16, BS)
    a = make_seq("a", list(range(10)), BS)
    run_prefill(bm, a)
    bm.free(a)
    b = make_seq("b", list(range(10)), BS)
    assert run_prefill(bm, b) == 8  # 2 full blocks; block 3 is partial
    c = make_seq("c", list(range(8)), BS)  # exactly 2 blocks: the last token must be recomputed
    assert run_prefill(bm, c) == 4
    bm.check_invariants()


def test_shared_prefix_blocks_are_shared_not_copied():
    bm = BlockManager(16, BS)
    a = make_seq("a", list(range(12)), BS)
    run_prefill(bm, a)
    b = make_seq("b", list(range(8)) + [99, 98, 97], BS)
    assert run_prefill(bm, b) == 8
    assert a.block_table[:2] == b.block_table[:2]
    assert all(bm.ref_counts[x] == 2 for x in a.block_table[:2])
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 16
    bm.check_invariants()


def test_same_tokens_different_image_never_hit():
    bm = BlockManager(16, BS)
    toks = [1, 2, 7, 7, 7, 7, 7, 7, 3, 4, 5]
    a = make_seq("a", toks, BS, images=[FakeImage(2, 6, "img-A")])
    run_prefill(bm, a)
    b = make_seq("b", toks, BS, images=[FakeImage(2, 6, "img-B")])
    assert run_prefill(bm, b) == 0
    c = make_seq("c", toks, BS, images=[FakeImage(2, 6, "img-A")])
    assert run_prefill(bm, c) == 8


def test_image_shifted_within_block_does_not_hit():
    bm = BlockManager(16, BS)
    a = make_seq("a", [7] * 9, BS, images=[FakeImage(0, 6, "img")])
    run_prefill(bm, a)
    b = make_seq("b", [7] * 9, BS, images=[FakeImage(1, 6, "img")])
    assert run_prefill(bm, b) == 0


def test_generated_tokens_become_cacheable_for_follow_up():
    bm = BlockManager(16, BS)
    a = make_seq("a", list(range(6)), BS)
    run_prefill(bm, a)
    for t in (50, 51, 52):  # decode three tokens
        a.token_ids.append(t)
        bm.append_slots(a, 1)
        a.num_computed_tokens += 1
        bm.commit(a)
    a.token_ids.append(53)
    bm.free(a)
    follow = make_seq("f", list(range(6)) + [50, 51, 52, 53, 60, 61], BS)
    assert run_prefill(bm, follow) == 8


def test_lru_eviction_prefers_uncached_then_oldest_cached():
    bm = BlockManager(4, BS)
    a = make_seq("a", list(range(8)) + [100], BS)  # 2 full cached blocks + 1 partial
    run_prefill(bm, a)
    bm.free(a)
    assert bm.num_free_blocks == 4 and bm.num_cached_blocks == 2
    b = make_seq("b", [200, 201], BS)  # takes an uncached block: cache intact
    run_prefill(bm, b)
    assert bm.num_cached_blocks == 2
    c = make_seq("c", list(range(200, 213)), BS)  # needs all 4 blocks -> evicts both cached
    assert not bm.can_admit(c, [], len(c))
    bm.free(b)
    run_prefill(bm, c)
    d = make_seq("d", list(range(9)), BS)
    assert bm.match_prefix(d) == []
    bm.check_invariants()


ops = st.lists(
    st.tuples(st.sampled_from(["add", "grow", "free"]), st.integers(0, 5), st.integers(1, 9)),
    min_size=1, max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_random_operations_keep_invariants(operations):
    bm = BlockManager(12, BS)
    live = {}
    counter = 0
    for op, pick, n in operations:
        if op == "add":
            prefix = [pick % 3] * (pick % 3 + 1) * 4  # a few shared prefixes
            seq = make_seq(f"s{counter}", prefix + [counter + 1000] * n, BS)
            counter += 1
            hits = bm.match_prefix(seq)
            todo = len(seq) - len(hits) * BS
            if bm.can_admit(seq, hits, todo):
                bm.admit(seq, hits)
                bm.append_slots(seq, todo)
                seq.num_computed_tokens += todo
                bm.commit(seq)
                live[seq.request_id] = seq
        elif op == "grow" and live:
            seq = list(live.values())[pick % len(live)]
            if bm.can_append(seq, n):
                seq.token_ids.extend([7] * n)
                bm.append_slots(seq, n)
                seq.num_computed_tokens += n
                bm.commit(seq)
        elif op == "free" and live:
            seq = live.pop(list(live)[pick % len(live)])
            bm.free(seq)
        bm.check_invariants()
        owned = sum(len(s.block_table) for s in live.values())
        assert owned >= 12 - bm.num_free_blocks  # shared blocks count once in the pool
    for seq in live.values():
        bm.free(seq)
    assert bm.num_free_blocks == 12
    assert all(rc == 0 for rc in bm.ref_counts)
    bm.check_invariants()
