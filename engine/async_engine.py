"""AsyncEngine: the asyncio API of one or more LLM engines (and, over a small + large pair,
the multi-agent layer), the layer `baton serve` is built on.

One background thread runs the step loop for the requests submitted here (this engine is
their owner on each LLM) and hands each request's outputs to its own asyncio queue with
`loop.call_soon_threadsafe`; when none of its requests is in flight the thread sleeps on an
event. Prompts are tokenised and images decoded in a small admission pool, never on the
event loop. Multi-agent requests run `MultiAgent.run` in worker threads that drive their
stages as their own owner on the same engines, so their stages share steps with plain
requests. Requests that have not produced a token yet (plus multi-agent requests not yet
started) form the waiting queue; past `max_queue` new requests are refused with
QueueFullError instead of queueing without limit.

    engine = AsyncEngine(llm)
    async for out in engine.generate(prompt, SamplingParams(max_tokens=32)):
        print(out.delta, end="")
    async for event in engine.multi_agent(messages, mode="auto"):   # needs team=MultiAgent(...)
        ...   # "delta" events stream the final answer; the last is "result" (a MultiAgentResult)

Cancelling the consuming task (a vanished HTTP client) aborts the request and frees its KV
blocks. A step that raises fails only the requests of that step; the loop keeps serving.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from baton.errors import BatonError, InvalidRequestError, QueueFullError

logger = logging.getLogger("baton")

# the stage whose tokens are a multi-agent request's answer, per mode ("auto" agreeing on the
# brief answers has none: its answer is known only once both briefs are done)
FINAL_STAGES = {
    "small": {"small-brief"}, "large": {"large-brief"}, "small-reason": {"small-answer"},
    "large-reason": {"large-answer"}, "transfer": {"large-final"}, "auto": {"large-final", "large-answer"},
}


class _Cancelled(BaseException):
    """Raised inside a multi-agent worker to stop a run whose consumer went away."""


class _Mailbox:
    """A queue read by one asyncio task and fed from other threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._items: deque = deque()
        self._waiter: asyncio.Future | None = None

    def put(self, item) -> bool:
        """From any thread."""
        try:
            self.loop.call_soon_threadsafe(self.put_local, item)
            return True
        except RuntimeError:  # the consumer's event loop is closed
            return False

    def put_local(self, item) -> None:
        """On the consumer's event loop."""
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def put_front(self, item) -> None:
        self._items.appendleft(item)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self):
        return self._items.popleft()

    async def get(self):
        while not self._items:
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


def _post_all(items) -> None:
    for box, item in items:
        box.put_local(item)


class RequestStream:
    """One request's outputs, as an async iterator (RequestOutput with .delta, .finished).
    `abort()` stops the request; cancelling the task that iterates does the same."""

    def __init__(self, engine: "AsyncEngine", model: str, request_id: str, loop):
        self.model = model
        self.request_id = request_id
        self.finished = False
        self._engine = engine
        self._box = _Mailbox(loop)
        self._active = False  # add_request returned: the step loop serves it

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.finished:
            raise StopAsyncIteration
        try:
            out = await self._box.get()
        except BaseException:  # cancelled while waiting: the consumer is gone
            self.abort()
            raise
        if isinstance(out, BaseException):
            self.finished = True
            raise out
        while not out.finished and not self._box.empty():  # a slow consumer gets one merged output
            nxt = self._box.get_nowait()
            if isinstance(nxt, BaseException):
                self._box.put_front(nxt)
                break
            out = replace(nxt, delta=out.delta + nxt.delta)  # outputs are cumulative but for delta
        self.finished = out.finished
        return out

    def abort(self) -> None:
        """Stops the request (a no-op once it finished); its blocks are freed by the step thread."""
        if not self.finished:
            self.finished = True
            self._engine._abort(self.model, self.request_id)

    async def aclose(self) -> None:
        self.abort()


@dataclass
class MultiAgentEvent:
    """kind "started" (stages are in flight), "delta" (text of the final answer), "stage" (a
    stage finished: stage_name, model, output), "result" (the MultiAgentResult, always last)."""

    kind: str
    text: str = ""
    stage_name: str | None = None
    model: str | None = None
    output: Any = None
    result: Any = None


class EventStream:
    """MultiAgentEvents as an async iterator that ends after "result" or raises the exception it
    receives; a consumer that stops waiting aborts the request. Subclasses say where events come
    from (`_next_event`) and how a request stops (`_stop`)."""

    finished = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> MultiAgentEvent:
        if self.finished:
            raise StopAsyncIteration
        try:
            event = await self._next_event()
        except BaseException:
            self.abort()
            raise
        if isinstance(event, BaseException):
            self.finished = True
            raise event
        self.finished = event.kind == "result"
        return event

    async def _next_event(self):
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        if not self.finished:
            self.finished = True
            self._stop()

    async def aclose(self) -> None:
        self.abort()


class MultiAgentStream(EventStream):
    """A multi-agent request's events, as an async iterator; `abort()` stops its stages."""

    def __init__(self, engine: "AsyncEngine", loop):
        self._engine = engine
        self._box = _Mailbox(loop)
        self.cancelled = threading.Event()

    async def _next_event(self):
        return await self._box.get()

    def _stop(self) -> None:
        self.cancelled.set()
        self._engine._wake.set()


class _AnswerText:
    """Streams a final stage's deltas so that, joined, they equal the stripped answer
    (MultiAgentResult.answer is `text.strip()`): leading whitespace is dropped and trailing
    whitespace is held back until more text follows."""

    def __init__(self):
        self.sent = ""
        self._held = ""

    def feed(self, delta: str) -> str:
        text = self._held + delta
        if not self.sent:
            text = text.lstrip()
        body = text.rstrip()
        self._held = text[len(body):]
        self.sent += body
        return body

    def finish(self, answer: str) -> str:
        """The rest of `answer` not sent yet (all of it if what was sent is not its prefix)."""
        return answer[len(self.sent):] if answer.startswith(self.sent) else ""


class AsyncEngine:
    def __init__(self, engines=None, *, team=None, max_queue: int = 256, max_multi_agent: int = 16,
                 admission_threads: int = 4, admission_wait_s: float = 0.005):
        """engines: an LLM, or {model name: LLM}. team: a MultiAgent over engines given here
        (or not) for `multi_agent`. max_queue: requests allowed to wait for their first token
        (0 refuses everything: a drain switch). max_multi_agent: multi-agent requests run at once.
        admission_wait_s: how long a step may wait for requests still being tokenised, so a
        burst of arrivals shares one prefill step."""
        from baton.engine.llm import LLM

        if engines is None:
            engines = {}
        elif isinstance(engines, LLM):
            engines = {"default": engines}
        if not isinstance(engines, Mapping) or not all(isinstance(e, LLM) for e in engines.values()):
            raise InvalidRequestError("engines must be an LLM or a mapping of model names to LLM instances")
        if not engines and team is None:
            raise InvalidRequestError("AsyncEngine needs at least one LLM or a team")
        for name, value in (("max_queue", max_queue), ("max_multi_agent", max_multi_agent),
                            ("admission_threads", admission_threads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "max_queue" else 1):
                raise InvalidRequestError(f"{name} must be a non-negative integer, got {value!r}")
        self.engines: dict[str, LLM] = dict(engines)
        self.team = team
        self.max_queue = max_queue
        self.admission_wait_s = admission_wait_s
        self._mu = threading.Lock()
        self._wake = threading.Event()
        self._streams: dict[tuple[str, str], RequestStream] = {}
        self._waiting: set[tuple[str, str]] = set()
        self._active: dict[str, int] = {name: 0 for name in self.engines}
        self._aborts: list[tuple[str, str]] = []
        self._admitting = 0
        self._ma_queued = 0
        self._ma_streams: set[MultiAgentStream] = set()
        self._ids = itertools.count()
        self._listeners: list[Callable] = []
        self.finish_counts: dict[str, int] = {}
        self._closed = False
        self._admit_pool = ThreadPoolExecutor(admission_threads, thread_name_prefix="baton-admit")
        self._ma_pool = ThreadPoolExecutor(max_multi_agent, thread_name_prefix="baton-multi-agent")
        self._thread = threading.Thread(target=self._step_loop, name="baton-step-loop", daemon=True)
        self._thread.start()

    # -- plain requests ----------------------------------------------------------------------
    async def add_request(self, prompt, params=None, *, model: str | None = None,
                          request_id: str | None = None) -> RequestStream:
        """Validates and queues one request (the prompt as LLM.add_request takes it); returns
        its stream. Raises InvalidRequestError (bad request or model name) or QueueFullError."""
        return await self._submit(prompt, False, params, model, request_id)

    async def add_chat(self, messages, params=None, *, model: str | None = None,
                       request_id: str | None = None) -> RequestStream:
        """add_request for OpenAI-style chat messages (the model's chat template is applied)."""
        return await self._submit(messages, True, params, model, request_id)

    async def generate(self, prompt, params=None, *, model: str | None = None, request_id: str | None = None):
        """`async for out in engine.generate(...)`: one request's outputs until it finishes."""
        stream = await self.add_request(prompt, params, model=model, request_id=request_id)
        try:
            async for out in stream:
                yield out
        finally:
            stream.abort()

    async def chat(self, messages, params=None, *, model: str | None = None, request_id: str | None = None):
        stream = await self.add_chat(messages, params, model=model, request_id=request_id)
        try:
            async for out in stream:
                yield out
        finally:
            stream.abort()

    def model_names(self) -> list[str]:
        return list(self.engines)

    def engine_for(self, model: str | None):
        if model is None:
            if not self.engines:
                raise InvalidRequestError("this engine serves no single model")
            return next(iter(self.engines.items()))
        if model not in self.engines:
            raise InvalidRequestError(f"unknown model {model!r}; served: {', '.join(self.engines)}")
        return model, self.engines[model]

    def _check_queue(self) -> None:
        depth = len(self._waiting) + self._ma_queued
        if self._closed:
            raise QueueFullError("the engine is shutting down")
        if depth >= self.max_queue:
            raise QueueFullError(f"server overloaded: {depth} requests waiting (max_queue={self.max_queue}); "
                                 "retry later")

    async def _submit(self, prompt, is_chat: bool, params, model, request_id) -> RequestStream:
        from baton.engine.sampling_params import SamplingParams

        name, llm = self.engine_for(model)
        if params is not None and not isinstance(params, SamplingParams):
            raise InvalidRequestError("params must be a SamplingParams")
        rid = request_id if request_id is not None else f"async-{next(self._ids)}"
        key = (name, rid)
        stream = RequestStream(self, name, rid, asyncio.get_running_loop())
        with self._mu:
            self._check_queue()
            if key in self._streams:
                raise InvalidRequestError(f"request id {rid!r} is already in flight")
            self._streams[key] = stream  # before add_request: a step may produce its first output at once
            self._waiting.add(key)
            self._admitting += 1
        future = self._admit_pool.submit(self._admit, llm, prompt, is_chat, params, rid)
        try:
            await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # the caller left: abort once the request is in
            future.add_done_callback(
                lambda f: self._abort(name, rid) if not f.cancelled() and f.exception() is None else None)
            self._forget(key)
            raise
        except BaseException:
            self._forget(key)
            raise
        with self._mu:
            if self._streams.get(key) is stream:
                stream._active = True
                self._active[name] += 1
        self._wake.set()
        return stream

    def _admit(self, llm, prompt, is_chat: bool, params, rid: str) -> None:
        try:
            if is_chat:
                text, images = llm.processor.render_chat(prompt)
                prompt = {"prompt": text, "images": images}
            llm.add_request(prompt, params, rid, owner=self)
        finally:
            with self._mu:
                self._admitting -= 1

    def _forget(self, key) -> None:
        with self._mu:
            stream = self._streams.pop(key, None)
            self._waiting.discard(key)
            if stream is not None and stream._active:
                self._active[key[0]] -= 1

    def _abort(self, model: str, rid: str) -> None:
        """From any thread: the step thread aborts the request (freeing its blocks) next."""
        self._forget((model, rid))
        with self._mu:
            self._aborts.append((model, rid))
        self._wake.set()

    # -- multi-agent -------------------------------------------------------------------------
    def start_multi_agent(self, messages, mode: str = "auto", *, selector=None, budget=None) -> MultiAgentStream:
        """Queues a multi-agent request; its stream yields MultiAgentEvents, "result" last.
        Raises InvalidRequestError (no team, bad mode or selector) or QueueFullError now; errors
        found while running (bad messages) come out of the stream."""
        from baton.engine.multi_agent import MODES
        from baton.engine.selection import POLICIES

        if self.team is None:
            raise InvalidRequestError("multi-agent modes need a small and a large model (team=MultiAgent(...))")
        if mode not in MODES:
            raise InvalidRequestError(f"mode must be one of {MODES}, got {mode!r}")
        if selector is not None and selector not in POLICIES:
            raise InvalidRequestError(f"selector must be one of {POLICIES}, got {selector!r}")
        stream = MultiAgentStream(self, asyncio.get_running_loop())
        with self._mu:
            self._check_queue()
            self._ma_queued += 1
            self._ma_streams.add(stream)
        self._ma_pool.submit(self._run_team, stream, messages, mode, selector, budget)
        return stream

    async def multi_agent(self, messages, mode: str = "auto", *, selector=None, budget=None):
        """`async for event in engine.multi_agent(messages, mode="auto")`: see start_multi_agent."""
        stream = self.start_multi_agent(messages, mode, selector=selector, budget=budget)
        try:
            async for event in stream:
                yield event
        finally:
            stream.abort()

    def _run_team(self, stream: MultiAgentStream, messages, mode, selector, budget) -> None:
        with self._mu:
            self._ma_queued -= 1
        try:
            if stream.cancelled.is_set():
                return
            answer = _AnswerText()
            final_stages = FINAL_STAGES[mode]
            started = False

            def on_output(i, stage, out):
                nonlocal started
                if stream.cancelled.is_set() or self._closed:
                    raise _Cancelled()
                if not started:
                    started = True
                    stream._box.put(MultiAgentEvent("started"))
                if stage.name in final_stages and out.delta:
                    text = answer.feed(out.delta)
                    if text:
                        stream._box.put(MultiAgentEvent("delta", text=text))
                if out.finished:
                    stream._box.put(MultiAgentEvent("stage", stage_name=stage.name, model=stage.model, output=out))

            try:
                res = self.team.run(messages, mode=mode, selector=selector, budget=budget, on_output=on_output)
            except _Cancelled:
                return
            except BaseException as e:  # noqa: BLE001 - the consumer gets it
                stream._box.put(e)
                return
            rest = answer.finish(res.answer)
            if rest:
                stream._box.put(MultiAgentEvent("delta", text=rest))
            stream._box.put(MultiAgentEvent("result", result=res))
        finally:
            with self._mu:
                self._ma_streams.discard(stream)

    # -- the step loop -----------------------------------------------------------------------
    def add_listener(self, fn: Callable) -> None:
        """fn(model name, RequestOutput) is called (in the step thread) with every final output."""
        self._listeners.append(fn)

    def _step_loop(self) -> None:
        while True:
            self._wake.wait()
            if self._closed:
                return
            self._run_aborts()
            with self._mu:
                busy = [name for name, n in self._active.items() if n > 0]
                if not busy and not self._aborts:
                    self._wake.clear()  # under the lock: a submit after this sets it again
                    continue
            self._await_admissions()
            progressed = False
            for name in busy:
                progressed |= self._step_engine(name)
            if not progressed:
                time.sleep(0.001)  # nothing to run yet (e.g. outputs only after an admission)

    def _await_admissions(self) -> None:
        """Requests being admitted join the next step instead of trickling in one per step:
        waits (at most admission_wait_s) while admission threads are tokenising."""
        deadline = time.monotonic() + self.admission_wait_s
        while self._admitting and time.monotonic() < deadline:
            time.sleep(0.0005)

    def _step_engine(self, name: str) -> bool:
        llm = self.engines[name]
        try:
            outs = llm.step(self)
        except Exception as e:  # noqa: BLE001 - LLM.step fails a bad step itself; this is a last resort
            logger.exception("step of %s failed outside the engine's own handling", name)
            self._fail_all(name, f"engine step failed: {type(e).__name__}: {e}")
            return True
        self._deliver(name, outs)
        return bool(outs) or llm.has_unfinished()

    def _deliver(self, name: str, outs) -> None:
        """Hands a step's outputs to their streams: one wake-up per event loop, not per output."""
        by_loop: dict = {}
        done = []
        with self._mu:
            for out in outs:
                key = (name, out.request_id)
                stream = self._streams.get(key)
                if stream is None:
                    continue  # aborted by its consumer: the abort was counted
                self._waiting.discard(key)
                if out.finished:
                    del self._streams[key]
                    if stream._active:
                        self._active[name] -= 1
                    self.finish_counts[out.finish_reason] = self.finish_counts.get(out.finish_reason, 0) + 1
                    done.append(out)
                by_loop.setdefault(stream._box.loop, []).append((stream._box, out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_post_all, items)
            except RuntimeError:  # that event loop is closed: its requests have no reader
                for box, out in items:
                    self._abort(name, out.request_id)
        for out in done:
            self._notify(name, out)

    def _notify(self, name: str, out) -> None:
        for fn in self._listeners:
            try:
                fn(name, out)
            except Exception:  # noqa: BLE001 - a metrics hook never stops the loop
                logger.exception("output listener failed")

    def _run_aborts(self) -> None:
        with self._mu:
            aborts, self._aborts = self._aborts, []
        for name, rid in aborts:
            out = self.engines[name].abort(rid)
            if out is not None:
                with self._mu:
                    self.finish_counts["abort"] = self.finish_counts.get("abort", 0) + 1
                self._notify(name, out)

    def _fail_all(self, name: str, message: str) -> None:
        with self._mu:
            keys = [k for k in self._streams if k[0] == name]
        for key in keys:
            out = self.engines[name].abort(key[1])
            if out is not None:
                self._deliver(name, [replace(out, finish_reason="error", error=message)])

    # -- introspection and shutdown ----------------------------------------------------------
    def num_waiting(self) -> int:
        with self._mu:
            return len(self._waiting) + self._ma_queued

    def stats(self) -> dict:
        """Per model: LLM.stats(); plus this engine's queue depth, requests in flight and
        finished requests by finish reason (aborts included)."""
        with self._mu:
            in_flight = len(self._streams)
            multi_agent = len(self._ma_streams)
            finished = dict(self.finish_counts)
        return {"models": {name: llm.stats() for name, llm in self.engines.items()},
                "waiting": self.num_waiting(), "in_flight": in_flight, "multi_agent_in_flight": multi_agent,
                "finished": finished}

    def shutdown(self) -> None:
        """Stops the step loop and aborts what is left. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._mu:
            for stream in self._ma_streams:
                stream.cancelled.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self._ma_pool.shutdown(wait=True, cancel_futures=True)
        self._admit_pool.shutdown(wait=True, cancel_futures=True)
        with self._mu:
            streams, self._streams = list(self._streams.values()), {}
        for llm in self.engines.values():
            llm.release(self)
        for stream in streams:
            stream._box.put(BatonError("the engine shut down"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
