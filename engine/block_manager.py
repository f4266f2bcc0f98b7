"""Paged KV block pool: block tables, reference counts, and prefix-cache reuse.

Free blocks live in two queues: blocks that back no cached key (taken first), and cached
blocks with no owner, in least-recently-freed order (evicted only when the first queue is
empty). A sequence's blocks are released tail-first, so the shared head of a prefix
outlives its tails.

Reuse is token-granular: after the shared full blocks, the longest cached continuation of the
next block (a full block of another sequence, or the computed tail a finished sequence left)
is copied slot by slot into a fresh block (`copy_kv`, supplied by the engine). A follow-up
stage whose prompt extends an earlier one mid-block so recomputes none of the earlier tokens.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

from baton.engine.prefix_cache import BlockKey, HashPrefixCache, NullPrefixCache, PrefixCache
from baton.engine.sequence import Sequence


@dataclass
class PrefixMatch:
    """What the prefix cache holds of a sequence: shared full blocks, then optionally the first
    `partial_tokens` slots of `partial_block`, to be copied into a block of its own."""

    blocks: list[int] = field(default_factory=list)
    partial_block: int | None = None
    partial_tokens: int = 0
    num_tokens: int = 0  # tokens served: len(blocks) * block_size + partial_tokens

    def whole_blocks(self) -> "PrefixMatch":
        """This match without its partial block (for a pool too full to spare the copy)."""
        return PrefixMatch(list(self.blocks), num_tokens=self.num_tokens - self.partial_tokens)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 cache: PrefixCache | None = None,
                 copy_kv: Callable[[int, int, int], None] | None = None):
        """copy_kv(src, dst, n) copies the K/V of the first n token slots of block src into
        block dst; without it only whole blocks are reused."""
        if num_blocks < 1:
            raise ValueError("the KV pool needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        if cache is None:
            cache = HashPrefixCache() if enable_prefix_caching else NullPrefixCache()
        self.cache = cache
        self.copy_kv = copy_kv
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

    def match_prefix(self, seq: Sequence) -> PrefixMatch:
        """The cached leading full blocks of `seq`, then the longest cached continuation of the
        next block. At least one token is always left to compute, since the last position's
        logits are needed."""
        match = PrefixMatch()
        limit = len(seq) - 1
        parent = b""
        for i in range(limit // self.block_size):
            key = self._key(seq, i, parent)
            block_id = self.cache.match(key)
            if block_id is None:
                break
            match.blocks.append(block_id)
            parent = key.digest()
        match.num_tokens = len(match.blocks) * self.block_size
        room = limit - match.num_tokens
        if self.copy_kv is not None and room > 0:
            i = len(match.blocks)
            found = self.cache.best_partial(parent, seq.block_tokens(i), seq.block_extra_keys(i))
            if found is not None:
                match.partial_block, t = found
                match.partial_tokens = min(t, room)
                match.num_tokens += match.partial_tokens
        return match

    def can_admit(self, seq: Sequence, match: PrefixMatch, num_new_tokens: int) -> bool:
        needed = self._blocks_for(match.num_tokens + num_new_tokens) - len(match.blocks)
        # hits sitting in the free queue are not free for this sequence; neither is the
        # partial source, which must survive until its slots are copied
        held = [b for b in match.blocks if self.ref_counts[b] == 0]
        if match.partial_block is not None and self.ref_counts[match.partial_block] == 0:
            held.append(match.partial_block)
        return self.num_free_blocks - len(held) >= needed

    def admit(self, seq: Sequence, match: PrefixMatch) -> None:
        """Gives `seq` the hit blocks (and a copy of the partial hit); its first
        match.num_tokens tokens count as computed."""
        assert not seq.block_table, "sequence already holds blocks"
        for block_id in match.blocks:
            if self.ref_counts[block_id] == 0:
                del self._free_cached[block_id]
            self.ref_counts[block_id] += 1
        seq.block_table = list(match.blocks)
        seq.num_computed_tokens = len(match.blocks) * self.block_size
        seq.num_hashed_blocks = len(match.blocks)
        digests, parent = [], b""
        for i in range(len(match.blocks)):
            parent = self._key(seq, i, parent).digest()
            digests.append(parent)
        self._digests[seq.request_id] = digests
        if match.partial_block is not None:
            seq.block_table.append(self._copy_partial(match.partial_block, match.partial_tokens))
            seq.num_computed_tokens += match.partial_tokens
        self.queried_tokens += len(seq)
        self.hit_tokens += seq.num_computed_tokens

    def _copy_partial(self, src: int, num_tokens: int) -> int:
        """A fresh block holding the first num_tokens slots of src (never src itself)."""
        parked = self.ref_counts[src] == 0
        if parked:  # keep src off the free queue while the destination is taken
            del self._free_cached[src]
        dst = self._take_free_block()
        self.copy_kv(src, dst, num_tokens)
        if parked:
            self._free_cached[src] = None  # back as the most recently used
        return dst

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
        self._register_tail(seq)
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

    def _register_tail(self, seq: Sequence) -> None:
        """Offers the computed part of the sequence's last, partly filled block to the cache,
        for a follow-up prompt that continues it (partial reuse)."""
        if self.copy_kv is None:
            return
        tail, filled = divmod(seq.num_computed_tokens, self.block_size)
        digests = self._digests.get(seq.request_id, [])
        if filled == 0 or tail >= len(seq.block_table) or len(digests) != tail:
            return
        block_id = seq.block_table[tail]
        if self.ref_counts[block_id] != 1 or self.cache.holds(block_id):
            return  # shared or already cached: not this sequence's to offer
        start = tail * self.block_size
        key = BlockKey(digests[-1] if digests else b"", tuple(seq.token_ids[start:start + filled]),
                       seq.block_extra_keys(tail))
        self.cache.insert(key, block_id)

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
