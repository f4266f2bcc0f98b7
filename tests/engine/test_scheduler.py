"""Scheduler tests without a model: token budget, chunked prefill, admission order, the
extend/decode order of a batch, preemption, prefix-cache hits, and finish().

`run_step` plays the engine's part of a step by hand: every scheduled sequence computes its
tokens (num_computed_tokens += n), the block manager registers its full blocks, and a sequence
whose computed tokens reach its length gets one fake generated token; it finishes after
params.max_tokens of them. Expectations are plain arithmetic written in each test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from baton.engine.block_manager import BlockManager
from baton.engine.scheduler import Scheduler
from baton.engine.sequence import SequenceStatus
from tests.helpers import make_seq

BS = 4
GEN = 90_000  # fake generated tokens: GEN + i for the i-th output token; prompts stay below


def fake_token(seq) -> int:
    return GEN + seq.num_output_tokens


def expected_output(num_tokens: int) -> list[int]:
    return [GEN + i for i in range(num_tokens)]


@dataclass
class Step:
    chunks: dict = field(default_factory=dict)  # request_id -> (start, n), in batch order
    finished: list = field(default_factory=list)  # request ids finished in this step
    num_tokens: int = 0


def run_step(sched: Scheduler, bm: BlockManager) -> Step:
    """One engine step without a model (schedule, compute, commit, sample, finish)."""
    batch = sched.schedule()
    assert len(batch.seqs) == len(batch.num_new_tokens)
    step = Step(num_tokens=sum(batch.num_new_tokens))
    for seq, n in zip(batch.seqs, batch.num_new_tokens):
        assert seq.request_id not in step.chunks, f"{seq.request_id} scheduled twice in one step"
        step.chunks[seq.request_id] = (seq.num_computed_tokens, n)
        seq.num_computed_tokens += n
    for seq in batch.seqs:
        bm.commit(seq)
    for seq in batch.seqs:
        if seq.num_computed_tokens == len(seq):
            seq.token_ids.append(fake_token(seq))
            if seq.num_output_tokens >= seq.params.max_tokens:
                sched.finish(seq)
                step.finished.append(seq.request_id)
    return step


def make(num_blocks=64, budget=64, max_num_seqs=16, **bm_kwargs):
    bm = BlockManager(num_blocks, BS, **bm_kwargs)
    return Scheduler(bm, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget), bm


def prompt(start: int, length: int) -> list[int]:
    return list(range(start, start + length))


def run_to_completion(sched, bm, max_steps=1000) -> list[Step]:
    steps = []
    while sched.has_work():
        steps.append(run_step(sched, bm))
        assert len(steps) < max_steps, "no progress"
    return steps


def assert_pool_fully_free(bm):
    bm.check_invariants()
    assert bm.num_free_blocks == bm.num_blocks
    assert all(rc == 0 for rc in bm.ref_counts)


# -- token budget and chunked prefill ------------------------------------------------------


def test_long_prompt_is_chunked_to_the_budget_and_chunks_cover_it_once_in_order():
    sched, bm = make(budget=8)
    seq = make_seq("a", prompt(1, 23), BS, max_tokens=3)
    sched.add(seq)
    steps = run_to_completion(sched, bm)
    # 23 prompt tokens in chunks of 8, then one decode per generated token but the last
    assert [s.chunks["a"] for s in steps] == [(0, 8), (8, 8), (16, 7), (23, 1), (24, 1)]
    covered = [p for s in steps for p in range(s.chunks["a"][0], sum(s.chunks["a"]))]
    assert covered == list(range(23 + 3 - 1))
    assert seq.token_ids == prompt(1, 23) + expected_output(3)
    assert_pool_fully_free(bm)


def test_token_budget_is_never_exceeded_and_filled_by_a_chunk_of_the_next_prompt():
    sched, bm = make(budget=7)
    seqs = [make_seq(r, prompt(100 * i, 5), BS, max_tokens=2) for i, r in enumerate("abc")]
    for s in seqs:
        sched.add(s)
    steps = run_to_completion(sched, bm)
    assert all(s.num_tokens <= 7 for s in steps)
    # step 1: a's whole prompt (5) and the first 2 tokens of b's
    assert steps[0].chunks == {"a": (0, 5), "b": (0, 2)}
    # step 2: a decodes; b's remaining 3; c gets what is left (7 - 1 - 3 = 3)
    assert steps[1].chunks == {"a": (5, 1), "b": (2, 3), "c": (0, 3)}
    for i, s in enumerate(seqs):
        assert s.token_ids == prompt(100 * i, 5) + expected_output(2)
    assert_pool_fully_free(bm)


# -- ordering ----------------------------------------------------------------------------


def test_running_sequences_are_scheduled_before_waiting_ones():
    sched, bm = make(budget=6)
    a = make_seq("a", prompt(1, 10), BS, max_tokens=1)
    sched.add(a)
    assert run_step(sched, bm).chunks == {"a": (0, 6)}
    b = make_seq("b", prompt(500, 3), BS, max_tokens=1)
    sched.add(b)
    # a, already running, gets the rest of its prompt first; b only what is left
    assert run_step(sched, bm).chunks == {"a": (6, 4), "b": (0, 2)}


def test_running_sequence_consuming_the_whole_budget_keeps_waiting_ones_out():
    sched, bm = make(budget=4)
    a = make_seq("a", prompt(1, 12), BS, max_tokens=1)
    sched.add(a)
    run_step(sched, bm)
    b = make_seq("b", prompt(500, 2), BS, max_tokens=1)
    sched.add(b)
    assert run_step(sched, bm).chunks == {"a": (4, 4)}
    assert list(sched.waiting) == [b] and b.status == SequenceStatus.WAITING


def test_waiting_sequences_are_admitted_in_arrival_order():
    sched, bm = make(budget=7)
    seqs = [make_seq(r, prompt(100 * i, 3), BS, max_tokens=1) for i, r in enumerate("abcd")]
    for s in seqs:
        sched.add(s)
    assert run_step(sched, bm).chunks == {"a": (0, 3), "b": (0, 3), "c": (0, 1)}
    assert list(sched.waiting) == [seqs[3]]
    assert run_step(sched, bm).chunks == {"c": (1, 2), "d": (0, 3)}


def test_a_later_request_does_not_jump_a_head_that_does_not_fit():
    sched, bm = make(num_blocks=6, budget=64, enable_prefix_caching=False)
    a = make_seq("a", prompt(1, 12), BS, max_tokens=4)   # 3 blocks
    b = make_seq("b", prompt(100, 16), BS, max_tokens=1)  # 4 blocks: only 3 left
    c = make_seq("c", prompt(200, 2), BS, max_tokens=1)   # 1 block would fit
    for s in (a, b, c):
        sched.add(s)
    assert run_step(sched, bm).chunks == {"a": (0, 12)}
    assert list(sched.waiting) == [b, c]


def test_max_num_seqs_caps_the_running_set():
    sched, bm = make(budget=64, max_num_seqs=2)
    seqs = [make_seq(r, prompt(100 * i, 4), BS, max_tokens=2) for i, r in enumerate("abc")]
    for s in seqs:
        sched.add(s)
    steps = []
    while sched.has_work():
        steps.append(run_step(sched, bm))
        assert len(sched.running) <= 2
    assert steps[0].chunks == {"a": (0, 4), "b": (0, 4)}
    assert steps[1].chunks == {"a": (4, 1), "b": (4, 1)}  # a and b finish here
    assert steps[2].chunks == {"c": (0, 4)}
    assert_pool_fully_free(bm)


def test_extends_come_before_one_token_steps_in_a_batch():
    sched, bm = make(budget=64)
    a = make_seq("a", prompt(1, 2), BS, max_tokens=5)
    b = make_seq("b", prompt(100, 2), BS, max_tokens=5)
    sched.add(a)
    sched.add(b)
    run_step(sched, bm)  # both prefilled: decoding from now on
    c = make_seq("c", prompt(200, 6), BS, max_tokens=5)
    d = make_seq("d", prompt(300, 1), BS, max_tokens=5)  # a 1-token prefill is a 1-token step
    e = make_seq("e", prompt(400, 5), BS, max_tokens=5)
    for s in (c, d, e):
        sched.add(s)
    batch = sched.schedule()
    got = dict(zip((s.request_id for s in batch.seqs), batch.num_new_tokens))
    assert got == {"a": 1, "b": 1, "c": 6, "d": 1, "e": 5}
    sizes = list(batch.num_new_tokens)
    first_single = sizes.index(1)
    assert all(n > 1 for n in sizes[:first_single]) and all(n == 1 for n in sizes[first_single:])
    assert batch.num_tokens == 14


# -- preemption ----------------------------------------------------------------------------


def _preemption_setup():
    """A pool of 4 blocks; a, b, c (one block each) prefill in step 1, then each needs a
    second block to decode: only one is free."""
    sched, bm = make(num_blocks=4, budget=64, enable_prefix_caching=False)
    a = make_seq("a", prompt(1, 4), BS, max_tokens=2)
    b = make_seq("b", prompt(100, 4), BS, max_tokens=2)
    c = make_seq("c", prompt(200, 4), BS, max_tokens=3)
    for s in (a, b, c):
        sched.add(s)
    assert run_step(sched, bm).chunks == {"a": (0, 4), "b": (0, 4), "c": (0, 4)}
    return sched, bm, a, b, c


def test_when_blocks_run_out_the_most_recently_admitted_sequence_is_preempted():
    sched, bm, a, b, c = _preemption_setup()
    d = make_seq("d", prompt(300, 4), BS, max_tokens=1)
    sched.add(d)
    step = run_step(sched, bm)
    assert step.chunks == {"a": (4, 1), "b": (4, 1)}
    assert c.block_table == [] and c.num_computed_tokens == 0
    assert c.status == SequenceStatus.WAITING and c.num_preemptions == 1
    assert list(sched.waiting) == [c, d]  # requeued at the front
    assert sched.num_preemptions == 1
    assert a.num_preemptions == 0 and b.num_preemptions == 0
    bm.check_invariants()


def test_preempted_sequence_recomputes_prompt_and_generated_tokens_and_loses_nothing():
    sched, bm, a, b, c = _preemption_setup()
    assert c.token_ids == prompt(200, 4) + expected_output(1)  # one token before preemption
    run_step(sched, bm)  # c preempted; a and b finish
    assert sched.num_preemptions == 1
    steps = run_to_completion(sched, bm)
    # recompute: prompt (4) + the token generated before preemption (1), no prefix cache
    assert steps[0].chunks == {"c": (0, 5)}
    assert [s.chunks["c"] for s in steps] == [(0, 5), (5, 1)]
    assert c.token_ids == prompt(200, 4) + expected_output(3)
    assert a.token_ids == prompt(1, 4) + expected_output(2)
    assert b.token_ids == prompt(100, 4) + expected_output(2)
    assert_pool_fully_free(bm)


def test_request_larger_than_the_pool_is_refused_rather_than_spinning():
    sched, bm = make(num_blocks=2, budget=64)
    sched.add(make_seq("big", prompt(1, 12), BS, max_tokens=1))  # 3 blocks
    with pytest.raises(RuntimeError, match="does not fit"):
        sched.schedule()


# -- prefix cache --------------------------------------------------------------------------


def test_second_sequence_with_the_same_prompt_computes_only_the_uncached_rest():
    sched, bm = make(budget=64)
    a = make_seq("a", prompt(1, 10), BS, max_tokens=4)
    sched.add(a)
    run_step(sched, bm)
    b = make_seq("b", prompt(1, 10), BS, max_tokens=4)
    sched.add(b)
    step = run_step(sched, bm)
    cached = (10 - 1) // BS * BS  # whole blocks, and never the last prompt token: 8
    assert b.num_cached_tokens == cached
    assert step.chunks["b"] == (cached, 10 - cached)
    assert b.block_table[:2] == a.block_table[:2]
    sched.finish(a)  # b keeps the shared blocks
    bm.check_invariants()
    assert all(bm.ref_counts[x] == 1 for x in b.block_table)
    run_to_completion(sched, bm)
    assert b.token_ids == prompt(1, 10) + expected_output(4)
    assert_pool_fully_free(bm)


def test_prefix_hit_from_a_finished_sequence_is_reused():
    sched, bm = make(budget=64)
    a = make_seq("a", prompt(1, 13), BS, max_tokens=1)
    sched.add(a)
    run_to_completion(sched, bm)
    b = make_seq("b", prompt(1, 13), BS, max_tokens=1)
    sched.add(b)
    assert run_step(sched, bm).chunks == {"b": (12, 1)}
    assert b.num_cached_tokens == 12
    assert_pool_fully_free(bm)


def test_readmission_after_preemption_keeps_the_first_admissions_cached_count():
    sched, bm = make(num_blocks=5, budget=64)
    a = make_seq("a", prompt(1, 4), BS, max_tokens=2)
    b = make_seq("b", prompt(100, 4), BS, max_tokens=2)
    c = make_seq("c", prompt(200, 8), BS, max_tokens=3)  # 2 blocks
    for s in (a, b, c):
        sched.add(s)
    run_step(sched, bm)
    assert c.num_cached_tokens == 0
    run_step(sched, bm)  # c preempted; b takes one of its freed blocks (the tail, freed first)
    assert c.num_preemptions == 1
    step = run_step(sched, bm)
    # readmitted: c's first block is still cached; the rest (4 prompt + 1 generated) recomputed
    assert step.chunks == {"c": (4, 5)}
    assert c.num_cached_tokens == 0  # counts the first admission only
    run_to_completion(sched, bm)
    assert c.token_ids == prompt(200, 8) + expected_output(3)
    assert_pool_fully_free(bm)


def _partial_reuse_setup(num_blocks):
    """a (6 tokens) leaves block 0 cached whole and the first 2 slots of block 1 cached as a
    tail; b extends a's prompt to 11 tokens (3 blocks)."""
    sched, bm = make(num_blocks=num_blocks, budget=64, copy_kv=lambda src, dst, n: None)
    a = make_seq("a", prompt(1, 6), BS, max_tokens=1)
    sched.add(a)
    run_to_completion(sched, bm)
    b = make_seq("b", prompt(1, 11), BS, max_tokens=1)
    sched.add(b)
    return sched, bm, b


def test_partial_block_hit_is_used_when_the_pool_has_room_for_the_copy():
    sched, bm, b = _partial_reuse_setup(num_blocks=8)
    assert run_step(sched, bm).chunks == {"b": (6, 5)}
    assert b.num_cached_tokens == 6
    assert_pool_fully_free(bm)


def test_partial_block_hit_is_dropped_when_the_pool_cannot_spare_the_copy():
    # 3 blocks: b needs all of them, so the partial hit's source block cannot be kept aside
    sched, bm, b = _partial_reuse_setup(num_blocks=3)
    assert run_step(sched, bm).chunks == {"b": (4, 7)}
    assert b.num_cached_tokens == 4
    assert_pool_fully_free(bm)


# -- finish --------------------------------------------------------------------------------


def test_finish_of_a_waiting_sequence_removes_it_and_frees_nothing_twice():
    sched, bm = make(budget=4)
    a = make_seq("a", prompt(1, 4), BS, max_tokens=1)
    b = make_seq("b", prompt(100, 4), BS, max_tokens=1)
    sched.add(a)
    sched.add(b)
    sched.finish(b)
    assert b.status == SequenceStatus.FINISHED and b not in sched.waiting
    steps = run_to_completion(sched, bm)
    assert all("b" not in s.chunks for s in steps)
    assert_pool_fully_free(bm)


def test_finish_of_a_running_sequence_mid_prefill_frees_every_block():
    sched, bm = make(num_blocks=16, budget=8)
    a = make_seq("a", prompt(1, 30), BS, max_tokens=1)
    sched.add(a)
    run_step(sched, bm)
    run_step(sched, bm)
    assert len(a.block_table) == 4  # 16 tokens computed
    sched.finish(a)
    assert a.status == SequenceStatus.FINISHED and not sched.has_work() and a.block_table == []
    assert_pool_fully_free(bm)


def test_finish_of_a_preempted_sequence_frees_every_block():
    sched, bm, a, b, c = _preemption_setup()
    run_step(sched, bm)
    assert c in sched.waiting
    sched.finish(c)
    assert not sched.has_work()
    assert_pool_fully_free(bm)


def test_finish_of_every_running_sequence_frees_the_pool():
    sched, bm = make(num_blocks=32, budget=16)
    seqs = [make_seq(r, prompt(1, 9), BS, max_tokens=8) for r in "abcd"]  # shared prefix
    for s in seqs:
        sched.add(s)
    for _ in range(3):
        run_step(sched, bm)
    assert sched.running
    for s in list(sched.running) + list(sched.waiting):
        sched.finish(s)
        bm.check_invariants()
    assert not sched.has_work()
    assert_pool_fully_free(bm)


# -- property test -------------------------------------------------------------------------


def _check_refcounts(bm, running):
    owners = [0] * bm.num_blocks
    for s in running:
        assert len(set(s.block_table)) == len(s.block_table), f"{s.request_id} holds a block twice"
        for b in s.block_table:
            owners[b] += 1
    assert owners == bm.ref_counts


@st.composite
def workloads(draw):
    bs = draw(st.sampled_from([1, 2, 4]))
    n = draw(st.integers(1, 8))
    reqs = []
    for i in range(n):
        family = draw(st.integers(0, 2))  # same family: prompts share a prefix
        length = draw(st.integers(1, 20))
        tokens = [1000 * family + t for t in range(length)]
        if draw(st.booleans()):  # a distinct tail
            tokens += [50_000 + 100 * i + t for t in range(draw(st.integers(1, 5)))]
        reqs.append(dict(
            tokens=tokens,
            max_tokens=draw(st.integers(1, 6)),
            arrival=draw(st.integers(0, 6)),
            abort=draw(st.one_of(st.none(), st.integers(0, 40))),
        ))
    most = max(math.ceil((len(r["tokens"]) + r["max_tokens"] - 1) / bs) for r in reqs)
    return dict(
        bs=bs,
        reqs=reqs,
        num_blocks=most + draw(st.sampled_from([0, 0, 1, 2, 4, 10])),  # tight pools preempt
        budget=draw(st.integers(1, 32)),
        max_num_seqs=draw(st.integers(1, 6)),
        caching=draw(st.booleans()),
        partial=draw(st.booleans()),
    )


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=workloads())
def test_random_workloads_run_to_completion_with_invariants_after_every_step(w):
    bs, budget = w["bs"], w["budget"]
    bm = BlockManager(w["num_blocks"], bs, enable_prefix_caching=w["caching"],
                      copy_kv=(lambda src, dst, n: None) if w["partial"] else None)
    sched = Scheduler(bm, max_num_seqs=w["max_num_seqs"], max_num_batched_tokens=budget)
    seqs = [make_seq(f"r{i}", r["tokens"], bs, max_tokens=r["max_tokens"]) for i, r in enumerate(w["reqs"])]
    frontier = {s.request_id: 0 for s in seqs}  # tokens computed, as this test counts them
    scheduled = {s.request_id: 0 for s in seqs}  # tokens scheduled over the whole run
    served = {s.request_id: 0 for s in seqs}  # tokens given at admission (prefix hits)
    lost = {s.request_id: 0 for s in seqs}  # computed tokens dropped by preemptions
    aborted_at = {}  # request id -> output tokens it had when aborted
    first_cached = {}  # request id -> tokens served at its first admission
    added = set()

    step_no = 0
    while step_no <= 6 or sched.has_work():
        for s, r in zip(seqs, w["reqs"]):
            if r["arrival"] == step_no:
                sched.add(s)
                added.add(s.request_id)
            if r["abort"] == step_no and s.request_id in added and not s.is_finished:
                sched.finish(s)
                aborted_at[s.request_id] = s.num_output_tokens
        bm.check_invariants()

        had_work = sched.has_work()
        pre_running, pre_waiting = list(sched.running), list(sched.waiting)
        pre_preempt = {s.request_id: s.num_preemptions for s in seqs}
        pre_total = sched.num_preemptions

        batch = sched.schedule()

        ids = [s.request_id for s in batch.seqs]
        sizes = list(batch.num_new_tokens)
        assert not had_work or batch, "work left but nothing scheduled"
        assert len(ids) == len(set(ids)), "a sequence scheduled twice in one step"
        assert all(n >= 1 for n in sizes)
        assert sum(sizes) <= budget
        assert sum(sizes) == batch.num_tokens
        k = next((j for j, n in enumerate(sizes) if n == 1), len(sizes))
        assert all(n > 1 for n in sizes[:k]) and all(n == 1 for n in sizes[k:]), sizes
        assert len(sched.running) <= w["max_num_seqs"]

        # preemption: at most once each, only the most recently admitted running ones
        preempted = [s for s in pre_running if s.num_preemptions != pre_preempt[s.request_id]]
        assert all(s.num_preemptions == pre_preempt[s.request_id] + 1 for s in preempted)
        assert all(s.num_preemptions == pre_preempt[s.request_id] for s in seqs if s not in preempted)
        assert sched.num_preemptions - pre_total == len(preempted)
        assert preempted == pre_running[len(pre_running) - len(preempted):]
        for s in preempted:
            lost[s.request_id] += frontier[s.request_id]
        continuing = [s for s in pre_running if s not in preempted]

        # admission: FIFO from (preempted in admission order) + waiting, after the running
        queue = preempted + pre_waiting
        admitted = sched.running[len(continuing):]
        assert sched.running[:len(continuing)] == continuing
        assert admitted == queue[:len(admitted)]
        assert list(sched.waiting) == queue[len(admitted):]
        assert set(ids) <= {s.request_id for s in continuing + admitted}
        assert {s.request_id for s in admitted} <= set(ids)
        if any(s.request_id not in ids for s in continuing):
            assert not admitted, "a waiting sequence admitted while a running one was skipped"

        for s in continuing:
            assert s.num_computed_tokens == frontier[s.request_id]
        for s in admitted:
            start = s.num_computed_tokens
            assert 0 <= start <= len(s) - 1
            if not w["caching"]:
                assert start == 0
            elif not w["partial"]:
                assert start % bs == 0
            first_cached.setdefault(s.request_id, start)
            assert s.num_cached_tokens == first_cached[s.request_id]
            served[s.request_id] += start
        for s in sched.waiting:
            assert s.block_table == [] and s.num_computed_tokens == 0
            assert s.status == SequenceStatus.WAITING
        for s, n in zip(batch.seqs, sizes):
            assert s.status == SequenceStatus.RUNNING
            assert s.request_id not in aborted_at
            assert s.num_computed_tokens + n <= len(s)
            assert len(s.block_table) * bs >= s.num_computed_tokens + n
        _check_refcounts(bm, sched.running)
        bm.check_invariants()

        # the engine's part
        for s, n in zip(batch.seqs, sizes):
            s.num_computed_tokens += n
            scheduled[s.request_id] += n
            frontier[s.request_id] = s.num_computed_tokens
            bm.commit(s)
        for s in batch.seqs:
            if s.num_computed_tokens == len(s):
                s.token_ids.append(fake_token(s))
                if s.num_output_tokens >= s.params.max_tokens:
                    sched.finish(s)
        for s in seqs:
            if s.status == SequenceStatus.WAITING:
                frontier[s.request_id] = 0
        _check_refcounts(bm, sched.running)
        bm.check_invariants()
        step_no += 1
        assert step_no < 5000, "no progress"

    for s, r in zip(seqs, w["reqs"]):
        assert s.status == SequenceStatus.FINISHED
        p = len(r["tokens"])
        if s.request_id in aborted_at:
            assert s.token_ids == r["tokens"] + expected_output(aborted_at[s.request_id])
        else:
            assert s.token_ids == r["tokens"] + expected_output(r["max_tokens"])
            # every position up to the last sampled one computed once, plus what preemption lost
            assert scheduled[s.request_id] + served[s.request_id] == p + r["max_tokens"] - 1 + lost[s.request_id]
    assert not sched.has_work()
    assert_pool_fully_free(bm)
