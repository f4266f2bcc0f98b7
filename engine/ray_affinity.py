"""Affinity routing for `baton serve --ray`: which replica of a model gets a request.

Requests that share a prompt prefix (an image, a system prompt) should reach the replica whose
prefix cache and encoder cache already hold it. The key of a request is its leading content:
the text before its first image plus that image's content hash, or, without images, its first
`prefix_chars` characters. Keys map to replicas by rendezvous (highest random weight) hashing:
each replica's score is hash(key, replica name) and the highest wins, so every ingress replica
picks the same one without shared state, and adding or removing a replica moves only the keys
it wins or loses. A preferred replica that is saturated (`max_load` calls in flight from this
ingress) or failed recently gives way to the least-loaded healthy one.

Plain Python (no Ray): the ingress in engine/ray_serve.py holds one AffinityRouter.
"""
from __future__ import annotations

import hashlib
import itertools
import threading
import time
from pathlib import Path

POLICIES = ("affinity", "round-robin")


def _h(*parts) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else str(part).encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.digest()


def image_digest(src) -> str:
    """A content hash of an image source as the server holds it: a data URL (its payload), raw
    bytes, a local path (the file's bytes) or a PIL image (its pixels)."""
    if isinstance(src, (bytes, bytearray)):
        return hashlib.sha256(src).hexdigest()
    if isinstance(src, str):
        if src.startswith("data:"):
            return hashlib.sha256(src.partition(",")[2].encode()).hexdigest()
        try:
            return hashlib.sha256(Path(src).read_bytes()).hexdigest()
        except OSError:
            return hashlib.sha256(src.encode()).hexdigest()
    if hasattr(src, "tobytes"):  # a PIL image
        from baton.models.image_io import content_hash

        return content_hash(src)
    return hashlib.sha256(repr(src).encode()).hexdigest()


def _image_of(part: dict):
    if part.get("type") == "image":
        return part.get("image")
    ref = part.get("image_url")
    return ref.get("url") if isinstance(ref, dict) else ref


def chat_key(messages, prefix_chars: int = 256) -> bytes:
    """The routing key of chat messages: role + text up to the first image, and its digest."""
    atoms: list = []
    budget = prefix_chars
    for msg in messages if isinstance(messages, list) else []:
        if not isinstance(msg, dict):
            continue
        atoms.append(f"<{msg.get('role')}>")
        content = msg.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict):
                continue
            if part.get("type") in ("image", "image_url"):
                atoms.append("img:" + image_digest(_image_of(part)))
                return _h(*atoms)
            text = part.get("text")
            if isinstance(text, str) and budget > 0:
                atoms.append(text[:budget])
                budget -= len(text[:budget])
        if budget <= 0:
            break
    return _h(*atoms)


def prompt_key(prompt, prefix_chars: int = 256) -> bytes:
    """The routing key of a completions prompt (text or token ids) or a stage prompt dict."""
    if isinstance(prompt, str):
        return _h("text", prompt[:prefix_chars])
    if isinstance(prompt, dict):
        images = [image_digest(i) for i in prompt.get("images") or []]
        if images:
            return _h("img", images[0])
        prompt = prompt.get("prompt_token_ids", prompt.get("prompt", ""))
        if isinstance(prompt, str):
            return _h("text", prompt[:prefix_chars])
    return _h("ids", *list(prompt)[: max(1, prefix_chars // 4)])


class AffinityRouter:
    """Replica choice per model kind ("small", "large", "model"), with load counts.

    policy "affinity": rendezvous hashing with a least-loaded fallback; "round-robin": the
    generic balancer (no affinity), kept for benchmarks. Thread-safe."""

    def __init__(self, replicas: dict[str, list[str]], *, policy: str = "affinity", max_load: int = 32,
                 cooldown_s: float = 10.0):
        if policy not in POLICIES:
            raise ValueError(f"routing policy must be one of {POLICIES}, got {policy!r}")
        if max_load < 1:
            raise ValueError(f"max_load must be at least 1, got {max_load}")
        self.replicas = {kind: list(names) for kind, names in replicas.items()}
        self.policy, self.max_load, self.cooldown_s = policy, max_load, cooldown_s
        self.load = {n: 0 for names in self.replicas.values() for n in names}
        self.failed_at: dict[str, float] = {}
        self.picks = {n: 0 for n in self.load}
        self.fallbacks = 0
        self._rr = {kind: itertools.count() for kind in self.replicas}
        self._mu = threading.Lock()

    def preference(self, kind: str, key: bytes) -> list[str]:
        """The replicas of `kind`, best first for `key` (rendezvous hashing)."""
        return sorted(self.replicas[kind], key=lambda name: _h(key, name), reverse=True)

    def healthy(self, name: str) -> bool:
        failed = self.failed_at.get(name)
        return failed is None or time.monotonic() - failed > self.cooldown_s

    def pick(self, kind: str, key: bytes, exclude=()) -> str:
        """A replica for one call (acquired: call release(name) when it ends). Replicas in
        `exclude` (failed for this request) are used only when nothing else is left."""
        with self._mu:
            names = [n for n in self.replicas[kind] if n not in exclude] or list(self.replicas[kind])
            up = [n for n in names if self.healthy(n)] or names
            if self.policy == "round-robin":
                choice = up[next(self._rr[kind]) % len(up)]
            else:
                ranked = [n for n in self.preference(kind, key) if n in up]
                choice = ranked[0]
                if self.load[choice] >= self.max_load:
                    least = min(ranked, key=lambda n: (self.load[n], ranked.index(n)))
                    if least != choice:
                        self.fallbacks += 1
                        choice = least
            self.load[choice] += 1
            self.picks[choice] += 1
            return choice

    def acquire(self, name: str) -> None:
        """Counts a call on a replica chosen earlier (a multi-agent request's pinned replica)."""
        with self._mu:
            self.load[name] += 1
            self.picks[name] += 1

    def release(self, name: str) -> None:
        with self._mu:
            self.load[name] = max(0, self.load[name] - 1)

    def mark_failed(self, name: str) -> None:
        with self._mu:
            self.failed_at[name] = time.monotonic()

    def mark_ok(self, name: str) -> None:
        with self._mu:
            self.failed_at.pop(name, None)
