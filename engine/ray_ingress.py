"""The ingress side of `baton serve --ray`: an engine client that serves the OpenAI app of
engine/openai_server.py over model replicas in other processes (Ray Serve deployments).

RemoteEngine offers what `create_app` uses of an AsyncEngine (engines, team, add_chat,
add_request, start_multi_agent, stats, add_listener), so the HTTP layer, its errors and its
model names are the single-process server's. Each call goes to a replica picked by the
AffinityRouter (engine/ray_affinity.py) and streams through a RemoteStream, which resumes a
request on another replica when its replica fails (engine/ray_stream.py). Multi-agent requests
run MultiAgent's own stage generator here, stages on replicas (engine/ray_team.py).
Per-replica metrics: engine/ray_metrics.py.

No Ray import here: replicas are reached through a ReplicaSet (engine/ray_serve.py), so these
modules are also driven by in-process fakes (tests/engine/test_ray_ingress.py).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from baton.engine.async_engine import FINAL_STAGES, MultiAgentEvent, _AnswerText
from baton.engine.multi_agent import MODES
from baton.engine.openai_protocol import ApiError
from baton.engine.outputs import RequestOutput
from baton.engine.ray_affinity import AffinityRouter, chat_key, prompt_key
from baton.engine.ray_stream import RemoteStream, describe, is_request_error, unwrap
from baton.engine.ray_team import RemoteModel, RemoteMultiAgentStream, RemoteTeam, _RemoteRun
from baton.engine.sampling_params import SamplingParams
from baton.errors import InvalidRequestError, QueueFullError

logger = logging.getLogger("baton")


@dataclass
class Pool:
    """The replicas of one served checkpoint: kind "small", "large" or "model"."""

    kind: str
    name: str  # the served model name
    checkpoint: str
    replicas: list[str]


class RemoteEngine:
    """The engine client of the Ray ingress (see the module docstring)."""

    def __init__(self, pools: list[Pool], replicas, *, team_options: dict | None = None, max_queue: int = 256,
                 routing: str = "affinity", max_load: int = 32, prefix_chars: int = 256,
                 admission_timeout_s: float = 60.0, progress_timeout_s: float = 120.0, attempts: int = 0,
                 stats_timeout_s: float = 5.0):
        """pools: the served checkpoints and their replica names. replicas: a ReplicaSet.
        team_options: MultiAgent options when pools hold a "small" and a "large" one.
        attempts: replicas a request may try (0: every replica of its model once)."""
        self.pools = {p.kind: p for p in pools}
        self.replicas = replicas
        self.team_options = team_options
        self.max_queue = max_queue
        self.router = AffinityRouter({p.kind: p.replicas for p in pools}, policy=routing, max_load=max_load)
        self.prefix_chars = prefix_chars
        self.admission_timeout_s, self.progress_timeout_s = admission_timeout_s, progress_timeout_s
        self.attempts, self.stats_timeout_s = attempts, stats_timeout_s
        self.engines: dict[str, RemoteModel] = {}
        self.team: RemoteTeam | None = None
        self.retries = 0
        self.failures: dict[str, int] = {}
        self.finish_counts: dict[str, int] = {}
        self._listeners: list = []
        self._multi_agent = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._snapshot: tuple[float, dict] = (0.0, {})

    async def connect(self, timeout_s: float = 600.0) -> None:
        """Reads each model's limits from one of its replicas (waiting for them to start) and
        builds the processors and, for a small + large pair, the team."""
        self._loop = asyncio.get_running_loop()
        models = {}
        for kind, pool in self.pools.items():
            info = await asyncio.wait_for(self.replicas.call(pool.replicas[0], "info"), timeout_s)
            models[kind] = RemoteModel(pool.checkpoint, max_seq_len=info["max_seq_len"],
                                       eos_token_ids=info["eos_token_ids"], max_image_pixels=info["max_image_pixels"])
            self.engines[pool.name] = models[kind]
        if self.team_options is not None and {"small", "large"} <= set(models):
            team = RemoteTeam(models["small"], models["large"], **self.team_options)
            team.client = self
            self.team = team

    # -- what the OpenAI app calls -----------------------------------------------------------
    def remote_model(self, kind: str) -> RemoteModel:
        return self.engines[self.pools[kind].name]

    def max_attempts(self, kind: str) -> int:
        return self.attempts or max(2, len(self.pools[kind].replicas))

    def _kind(self, model: str | None) -> str:
        for kind, pool in self.pools.items():
            if model is None or pool.name == model:
                return kind
        raise InvalidRequestError(f"unknown model {model!r}; served: {', '.join(self.engines)}")

    async def add_chat(self, messages, params=None, *, model: str | None = None, request_id=None) -> RemoteStream:
        params = params if params is not None else SamplingParams()
        stream = RemoteStream(self, self._kind(model), "chat", messages, params, chat_key(messages, self.prefix_chars))
        return await stream.open()

    async def add_request(self, prompt, params=None, *, model: str | None = None, request_id=None) -> RemoteStream:
        params = params if params is not None else SamplingParams()
        stream = RemoteStream(self, self._kind(model), "prompt", prompt, params, prompt_key(prompt, self.prefix_chars))
        return await stream.open()

    def start_multi_agent(self, messages, mode: str = "auto", *, selector=None, budget=None) -> RemoteMultiAgentStream:
        from baton.engine.multi_agent import SELECTORS

        if self.team is None:
            raise InvalidRequestError("multi-agent modes need a small and a large model (team=MultiAgent(...))")
        if mode not in MODES:
            raise InvalidRequestError(f"mode must be one of {MODES}, got {mode!r}")
        if selector is not None and selector not in SELECTORS:
            raise InvalidRequestError(f"selector must be one of {SELECTORS}, got {selector!r}")
        if self._multi_agent >= self.max_queue:
            raise QueueFullError(f"server overloaded: {self._multi_agent} multi-agent requests running "
                                 f"(max_queue={self.max_queue}); retry later")
        stream = RemoteMultiAgentStream()
        stream.task = asyncio.ensure_future(self._run_team(stream, messages, mode, selector, budget))
        return stream

    async def _run_team(self, stream: RemoteMultiAgentStream, messages, mode, selector, budget) -> None:
        self._multi_agent += 1
        answer, final_stages, started = _AnswerText(), FINAL_STAGES[mode], False
        put = stream.queue.put_nowait

        def on_output(stage, out):
            nonlocal started
            if not started:
                started = True
                put(MultiAgentEvent("started"))
            if stage.name in final_stages and out.delta:
                text = answer.feed(out.delta)
                if text:
                    put(MultiAgentEvent("delta", text=text))
            if out.finished:
                put(MultiAgentEvent("stage", stage_name=stage.name, model=stage.model, output=out))

        try:
            team = self.team
            selector = selector or team.selector
            run = _RemoteRun(self, messages, mode, selector, team.budget if budget is None else budget, on_output)
            res = await run.run()
            rest = answer.finish(res.answer)
            if rest:
                put(MultiAgentEvent("delta", text=rest))
            put(MultiAgentEvent("result", result=res))
        except asyncio.CancelledError:
            pass
        except BaseException as e:  # noqa: BLE001 - the consumer gets it
            put(e)
        finally:
            self._multi_agent -= 1

    # -- calls outside the streams ----------------------------------------------------------
    def call_sync(self, kind: str, replica: str | None, key: bytes, method: str, *args, timeout_s: float = 120.0):
        """From a worker thread: one unary call on a replica of `kind` (`replica` if given)."""
        name = replica if replica is not None else self.router.pick(kind, key)
        if replica is not None:
            self.router.acquire(name)
        try:
            future = asyncio.run_coroutine_threadsafe(self.replicas.call(name, method, *args), self._loop)
            return future.result(timeout_s)
        except Exception as e:  # noqa: BLE001
            if is_request_error(e):
                raise unwrap(e) from None
            raise ApiError(503, f"replica {name} failed: {describe(e)}", "server_error", "replica_unavailable")
        finally:
            self.router.release(name)

    # -- metrics -----------------------------------------------------------------------------
    def add_listener(self, fn) -> None:
        self._listeners.append(fn)

    def notify(self, model: str, out: RequestOutput) -> None:
        self.finish_counts[out.finish_reason] = self.finish_counts.get(out.finish_reason, 0) + 1
        for fn in self._listeners:
            try:
                fn(model, out)
            except Exception:  # noqa: BLE001 - a metrics hook never fails a request
                logger.exception("output listener failed")

    async def replica_stats(self) -> dict[str, dict | None]:
        """Each replica's AsyncEngine.stats(), None for one that did not answer."""
        names = [n for pool in self.pools.values() for n in pool.replicas]

        async def one(name):
            try:
                return await asyncio.wait_for(self.replicas.call(name, "stats"), self.stats_timeout_s)
            except Exception:  # noqa: BLE001 - a dead replica is reported as down
                return None

        return dict(zip(names, await asyncio.gather(*(one(n) for n in names))))

    def snapshot(self) -> dict[str, dict | None]:
        """replica_stats(), from a worker thread (the metrics scrape), cached for half a second."""
        at, snap = self._snapshot
        if time.monotonic() - at < 0.5 or self._loop is None or _on_loop(self._loop):
            return snap
        snap = asyncio.run_coroutine_threadsafe(self.replica_stats(), self._loop).result(self.stats_timeout_s + 5)
        self._snapshot = (time.monotonic(), snap)
        return snap

    def stats(self) -> dict:
        """AsyncEngine.stats() summed over the replicas (per served model), for ServerMetrics."""
        snap = self.snapshot()
        models: dict[str, dict] = {}
        totals = {"waiting": 0, "in_flight": 0}
        for pool in self.pools.values():
            agg: dict = {}
            for name in pool.replicas:
                s = snap.get(name)
                if not s:
                    continue
                for key in totals:
                    totals[key] += s.get(key, 0)
                for values in s["models"].values():
                    for k, v in values.items():
                        if isinstance(v, (int, float)) and not isinstance(v, bool):
                            agg[k] = agg.get(k, 0) + v
            models[pool.name] = agg or _EMPTY_STATS
        return {"models": models, "waiting": totals["waiting"], "in_flight": totals["in_flight"],
                "multi_agent_in_flight": self._multi_agent, "finished": dict(self.finish_counts)}

    def shutdown(self) -> None:
        pass


_EMPTY_STATS = {k: 0 for k in ("kv_blocks_total", "kv_blocks_free", "kv_blocks_cached", "prefix_cache_queried_tokens",
                               "prefix_cache_hit_tokens", "encoder_cache_hits", "encoder_cache_misses",
                               "num_preemptions", "running", "waiting")}


def _on_loop(loop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
