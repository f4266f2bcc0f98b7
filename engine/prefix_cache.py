"""Prefix-cache index: which physical KV block holds a given full block of tokens.

A block's key chains over its parent's digest, its token ids and the image identities of its
image tokens, so the same text over a different image never matches. The digest is a
128-bit BLAKE2 and every hit is confirmed against the stored tokens and image keys.

A block that is not full (the computed tail of a finished sequence) can be inserted too. It
never serves as a shared block; `best_partial` finds the cached child of a parent whose
leading tokens agree longest with a new block, and the block manager copies that many token
slots into a fresh block, so a follow-up prompt recomputes none of the shared tail.

`PrefixCache` is the interface the block manager uses (match / best_partial / insert / evict
/ sizes); a radix tree could implement it instead of the hash table below without touching
the scheduler.
"""
from __future__ import annotations

import hashlib
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class BlockKey:
    parent: bytes  # digest of the previous block's key (b"" for the first block)
    tokens: tuple[int, ...]
    extras: tuple  # ((image content hash, image offset relative to block start), ...)

    def digest(self) -> bytes:
        h = hashlib.blake2b(self.parent, digest_size=16)
        h.update(struct.pack(f"<{len(self.tokens)}q", *self.tokens))
        for content_hash, offset in self.extras:
            h.update(content_hash.encode())
            h.update(struct.pack("<q", offset))
        return h.digest()


class PrefixCache(ABC):
    @abstractmethod
    def match(self, key: BlockKey) -> int | None:
        """Block id holding exactly `key`, or None."""

    @abstractmethod
    def best_partial(self, parent: bytes, tokens: tuple[int, ...], extras: tuple) -> tuple[int, int] | None:
        """(block id, t): a cached block under `parent` whose first t >= 1 tokens equal the
        first t of `tokens`, t as large as possible; None when no block shares a first token.
        Blocks whose image identities differ from `extras` never match."""

    @abstractmethod
    def insert(self, key: BlockKey, block_id: int) -> None:
        """Records that `block_id` holds `key` (first writer wins on duplicates)."""

    @abstractmethod
    def evict(self, block_id: int) -> None:
        """Forgets whatever `block_id` held (it is about to be overwritten)."""

    @abstractmethod
    def holds(self, block_id: int) -> bool:
        """Whether `block_id` currently backs a cached key."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of cached blocks."""


class _TokenTrie:
    """Cached blocks under one (parent, image identities), by their tokens: each node lists the
    blocks whose tokens pass through it, so the longest shared run of a new block is one walk
    of at most block_size steps, however many siblings are cached."""

    __slots__ = ("children", "holders")

    def __init__(self):
        self.children: dict[int, _TokenTrie] = {}
        self.holders: dict[int, None] = {}  # block ids, insertion-ordered

    def add(self, tokens: tuple[int, ...], block_id: int) -> None:
        node = self
        for tok in tokens:
            node = node.children.setdefault(tok, _TokenTrie())
            node.holders[block_id] = None

    def remove(self, tokens: tuple[int, ...], block_id: int) -> None:
        path, node = [], self
        for tok in tokens:
            path.append((node, tok))
            node = node.children[tok]
            del node.holders[block_id]
        for parent, tok in reversed(path):  # prune nodes no block passes through
            if parent.children[tok].holders:
                break
            del parent.children[tok]

    def longest(self, tokens: tuple[int, ...]) -> tuple[int, int] | None:
        node, depth = self, 0
        for tok in tokens:
            child = node.children.get(tok)
            if child is None:
                break
            node, depth = child, depth + 1
        return (next(iter(node.holders)), depth) if depth else None


class HashPrefixCache(PrefixCache):
    def __init__(self):
        self._by_digest: dict[bytes, tuple[int, BlockKey]] = {}
        self._digest_of: dict[int, bytes] = {}
        # (parent digest, image identities) -> its cached blocks by token; image identities
        # must match whole (conservative: any image difference in the block never matches)
        self._tries: dict[tuple[bytes, tuple], _TokenTrie] = {}

    def match(self, key: BlockKey) -> int | None:
        hit = self._by_digest.get(key.digest())
        if hit is None or hit[1] != key:  # confirm: a digest collision never serves wrong KV
            return None
        return hit[0]

    def insert(self, key: BlockKey, block_id: int) -> None:
        digest = key.digest()
        if digest in self._by_digest or block_id in self._digest_of:
            return
        self._by_digest[digest] = (block_id, key)
        self._digest_of[block_id] = digest
        self._tries.setdefault((key.parent, key.extras), _TokenTrie()).add(key.tokens, block_id)

    def best_partial(self, parent: bytes, tokens: tuple[int, ...], extras: tuple) -> tuple[int, int] | None:
        trie = self._tries.get((parent, extras))
        return trie.longest(tokens) if trie is not None else None

    def evict(self, block_id: int) -> None:
        digest = self._digest_of.pop(block_id, None)
        if digest is not None:
            _, key = self._by_digest.pop(digest)
            trie = self._tries[(key.parent, key.extras)]
            trie.remove(key.tokens, block_id)
            if not trie.children:
                del self._tries[(key.parent, key.extras)]

    def holds(self, block_id: int) -> bool:
        return block_id in self._digest_of

    def __len__(self) -> int:
        return len(self._digest_of)


class NullPrefixCache(PrefixCache):
    """Caches nothing: the block manager runs the same code with prefix caching off."""

    def match(self, key: BlockKey) -> int | None:
        return None

    def best_partial(self, parent: bytes, tokens: tuple[int, ...], extras: tuple) -> tuple[int, int] | None:
        return None

    def insert(self, key: BlockKey, block_id: int) -> None:
        pass

    def evict(self, block_id: int) -> None:
        pass

    def holds(self, block_id: int) -> bool:
        return False

    def __len__(self) -> int:
        return 0
