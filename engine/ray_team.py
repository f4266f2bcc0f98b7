"""Multi-agent requests in the Ray ingress: MultiAgent's own stage generator runs here and
every stage runs on a replica (through RemoteStream), all stages of one request on the replica
of each model they first reached.

RemoteModel stands in for a replicated model (processor and limits, no weights), so MultiAgent
builds its prompt builders unchanged; _RemoteRun follows the stage protocol of
MultiAgent._drive (asked stages, side stages from callbacks' Reactions, `resolve`).
"""
from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from baton.engine.async_engine import EventStream
from baton.engine.llm import LLM
from baton.engine.multi_agent import MultiAgent, MultiAgentResult, _record
from baton.engine.outputs import RequestOutput
from baton.engine.ray_affinity import chat_key, prompt_key
from baton.engine.ray_stream import RemoteStream
from baton.engine.sampling_params import SamplingParams
from baton.errors import BatonError, InvalidRequestError, QueueFullError

# the replicas a multi-agent request is pinned to, seen by the stage generator's worker thread
_PINNED: contextvars.ContextVar = contextvars.ContextVar("baton_pinned", default=None)

if TYPE_CHECKING:
    from baton.engine.ray_ingress import RemoteEngine


class RemoteModel(LLM):
    """The ingress's stand-in for a model that replicas serve: its processor (tokenizer, chat
    template, image preprocessing) and limits, without weights or a KV pool. It is an LLM so
    MultiAgent builds its prompt builders over it unchanged; engine calls are never made on it."""

    def __init__(self, checkpoint: str, *, max_seq_len: int, eos_token_ids, max_image_pixels):
        from baton.models.processor import Processor

        self.model_path = Path(checkpoint)
        self.processor = Processor(checkpoint)
        self.processor.max_image_pixels = max_image_pixels
        self.max_seq_len = max_seq_len
        self.eos_token_ids = set(eos_token_ids)


class RemoteTeam(MultiAgent):
    """MultiAgent over RemoteModels: the stage generator runs in the ingress, stages run on
    replicas (RemoteEngine.run_multi_agent drives it)."""

    client: "RemoteEngine"

    def _attention_scores(self, reason_ids, reasoning_ids, answer, images):
        """The attention selector's scoring pass, on the small replica that ran the reasoning
        (called from the stage generator's worker thread)."""
        import torch

        answer_prompt = self.builders["small"].after_reasoning(reason_ids, reasoning_ids)
        if not answer.token_ids or not reasoning_ids:
            return torch.zeros(len(reasoning_ids))
        prompt = {"prompt_token_ids": answer_prompt + list(answer.token_ids), "images": images}
        pinned = _PINNED.get() or {}
        return self.client.call_sync("small", pinned.get("small"), prompt_key(prompt), "score", prompt,
                                     len(answer_prompt), len(reason_ids), len(reason_ids) + len(reasoning_ids))

    def _load(self):
        return {m: 0 for m in self.engines}  # the latency router's load input is per process


class RemoteMultiAgentStream(EventStream):
    """A multi-agent request's MultiAgentEvents, as AsyncEngine's MultiAgentStream."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def _next_event(self):
        return await self.queue.get()

    def _stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


_DONE = object()


def _send(gen, value):
    """gen.send(value), or _DONE when the generator returns (StopIteration cannot cross a Future)."""
    try:
        return gen.send(value)
    except StopIteration:
        return _DONE


class _RemoteRun:
    """Drives one request's stage generator with stages on replicas, following the protocol of
    MultiAgent._drive: asked stages, side stages from callbacks' Reactions, `resolve` cutting the
    asked stages short."""

    def __init__(self, client: "RemoteEngine", messages, mode, selector, budget, on_output):
        self.client, self.team = client, client.team
        self.on_output = on_output
        self.t0 = time.perf_counter()
        self.result = MultiAgentResult(answer="", mode=mode)
        self.gen = self.team._pipeline(messages, mode, selector, budget, self.result)
        self.key = chat_key(messages, client.prefix_chars)
        self.pinned: dict = {}
        self.events: asyncio.Queue = asyncio.Queue()
        self.ids = 0
        self.stages: dict[int, tuple] = {}  # in flight: key -> (stage, start, task, stream)
        self.asked: list[int] = []
        self.latest: dict[int, RequestOutput] = {}
        self.pending: set[int] = set()
        self.done = False

    async def run(self) -> MultiAgentResult:
        _PINNED.set(self.pinned)
        try:
            await self._advance(None)
            while not self.done:
                key, item = await self.events.get()
                if key not in self.stages:
                    continue  # a stage cut short: its later outputs are dropped
                if isinstance(item, BaseException):
                    raise item
                await self._output(key, item)
        except BatonError as e:
            if isinstance(e, (InvalidRequestError, QueueFullError)):
                raise
            raise InvalidRequestError(str(e)) from None
        finally:
            for key in list(self.stages):
                self._cut(key)
            self.gen.close()
        self.result.seconds = time.perf_counter() - self.t0
        if self.team.router is not None:
            self.team.router.observe(self.result.stages)
        return self.result

    async def _advance(self, sent) -> None:
        wanted = await asyncio.to_thread(_send, self.gen, sent)  # prompt building: off the event loop
        if wanted is _DONE:
            self.done = True
            return
        self.asked, self.latest, self.pending = [], {}, set()
        for stage in wanted:
            self.asked.append(await self._submit(stage))

    async def _submit(self, stage) -> int:
        team = self.team
        params = SamplingParams(temperature=0, max_tokens=stage.max_tokens,
                                stop=None if team.exact_lengths else stage.stop,
                                ignore_eos=team.exact_lengths, token_stats=stage.token_stats)
        prompt = {"prompt_token_ids": list(stage.prompt_ids), "images": list(stage.images)}
        stream = RemoteStream(self.client, stage.model, "prompt", prompt, params, self.key, pinned=self.pinned,
                              errors_as_output=False, notify=False)
        start = time.perf_counter() - self.t0
        await stream.open()
        self.ids += 1
        key = self.ids
        task = asyncio.ensure_future(self._pump(key, stream))
        self.stages[key] = (stage, start, task, stream)
        self.pending.add(key)
        return key

    async def _pump(self, key: int, stream: RemoteStream) -> None:
        try:
            async for out in stream:
                self.events.put_nowait((key, out))
        except asyncio.CancelledError:
            stream.abort()
            raise
        except BaseException as e:  # noqa: BLE001 - the run loop raises it
            self.events.put_nowait((key, e))

    async def _output(self, key: int, out: RequestOutput) -> None:
        stage = self.stages[key][0]
        if self.on_output is not None:
            self.on_output(stage, out)
        if not out.finished:
            self.latest[key] = out
            if stage.on_stream is not None:
                await self._react(stage.on_stream, out)
            return
        self._finished(key, out)
        if stage.on_finish is not None:
            await self._react(stage.on_finish, out)
        await self._maybe_advance()

    def _finished(self, key: int, out: RequestOutput) -> None:
        stage, start, _, _ = self.stages.pop(key)
        self.result.stages.append(_record(stage, out, start, time.perf_counter() - self.t0))
        self.latest[key] = out
        self.pending.discard(key)

    def _cut(self, key: int) -> RequestOutput:
        """Stops a stage in flight; its output so far, finished as "abort"."""
        stage, _, task, stream = self.stages[key]
        task.cancel()
        stream.abort()
        last = stream.last
        if last is None:
            last = RequestOutput(request_id=f"stage-{key}", prompt_token_ids=list(stage.prompt_ids), token_ids=[],
                                 text="", finish_reason=None)
        return replace(last, finish_reason="abort", delta="")

    async def _react(self, callback, out: RequestOutput) -> None:
        reaction = callback(out)
        if reaction is None:
            return
        for stage in reaction.stages:
            await self._submit(stage)
        if reaction.resolve:
            for key in self.asked:
                if key in self.stages:
                    self._finished(key, self._cut(key))
            await self._maybe_advance()

    async def _maybe_advance(self) -> None:
        if not self.pending and not self.done:
            await self._advance([self.latest[k] for k in self.asked])
