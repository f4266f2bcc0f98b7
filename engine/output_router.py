"""Hands each request's step outputs to whoever submitted it.

One engine serves several callers at once (a `generate` call, a `stream` generator, the
multi-agent loop, a user's own `add_request`/`step` loop): whichever of them runs a step,
every output goes to its request's owner and waits there until that owner collects it. An
owner that has not collected yet holds at most one pending output per request: a newer one
absorbs the older's delta, so nothing is lost and nothing piles up.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Hashable

from baton.engine.outputs import RequestOutput

DEFAULT_OWNER = "add_request"


class OutputRouter:
    def __init__(self):
        self._owner: dict[str, Hashable] = {}
        self._boxes: dict[Hashable, OrderedDict[str, RequestOutput]] = {DEFAULT_OWNER: OrderedDict()}

    def register(self, request_id: str, owner: Hashable) -> None:
        self._owner[request_id] = owner
        self._boxes.setdefault(owner, OrderedDict())

    def post(self, out: RequestOutput) -> None:
        """Queues `out` for its request's owner; a finished request is forgotten here."""
        owner = self._owner.get(out.request_id)
        if owner is None:
            return
        if out.finished:
            del self._owner[out.request_id]
        box = self._boxes.setdefault(owner, OrderedDict())
        prev = box.get(out.request_id)
        if prev is not None:
            out = replace(out, delta=prev.delta + out.delta)
        box[out.request_id] = out

    def drop_pending(self, request_id: str) -> None:
        """Discards a request's uncollected output (its owner is about to get a final one)."""
        owner = self._owner.get(request_id)
        if owner is not None:
            self._boxes[owner].pop(request_id, None)

    def forget(self, request_id: str) -> None:
        self.drop_pending(request_id)
        self._owner.pop(request_id, None)

    def owner_of(self, request_id: str) -> Hashable | None:
        return self._owner.get(request_id)

    def has_pending(self, owner: Hashable) -> bool:
        return bool(self._boxes.get(owner))

    def take(self, owner: Hashable) -> list[RequestOutput]:
        box = self._boxes.get(owner)
        if not box:
            return []
        outs = list(box.values())
        box.clear()
        return outs

    def requests_of(self, owner: Hashable) -> list[str]:
        return [rid for rid, o in self._owner.items() if o == owner]

    def close(self, owner: Hashable) -> None:
        """Forgets an owner's mailbox (its requests must be finished or aborted first)."""
        if owner != DEFAULT_OWNER:
            self._boxes.pop(owner, None)
