"""Incremental detokenisation and stop-string search for one request.

Each new token costs the decode of a short trailing window of ids (never the whole output),
and stop strings are searched only in the tail the new text could complete, so the per-token
cost at token 2,000 is what it was at token 100.

Deltas never end inside a multi-byte character: while the window decodes to a trailing
U+FFFD (bytes of a character still arriving) nothing is emitted. With stop strings, the last
len(longest stop) - 1 characters are held back until the request finishes, so a delta never
shows text that a later token turns into a stop string. Joined deltas equal the final text.
"""
from __future__ import annotations

from typing import Callable

REPLACEMENT = "\ufffd"
# a character is at most 4 UTF-8 bytes, so a window still ending in U+FFFD after this many
# pending tokens holds genuinely invalid bytes: emit them rather than grow the window
MAX_PENDING_TOKENS = 6


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[list[int]], str], stop: list[str] | None = None):
        """decode(ids) -> text (special tokens skipped). stop: strings that end the request;
        the text returned never includes them."""
        self._decode = decode
        self._ids: list[int] = []
        self._window = 0  # ids[_window:_read] were decoded last time, as context for the next
        self._read = 0    # ids before this index are in `text`
        self._window_text = ""
        self.text = ""
        self._emitted = 0  # characters of `text` already handed out as deltas
        self.stop = list(stop or [])
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self.stopped = False  # a stop string matched; `text` is cut before it

    def replay(self, token_ids: list[int], emitted: int) -> None:
        """Reads tokens generated earlier (a request resumed elsewhere) of which `emitted`
        characters were already handed out as deltas; later adds continue from them exactly as
        if this detokenizer had seen every token."""
        for t in token_ids:
            self.add(t)
        self._emitted = min(emitted, len(self.text))

    def add(self, token_id: int) -> bool:
        """Appends one generated token; True when a stop string has just matched."""
        if self.stopped:
            return True
        self._ids.append(token_id)
        full = self._decode(self._ids[self._window:])
        pending = len(self._ids) - self._read
        if full.endswith(REPLACEMENT) and pending < MAX_PENDING_TOKENS:
            return False  # wait for the rest of the character
        clean = full.startswith(self._window_text)
        new = full[len(self._window_text):]
        self._window, self._read = self._read, len(self._ids)
        # the new window is the ids just read; their text is `new` whenever decoding split cleanly
        self._window_text = new if clean else self._decode(self._ids[self._window:])
        return self._append(new)

    def _append(self, new: str) -> bool:
        if not new:
            return False
        start = max(0, len(self.text) - self._hold)
        self.text += new
        cuts = [i for i in (self.text.find(s, start) for s in self.stop) if i != -1]
        if cuts:
            self.text = self.text[:min(cuts)]
            self._emitted = min(self._emitted, len(self.text))
            self.stopped = True
        return self.stopped

    def flush(self) -> None:
        """At the end of the request: characters still waiting for more bytes join the text."""
        if self.stopped or self._read == len(self._ids):
            return
        full = self._decode(self._ids[self._window:])
        new = full[len(self._window_text):]
        self._window = self._read = len(self._ids)
        self._window_text = ""
        self._append(new)

    def delta(self, finished: bool) -> str:
        """New text since the previous call; the held-back tail only once finished."""
        end = len(self.text) if finished or self.stopped else max(self._emitted, len(self.text) - self._hold)
        out = self.text[self._emitted:end]
        self._emitted = end
        return out

    @property
    def emitted_text(self) -> str:
        return self.text[:self._emitted]
