"""Block manager and prefix cache, without a model: reuse rules, image-aware keys, invariants.

FakeKV stands in for the KV pool: 'computing' position p of a sequence writes what its K/V
would depend on (every token and image identity up to p) into the slot, and copy_kv copies
slots. Whatever the cache serves must then equal what a from-scratch computation writes."""
import hypothesis.strategies as st
from hypothesis import given, settings

from baton.engine.block_manager import BlockManager, PrefixMatch
from tests.helpers import FakeImage, make_seq

BS = 4


def kv_content(seq, p):
    """What the K/V at position p depends on: the tokens and images of positions 0..p."""
    images = tuple((s.content_hash, s.offset) for s in seq.image_spans if s.offset <= p)
    return tuple(seq.token_ids[:p + 1]), images


class FakeKV:
    def __init__(self, num_blocks):
        self.slots = [[None] * BS for _ in range(num_blocks)]
        self.copies = []

    def copy(self, src, dst, n):
        assert src != dst
        self.copies.append((src, dst, n))
        self.slots[dst][:n] = self.slots[src][:n]

    def compute(self, seq, start, end):
        for p in range(start, end):
            self.slots[seq.block_table[p // BS]][p % BS] = kv_content(seq, p)

    def check(self, seq):
        for p in range(seq.num_computed_tokens):
            got = self.slots[seq.block_table[p // BS]][p % BS]
            assert got == kv_content(seq, p), f"{seq.request_id}: slot of position {p} holds other K/V"


def token_manager(num_blocks):
    """A block manager with token-granular reuse over a FakeKV."""
    kv = FakeKV(num_blocks)
    return BlockManager(num_blocks, BS, copy_kv=kv.copy), kv


def run_prefill(bm, seq, kv=None):
    """Admit with prefix matching and 'compute' the whole prompt, as the scheduler would;
    returns the number of prompt tokens the cache served."""
    hits = bm.match_prefix(seq)
    n = len(seq) - hits.num_tokens
    assert bm.can_admit(seq, hits, n)
    bm.admit(seq, hits)
    assert seq.num_computed_tokens == hits.num_tokens
    bm.append_slots(seq, n)
    if kv is not None:
        kv.check(seq)  # the served prefix is exactly what computing it would have written
        kv.compute(seq, seq.num_computed_tokens, len(seq))
    seq.num_computed_tokens += n
    bm.commit(seq)
    return hits.num_tokens


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
    assert not bm.can_admit(c, PrefixMatch(), len(c))
    bm.free(b)
    run_prefill(bm, c)
    d = make_seq("d", list(range(9)), BS)
    assert bm.match_prefix(d).num_tokens == 0
    bm.check_invariants()


def test_follow_up_reuses_a_finished_sequence_tail_token_by_token():
    bm, kv = token_manager(16)
    a = make_seq("a", list(range(10)), BS)  # 2 full blocks + a 2-token tail
    run_prefill(bm, a, kv)
    a_table = list(a.block_table)
    bm.free(a)
    b = make_seq("b", list(range(10)) + [60, 61, 62], BS)
    assert run_prefill(bm, b, kv) == 10  # 8 shared + 2 copied slots
    assert b.block_table[:2] == a_table[:2] and b.block_table[2] != a_table[2]
    assert len(kv.copies) == 1 and kv.copies[0][2] == 2
    bm.check_invariants()


def test_prompt_diverging_mid_block_copies_the_common_slots():
    """The multi-agent case: a later stage's prompt extends an earlier stage's prompt, whose
    block holds generated tokens after the shared ones."""
    bm, kv = token_manager(16)
    a = make_seq("a", list(range(12)), BS)
    run_prefill(bm, a, kv)
    b = make_seq("b", list(range(10)) + [99, 98, 97], BS)
    assert run_prefill(bm, b, kv) == 10
    assert b.block_table[:2] == a.block_table[:2]
    assert b.block_table[2] != a.block_table[2]  # copied, never shared: b writes into it
    kv.check(a)  # a's own block is untouched
    bm.check_invariants()


def test_partial_reuse_still_recomputes_the_last_token():
    bm, kv = token_manager(16)
    a = make_seq("a", list(range(10)), BS)
    run_prefill(bm, a, kv)
    bm.free(a)
    assert run_prefill(bm, make_seq("b", list(range(10)), BS), kv) == 9


def test_partial_reuse_respects_images_in_the_block():
    bm, kv = token_manager(16)
    toks = [1, 2, 3, 4, 5, 7, 7, 8, 9]
    a = make_seq("a", toks, BS, images=[FakeImage(5, 2, "img-A")])
    run_prefill(bm, a, kv)
    bm.free(a)
    b = make_seq("b", toks + [10], BS, images=[FakeImage(5, 2, "img-B")])
    assert run_prefill(bm, b, kv) == 4  # block 1 holds the other image: only block 0 serves
    bm.free(b)
    c = make_seq("c", toks + [10], BS, images=[FakeImage(5, 2, "img-A")])
    assert run_prefill(bm, c, kv) == 9


def test_full_pool_drops_the_partial_copy_instead_of_refusing():
    """When the copy's source is the only block that could be evicted, the scheduler admits
    with whole blocks only."""
    from baton.engine.scheduler import Scheduler

    bm, kv = token_manager(3)
    a = make_seq("a", list(range(10)), BS)
    run_prefill(bm, a, kv)
    bm.free(a)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    b = make_seq("b", list(range(9)) + [77, 78, 79], BS)
    sched.add(b)
    batch = sched.schedule()
    assert batch.seqs == [b] and b.num_computed_tokens == 8 and kv.copies == []
    bm.check_invariants()


ops = st.lists(
    st.tuples(st.sampled_from(["add", "grow", "free"]), st.integers(0, 5), st.integers(1, 9)),
    min_size=1, max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops, st.booleans())
def test_random_operations_keep_invariants(operations, token_granular):
    """Random admissions (shared prefixes that end mid-block), growth and frees: blocks are
    never lost or double-owned, and every computed slot holds its own sequence's K/V."""
    bm, kv = token_manager(12) if token_granular else (BlockManager(12, BS), FakeKV(12))
    live = {}
    counter = 0
    for op, pick, n in operations:
        if op == "add":
            prefix = [pick % 3] * ((pick % 3 + 1) * 3)  # a few shared prefixes, not block-aligned
            seq = make_seq(f"s{counter}", prefix + [50 + n % 2] * (n % 3) + [counter + 1000] * n, BS)
            counter += 1
            hits = bm.match_prefix(seq)
            todo = len(seq) - hits.num_tokens
            if bm.can_admit(seq, hits, todo):
                bm.admit(seq, hits)
                bm.append_slots(seq, todo)
                kv.check(seq)
                kv.compute(seq, seq.num_computed_tokens, len(seq))
                seq.num_computed_tokens += todo
                bm.commit(seq)
                live[seq.request_id] = seq
        elif op == "grow" and live:
            seq = list(live.values())[pick % len(live)]
            if bm.can_append(seq, n):
                seq.token_ids.extend([7] * n)
                bm.append_slots(seq, n)
                kv.compute(seq, seq.num_computed_tokens, len(seq))
                seq.num_computed_tokens += n
                bm.commit(seq)
        elif op == "free" and live:
            seq = live.pop(list(live)[pick % len(live)])
            bm.free(seq)
        bm.check_invariants()
        for seq in live.values():
            kv.check(seq)
        owned = sum(len(s.block_table) for s in live.values())
        assert owned >= 12 - bm.num_free_blocks  # shared blocks count once in the pool
    for seq in live.values():
        bm.free(seq)
    assert bm.num_free_blocks == 12
    assert all(rc == 0 for rc in bm.ref_counts)
    bm.check_invariants()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3), st.lists(st.integers(0, 2), min_size=1, max_size=BS),
                          st.sampled_from([(), (("img", 1),)])), min_size=1, max_size=40),
       st.lists(st.integers(0, 2), min_size=1, max_size=BS))
def test_best_partial_equals_a_scan_of_every_cached_block(operations, query):
    """The token trie behind best_partial against the obvious loop over the live keys."""
    from baton.engine.prefix_cache import BlockKey, HashPrefixCache

    cache, live = HashPrefixCache(), {}
    for block_id, (insert, parent, tokens, extras) in enumerate(operations):
        if insert:
            key = BlockKey(bytes([parent]), tuple(tokens), extras)
            cache.insert(key, block_id)
            if cache.holds(block_id):
                live[block_id] = key
        elif live:
            victim = list(live)[parent % len(live)]
            cache.evict(victim)
            del live[victim]
        for p in range(4):
            for extras_q in [(), (("img", 1),)]:
                def common(k):
                    n = 0
                    while n < min(len(k.tokens), len(query)) and k.tokens[n] == query[n]:
                        n += 1
                    return n

                depths = [common(k) for k in live.values() if k.parent == bytes([p]) and k.extras == extras_q]
                want = max(depths, default=0)
                got = cache.best_partial(bytes([p]), tuple(query), extras_q)
                if want == 0:
                    assert got is None
                else:
                    block_id_got, depth = got
                    assert depth == want and common(live[block_id_got]) == want
    for block_id in list(live):
        cache.evict(block_id)
    assert len(cache) == 0 and not cache._tries
