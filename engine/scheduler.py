"""Continuous batching under a per-step token budget.

Each step every running sequence asks for the tokens it has not computed yet: one for a
decode, up to the rest of its prompt for a (chunked) prefill. Running sequences go first,
in arrival order, then waiting ones are admitted while the token budget, the sequence limit
and free KV blocks allow. When blocks run out, the most recently admitted running sequence
is preempted: its blocks are freed and it recomputes later from its tokens (prompt plus
what it already generated), so nothing is lost.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from baton.engine.block_manager import BlockManager
from baton.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    num_new_tokens: list[int]  # per sequence, aligned with seqs; extends (> 1 token) first, then 1-token steps

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 eos_token_ids: set[int] | None = None, max_seq_len: int | None = None):
        """eos_token_ids: end a request unless it ignores EOS (the set is read live, so the
        engine may share its own). max_seq_len: no sequence grows past it (prompt + output)."""
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.eos_token_ids = eos_token_ids if eos_token_ids is not None else set()
        self.max_seq_len = max_seq_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        budget = self.max_num_batched_tokens
        picked: list[tuple[Sequence, int]] = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(len(seq) - seq.num_computed_tokens, budget)
            while not self.bm.can_append(seq, n):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                self.bm.append_slots(seq, n)
                picked.append((seq, n))
                budget -= n
                i += 1
                continue
            break  # seq itself was preempted; everything after it already was too
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hits = self.bm.match_prefix(seq)
            n = min(len(seq) - hits.num_tokens, budget)
            if hits.partial_block is not None and not self.bm.can_admit(seq, hits, n):
                hits = hits.whole_blocks()  # the copy's source would hold the block it needs
                n = min(len(seq) - hits.num_tokens, budget)
            if not self.bm.can_admit(seq, hits, n):
                if not self.running and not picked:
                    # Can never fit even alone: the engine checks capacity at submission,
                    # so this only happens with a pool smaller than one sequence.
                    raise RuntimeError(f"request {seq.request_id} does not fit the KV pool")
                break
            self.waiting.popleft()
            self.bm.admit(seq, hits)
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = seq.num_computed_tokens
            self.bm.append_slots(seq, n)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            picked.append((seq, n))
            budget -= n
        # extends before decodes: the runner slices attention metadata that way
        picked.sort(key=lambda sn: sn[1] == 1)
        return ScheduledBatch([s for s, _ in picked], [n for _, n in picked])

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.bm.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def update_from_output(self, batch: ScheduledBatch, results) -> list[Sequence]:
        """The post-step half of the protocol: the step's tokens count as computed, newly full
        blocks go to the prefix cache, sampled tokens (results: `.seq`, `.token_id`,
        `.logprobs`, `.token_stats`, `.error`) join their sequences, and sequences that hit EOS,
        a stop token id, max_tokens or max_seq_len finish; a result with an error fails its
        sequence without counting or caching that step's K/V. Returns the sequences finished."""
        failed = {id(r.seq): r.error for r in results if r.error is not None}
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            if id(seq) in failed:
                continue  # its K/V of this step is suspect: never counted, never cached
            seq.num_computed_tokens += n
            self.bm.commit(seq)
        finished = []
        for r in results:
            seq = r.seq
            if r.error is not None:
                self.fail(seq, r.error)
                finished.append(seq)
                continue
            seq.token_ids.append(r.token_id)
            if seq.logprobs is not None:
                seq.logprobs.append(r.logprobs)
            if seq.token_stats is not None:
                for column, value in zip(seq.token_stats.values(), r.token_stats):
                    column.append(value)
            reason = self._stop_reason(seq, r.token_id)
            if reason is not None:
                seq.finish_reason = reason
                self.finish(seq)
                finished.append(seq)
        return finished

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if (not p.ignore_eos and token in self.eos_token_ids) or token in p.stop_token_ids:
            return "stop"
        if seq.num_output_tokens >= p.max_tokens:
            return "length"
        if self.max_seq_len is not None and len(seq) >= self.max_seq_len:
            return "length"
        return None

    def fail(self, seq: Sequence, error: str) -> None:
        """Ends a sequence with finish_reason "error"; its blocks are freed like any finish."""
        seq.finish_reason, seq.error = "error", error
        self.finish(seq)

    def finish(self, seq: Sequence) -> None:
        """Removes a finished (or aborted) sequence from whichever queue holds it."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.bm.free(seq)
        seq.status = SequenceStatus.FINISHED
