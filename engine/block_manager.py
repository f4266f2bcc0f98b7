"""Paged KV block pool: block tables, reference counts, and prefix-cache reuse.

Free blocks live in two queues: blocks that back no cached key (taken first), and cached
blocks with no owner, in least-recently-freed order (evicted only when the first queue is
empty). A sequence's blocks are released tail-first, so the shared head of a prefix
outlives its tails.
"""
from __future__ import annotations

from collections import OrderedDict, deque

from engine.prefix_cache import BlockKey, HashPrefixCache, PrefixCache
from engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 cache: PrefixCache | None = None):
        if num_blocks < 1:
            raise ValueError("the KV pool needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.cache = cache if cache is not None else HashPrefixCache()
        self.ref_counts = [0] * num_blocks
        self._free_plain: deque[int] = deque(range(num_blocks))
        self._free_cached: OrderedDict[int, None] = OrderedDict()
        # digest chain of each sequence's leading full blocks (parent of the next block)
        self._digests: dict[str, list[bytes]] = {}
        self.queried_tokens = 0
        self.hit_tokens = 0

    # -- sizes --------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free_plain) + len(self._free_cached)

    @property
    def num_cached_blocks(self) -> int:
        return len(self.cache)

    def _blocks_for(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    # -- prefix matching ----------------------------------------------------------------
    def _key(self, seq: Sequence, index: int, parent: bytes) -> BlockKey:
        return BlockKey(parent, seq.block_tokens(index), seq.block_extra_keys(index))

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the cached leading full blocks of `seq`. At least one token is always
        left to compute, since the last position's logits are needed."""
        if not self.enable_prefix_caching:
            return []
        limit = len(seq) - 1 if seq.max_prefix_tokens is None else min(len(seq) - 1, seq.max_prefix_tokens)
        max_blocks = limit // self.block_size
        hits, parent = [], b""
        for i in range(max_blocks):
            key = self._key(seq, i, parent)
            block_id = self.cache.match(key)
            if block_id is None:
                break
            hits.append(block_id)
            parent = key.digest()
        return hits

    def can_admit(self, seq: Sequence, hits: list[int], num_new_tokens: int) -> bool:
        needed = self._blocks_for(len(hits) * self.block_size + num_new_tokens) - len(hits)
        reclaimed = sum(1 for b in hits if self.ref_counts[b] == 0)  # hits sitting in the free queue
        return self.num_free_blocks - reclaimed >= needed

    def admit(self, seq: Sequence, hits: list[int]) -> None:
        """Gives `seq` the hit blocks; its first len(hits) * block_size tokens count as computed."""
        assert not seq.block_table, "sequence already holds blocks"
        for block_id in hits:
            if self.ref_counts[block_id] == 0:
                del self._free_cached[block_id]
            self.ref_counts[block_id] += 1
        seq.block_table = list(hits)
        seq.num_computed_tokens = len(hits) * self.block_size
        seq.num_hashed_blocks = len(hits)
        digests, parent = [], b""
        for i in range(len(hits)):
            parent = self._key(seq, i, parent).digest()
            digests.append(parent)
        self._digests[seq.request_id] = digests
        if self.enable_prefix_caching:
            self.queried_tokens += len(seq)
            self.hit_tokens += seq.num_computed_tokens

    # -- growth ---------------------------------------------------------------------------
    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        needed = self._blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return needed <= self.num_free_blocks

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grows the block table to hold num_computed_tokens + num_new_tokens tokens."""
        needed = self._blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if needed > self.num_free_blocks:
            raise RuntimeError("append_slots without enough free blocks (call can_append first)")
        for _ in range(needed):
            seq.block_table.append(self._take_free_block())

    def _take_free_block(self) -> int:
        if self._free_plain:
            block_id = self._free_plain.popleft()
        else:
            block_id, _ = self._free_cached.popitem(last=False)  # least recently freed
            self.cache.evict(block_id)
        self.ref_counts[block_id] = 1
        return block_id

    def commit(self, seq: Sequence) -> None:
        """Registers every newly full, computed block of `seq` with the prefix cache."""
        if not self.enable_prefix_caching:
            return
        digests = self._digests.setdefault(seq.request_id, [])
        full = seq.num_computed_tokens // self.block_size
        parent = digests[-1] if digests else b""
        for i in range(seq.num_hashed_blocks, full):
            key = self._key(seq, i, parent)
            self.cache.insert(key, seq.block_table[i])
            parent = key.digest()
            digests.append(parent)
        seq.num_hashed_blocks = max(seq.num_hashed_blocks, full)

    # -- release --------------------------------------------------------------------------
    def free(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            self.ref_counts[block_id] -= 1
            assert self.ref_counts[block_id] >= 0, f"block {block_id} freed twice"
            if self.ref_counts[block_id] == 0:
                if self.cache.holds(block_id):
                    self._free_cached[block_id] = None
                else:
                    self._free_plain.append(block_id)
        seq.block_table = []
        seq.num_hashed_blocks = 0
        self._digests.pop(seq.request_id, None)

    def check_invariants(self) -> None:
        """For tests: every block is either owned (ref > 0) or free, exactly once."""
        free = list(self._free_plain) + list(self._free_cached)
        assert len(free) == len(set(free)), "a block is queued free twice"
        for b in range(self.num_blocks):
            rc = self.ref_counts[b]
            assert rc >= 0, f"block {b} has negative ref count"
            assert (rc == 0) == (b in set(free)), f"block {b}: ref {rc} but free={b in set(free)}"
        for b in self._free_cached:
            assert self.cache.holds(b), f"free cached block {b} backs no key"
