"""RemoteStream: one request on the replicas of one model, for the Ray ingress
(engine/ray_ingress.py): an async iterator of RequestOutputs like AsyncEngine's RequestStream.

A replica that fails mid-request (its process died, or no output for the client's
`progress_timeout_s`) is marked failed and the request resumes on another replica from its
prompt + the tokens generated so far (greedy requests continue exactly); when no replica is
left it ends with a clear error: ApiError 503 before the first token, an error output (a 500,
or an SSE error event) after it. Never a hang: every wait on a replica has a timeout.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from baton.engine.detokenizer import IncrementalDetokenizer
from baton.engine.openai_protocol import ApiError
from baton.engine.outputs import RequestOutput
from baton.engine.sampling_params import SamplingParams
from baton.errors import BatonError

logger = logging.getLogger("baton")

if TYPE_CHECKING:
    from baton.engine.ray_ingress import RemoteEngine


def unwrap(e: BaseException) -> BaseException:
    """A replica's own error (Ray wraps it; `.cause` is the original) or `e` itself."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


def is_request_error(e: BaseException) -> bool:
    """The request's fault (bad input, a full queue): retrying elsewhere would not help."""
    return isinstance(unwrap(e), BatonError)


def describe(e) -> str:
    if e is None:
        return "no replica"
    if isinstance(e, asyncio.TimeoutError):
        return "timed out waiting for the replica"
    text = str(unwrap(e)).strip().splitlines()
    return f"{type(unwrap(e)).__name__}: {text[0] if text else ''}"


class RemoteStream:
    """One request on one model's replicas: an async iterator of RequestOutputs (cumulative,
    `.delta` new text) like AsyncEngine's RequestStream, surviving replica failures."""

    def __init__(self, client: "RemoteEngine", kind: str, payload_kind: str, payload, params: SamplingParams,
                 key: bytes, *, pinned: dict | None = None, errors_as_output: bool = True, notify: bool = True):
        self.client, self.kind = client, kind
        self.model = client.pools[kind].name
        self.payload_kind, self.payload, self.params, self.key = payload_kind, payload, params, key
        self.pinned, self.errors_as_output, self.notify = pinned, errors_as_output, notify
        self.finished = False
        self.replica: str | None = None
        self.tried: list[str] = []
        self._gen = None
        self._base: RequestOutput | None = None  # the output when the current attempt began
        # A resumed attempt's replica sees the earlier tokens as prompt, so its text lacks the
        # bytes of a character those tokens left unfinished (and a stop string that spans the
        # cut): from the first resume on, the text comes from this detokenizer over all tokens.
        self._detok: IncrementalDetokenizer | None = None
        self._emitted = 0  # characters handed out as deltas
        self._cut = False  # that detokenizer ended the request while its replica still ran
        self._first: RequestOutput | None = None
        self._last: RequestOutput | None = None
        self.retries = 0

    # -- attaching to a replica -----------------------------------------------------------------
    def _choose(self) -> str:
        router = self.client.router
        if router.policy != "affinity":  # a generic balancer: every call on its own
            return router.pick(self.kind, self.key, exclude=self.tried)
        pinned = self.pinned.get(self.kind) if self.pinned is not None else None
        if pinned is not None and pinned not in self.tried:
            router.acquire(pinned)
            return pinned
        name = router.pick(self.kind, self.key, exclude=self.tried)
        if self.pinned is not None:
            self.pinned[self.kind] = name
        return name

    def _detach(self, cancel: bool) -> None:
        if self._gen is not None and cancel:
            try:
                self._gen.cancel()
            except Exception:  # noqa: BLE001 - the replica may be gone already
                pass
        self._gen = None
        if self.replica is not None:
            self.client.router.release(self.replica)
            self.replica = None

    def _resume_payload(self):
        """(payload kind, payload, params) that continue the request after the outputs so far."""
        base = self._last
        if base is None:
            return self.payload_kind, self.payload, self.params
        if self.payload_kind == "chat":
            _, images = self.client.remote_model(self.kind).processor.render_chat(self.payload)
        else:
            images = self.payload.get("images", []) if isinstance(self.payload, dict) else []
        ids = list(base.prompt_token_ids) + list(base.token_ids)
        left = self.params.max_tokens - len(base.token_ids)
        return "prompt", {"prompt_token_ids": ids, "images": list(images)}, replace(self.params, max_tokens=left)

    async def open(self) -> "RemoteStream":
        """Starts the request on a replica; raises the replica's InvalidRequestError /
        QueueFullError as they are, ApiError 503 when no replica takes it."""
        await self._attach()
        return self

    async def _attach(self) -> None:
        client = self.client
        kind, payload, params = self._resume_payload()
        last_error = None
        while len(self.tried) < client.max_attempts(self.kind):
            self.replica = name = self._choose()
            self.tried.append(name)
            try:
                self._gen = client.replicas.open_stream(name, "generate", kind, payload, params)
                marker = await asyncio.wait_for(self._gen.__anext__(), client.admission_timeout_s)
                if marker is not None:
                    raise BatonError(f"replica {name} answered out of protocol: {type(marker).__name__}")
                self._base = self._last
                if self._base is not None:
                    self._detok = IncrementalDetokenizer(client.remote_model(self.kind).processor.decode,
                                                         self.params.stop)
                    self._detok.replay(list(self._base.token_ids), self._emitted)
                client.router.mark_ok(name)
                return
            except asyncio.CancelledError:
                self._detach(cancel=True)
                raise
            except Exception as e:  # noqa: BLE001 - sorted below
                self._detach(cancel=True)
                if is_request_error(e):
                    self.finished = True
                    raise unwrap(e) from None
                last_error = e
                self._failed(name, e)
        self.finished = True
        raise ApiError(503, f"no replica of {self.model} could serve the request (tried {', '.join(self.tried)}): "
                       f"{describe(last_error)}", "server_error", "replica_unavailable")

    def _failed(self, name: str, e: BaseException) -> None:
        logger.warning("replica %s failed a request: %s", name, describe(e))
        self.client.router.mark_failed(name)
        self.client.failures[name] = self.client.failures.get(name, 0) + 1

    # -- outputs --------------------------------------------------------------------------------
    def __aiter__(self):
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        while True:
            name = self.replica
            try:
                item = await asyncio.wait_for(self._gen.__anext__(), self.client.progress_timeout_s)
            except asyncio.CancelledError:
                self.abort()
                raise
            except StopAsyncIteration:
                error: BaseException = BatonError(f"replica {name} ended the stream before the request finished")
            except Exception as e:  # noqa: BLE001 - sorted below
                if is_request_error(e):
                    self._end(None)
                    raise unwrap(e) from None
                error = e
            else:
                out = self._merge(item)
                self._emitted += len(out.delta)
                if out.finished:
                    self._end(out)
                return out
            # the replica failed mid-request: resume elsewhere from the tokens so far
            self._detach(cancel=True)
            self._failed(name, error)
            if self._last is not None and len(self._last.token_ids) >= self.params.max_tokens:
                out = replace(self._last, finish_reason="length", delta="")
                self._end(out)
                return out
            try:
                self.retries += 1
                self.client.retries += 1
                await self._attach()
            except ApiError as e:
                if not self.errors_as_output or self._last is None:
                    raise
                out = replace(self._last, finish_reason="error", delta="", error=e.message)
                self._end(out)
                return out

    def _merge(self, item: RequestOutput) -> RequestOutput:
        if self._first is None:
            self._first = item
        base = self._base
        if base is not None:  # a resumed attempt: its prompt holds the earlier tokens
            logprobs = None if base.logprobs is None and item.logprobs is None else \
                list(base.logprobs or []) + list(item.logprobs or [])
            stats = item.token_stats
            if stats is not None and base.token_stats is not None:
                stats = {k: list(base.token_stats.get(k, [])) + list(v) for k, v in stats.items()}
            item = replace(item, prompt_token_ids=base.prompt_token_ids,
                           token_ids=list(base.token_ids) + list(item.token_ids),
                           logprobs=logprobs, token_stats=stats, num_cached_tokens=base.num_cached_tokens,
                           num_vision_encoder_calls=base.num_vision_encoder_calls + item.num_vision_encoder_calls,
                           metrics=replace(item.metrics, arrival_time=base.metrics.arrival_time,
                                           first_token_time=base.metrics.first_token_time))
            item = self._retext(item)
        self._last = item
        return item

    def _retext(self, item: RequestOutput) -> RequestOutput:
        """A resumed attempt's output with its text (and delta) from the stream's own
        detokenizer; a stop string found there ends the request as the engine would have."""
        detok, seen = self._detok, len(self._last.token_ids)  # a resumed attempt: _last is set
        ids = list(item.token_ids)
        for i in range(seen, len(ids)):
            if detok.add(ids[i]):
                self._cut, n = not item.finished, i + 1
                stats = None if item.token_stats is None else {k: v[:n] for k, v in item.token_stats.items()}
                item = replace(item, token_ids=ids[:n], finish_reason="stop", token_stats=stats,
                               logprobs=None if item.logprobs is None else item.logprobs[:n])
                break
        if item.finished:
            detok.flush()
        return replace(item, text=detok.text, delta=detok.delta(item.finished))

    def _end(self, out: RequestOutput | None) -> None:
        self.finished = True
        self._detach(cancel=out is None or not out.finished or self._cut)
        if out is not None and self.notify:
            self.client.notify(self.model, out)

    def abort(self) -> None:
        """Stops the request (its replica frees its blocks); a no-op once finished."""
        if self.finished:
            return
        self.finished = True
        self._detach(cancel=True)
        if self._last is not None and self.notify:
            self.client.notify(self.model, replace(self._last, finish_reason="abort", delta=""))

    async def aclose(self) -> None:
        self.abort()

    @property
    def last(self) -> RequestOutput | None:
        return self._last
