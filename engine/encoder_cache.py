"""Vision-encoder outputs keyed by image content hash, least-recently-used under a byte budget,
so an image seen again is not re-encoded even when its KV blocks were evicted. Entries are the
model's opaque VisualFeatures (models.interface); only their nbytes is read here."""
from __future__ import annotations

from collections import OrderedDict

from baton.models.interface import VisualFeatures


class EncoderCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, VisualFeatures] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, content_hash: str) -> VisualFeatures | None:
        out = self._entries.get(content_hash)
        if out is None:
            self.misses += 1
            return None
        self._entries.move_to_end(content_hash)
        self.hits += 1
        return out

    def put(self, content_hash: str, out: VisualFeatures) -> None:
        size = out.nbytes
        if size > self.max_bytes or content_hash in self._entries:
            return
        while self.bytes + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes
        self._entries[content_hash] = out
        self.bytes += size

    def __len__(self) -> int:
        return len(self._entries)
