"""Vision-encoder outputs keyed by image content hash, least-recently-used under a byte budget,
so an image seen again is not re-encoded even when its KV blocks were evicted."""
from __future__ import annotations

from collections import OrderedDict

import torch

EncoderOutput = tuple[torch.Tensor, list[torch.Tensor]]  # (merged embeds, deepstack features)


def _nbytes(out: EncoderOutput) -> int:
    embeds, deepstack = out
    return embeds.numel() * embeds.element_size() + sum(t.numel() * t.element_size() for t in deepstack)


class EncoderCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, EncoderOutput] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, content_hash: str) -> EncoderOutput | None:
        out = self._entries.get(content_hash)
        if out is None:
            self.misses += 1
            return None
        self._entries.move_to_end(content_hash)
        self.hits += 1
        return out

    def put(self, content_hash: str, out: EncoderOutput) -> None:
        size = _nbytes(out)
        if size > self.max_bytes or content_hash in self._entries:
            return
        while self.bytes + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= _nbytes(old)
        self._entries[content_hash] = out
        self.bytes += size

    def __len__(self) -> int:
        return len(self._entries)
