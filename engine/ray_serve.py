"""`baton serve --ray`: the OpenAI server scaled out on Ray Serve (pip install -e ".[ray]").

Deployments, all in one Serve application ("baton"):
- one deployment per model replica ("small-0", "small-1", "large-0", ...; num_replicas=1
  each), a ModelReplica wrapping one AsyncEngine over one LLM, with its own resources
  (num_gpus / num_cpus), so the small and the large model land on separate GPUs or nodes;
- "ingress": the FastAPI app of engine/openai_server.py over a RemoteEngine
  (engine/ray_ingress.py), built on the replica by `__serve_build_asgi_app__`.

Why one deployment per replica: affinity needs the ingress to choose the replica of each call,
and a DeploymentHandle of a single-replica deployment is exactly a handle on that replica,
while Serve still health-checks, restarts and places every replica as usual (a replica actor
that dies is replaced by the controller; calls to its handle wait for the new one). The
replica names are stable across restarts, so the hash ring does not move when one restarts.
Serve's own router picks among the replicas of one deployment per call (power of two
choices); a custom RequestRouter could hash a key instead, but that API is alpha in Ray 2.60,
runs inside every handle, and sees replica ids that change on each restart.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field

from ray import serve

from baton.engine.ray_ingress import Pool, RemoteEngine
from baton.engine.ray_metrics import ReplicaCollector

logger = logging.getLogger("baton")
APP_NAME = "baton"


@dataclass
class PoolSpec:
    kind: str  # "small" | "large" | "model"
    name: str  # the served model name
    checkpoint: str
    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict = field(default_factory=dict)  # custom Ray resources (pin a model to some nodes)

    def replica_names(self) -> list[str]:
        return [f"{self.kind}-{i}" for i in range(self.replicas)]


@dataclass
class RayServeConfig:
    pools: list[PoolSpec]
    llm_kwargs: dict = field(default_factory=dict)
    team_options: dict | None = None  # MultiAgent options; None: no multi-agent models
    max_queue: int = 256
    max_multi_agent: int = 16
    api_key: str | None = None
    media: dict = field(default_factory=dict)  # MediaPolicy options
    routing: str = "affinity"
    max_load: int = 32
    prefix_chars: int = 256
    admission_timeout_s: float = 60.0
    progress_timeout_s: float = 120.0
    health_check_period_s: float = 2.0
    health_check_timeout_s: float = 10.0
    max_ongoing_requests: int = 1024
    ingress_num_cpus: float = 0.0


class ModelReplica:
    """One model replica: an AsyncEngine over one LLM."""

    def __init__(self, served_name: str, checkpoint: str, llm_kwargs: dict, engine_kwargs: dict, threads: int):
        import torch

        from baton.engine.async_engine import AsyncEngine
        from baton.engine.llm import LLM

        torch.set_num_threads(max(1, threads))  # replicas sharing a node do not oversubscribe it
        self.name = served_name
        self.llm = LLM(checkpoint, **llm_kwargs)
        self.engine = AsyncEngine({served_name: self.llm}, **engine_kwargs)

    async def info(self) -> dict:
        return {"max_seq_len": self.llm.max_seq_len, "eos_token_ids": sorted(self.llm.eos_token_ids),
                "max_image_pixels": self.llm.processor.max_image_pixels}

    async def generate(self, kind: str, payload, params):
        """Yields None once the request is admitted (bad input raises before), then its
        RequestOutputs. Cancelling the call aborts the request and frees its blocks."""
        add = self.engine.add_chat if kind == "chat" else self.engine.add_request
        stream = await add(payload, params, model=self.name)
        try:
            yield None
            async for out in stream:
                yield out
        finally:
            stream.abort()

    async def stats(self) -> dict:
        return self.engine.stats()

    async def score(self, prompt, query_start: int, key_start: int, key_end: int):
        return await asyncio.to_thread(self.llm.score, prompt, query_start, key_start, key_end)

    def check_health(self) -> None:
        if not self.engine._thread.is_alive():
            raise RuntimeError("the step loop stopped")

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


class ReplicaSet:
    """The ingress's handles on the replicas, by replica name."""

    def __init__(self, handles: dict):
        self.handles = handles

    def open_stream(self, name: str, method: str, *args):
        return getattr(self.handles[name].options(stream=True), method).remote(*args)

    async def call(self, name: str, method: str, *args):
        return await getattr(self.handles[name], method).remote(*args)


@serve.ingress()
class BatonIngress:
    async def __init__(self, config: RayServeConfig, handles: dict):
        self.config = config
        pools = [Pool(p.kind, p.name, p.checkpoint, p.replica_names()) for p in config.pools]
        self.client = RemoteEngine(pools, ReplicaSet(handles), team_options=config.team_options,
                                   max_queue=config.max_queue, routing=config.routing, max_load=config.max_load,
                                   prefix_chars=config.prefix_chars, admission_timeout_s=config.admission_timeout_s,
                                   progress_timeout_s=config.progress_timeout_s)
        await self.client.connect()

    def __serve_build_asgi_app__(self):
        from baton.engine.media_policy import MediaPolicy
        from baton.engine.openai_server import create_app

        app = create_app(self.client, api_key=self.config.api_key, media=MediaPolicy(**self.config.media))
        app.state.metrics.registry.register(ReplicaCollector(self.client))
        return app


def build_app(config: RayServeConfig):
    """The Serve application: the replica deployments and the ingress over them."""
    engine_kwargs = {"max_queue": config.max_queue, "max_multi_agent": config.max_multi_agent}
    handles = {}
    for pool in config.pools:
        options = {"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus}
        if pool.resources:
            options["resources"] = dict(pool.resources)
        for name in pool.replica_names():
            handles[name] = serve.deployment(ModelReplica).options(
                name=name, num_replicas=1, ray_actor_options=options, max_ongoing_requests=config.max_ongoing_requests,
                health_check_period_s=config.health_check_period_s,
                health_check_timeout_s=config.health_check_timeout_s, graceful_shutdown_timeout_s=5,
            ).bind(pool.name, pool.checkpoint, config.llm_kwargs, engine_kwargs, int(pool.num_cpus) or 1)
    return serve.deployment(BatonIngress).options(
        name="ingress", num_replicas=1, ray_actor_options={"num_cpus": config.ingress_num_cpus},
        max_ongoing_requests=config.max_ongoing_requests,
    ).bind(config, handles)


def deploy(config: RayServeConfig, host: str = "127.0.0.1", port: int = 8000):
    """Starts Serve's HTTP proxy on host:port and deploys the application (Ray must be
    initialised); returns the ingress handle once every replica is up."""
    serve.start(http_options={"host": host, "port": port})
    return serve.run(build_app(config), name=APP_NAME, route_prefix="/")


def _per_kind(text: str | None, kind: str, default: float) -> float:
    """'X' for every model, or 'SMALL,LARGE'."""
    if text is None:
        return default
    values = [float(v) for v in str(text).split(",")]
    if len(values) == 1:
        return values[0]
    return values[0] if kind in ("small", "model") else values[1]


def config_from_args(args, media: dict) -> RayServeConfig:
    import json

    from baton.engine.serve_command import model_name
    from baton.errors import InvalidRequestError

    if bool(args.small) != bool(args.large):
        raise InvalidRequestError("--small and --large go together")
    if args.model and args.small:
        raise InvalidRequestError("with --ray, serve --model DIR or --small DIR --large DIR, not both")
    if not args.model and not args.small:
        raise InvalidRequestError("give --model DIR, or --small DIR --large DIR")
    specs = [("model", args.model, args.small_replicas)] if args.model else \
        [("small", args.small, args.small_replicas), ("large", args.large, args.large_replicas)]
    pools, taken = [], set()
    for kind, path, count in specs:
        if count < 1:
            raise InvalidRequestError(f"--{'small' if kind != 'large' else 'large'}-replicas must be at least 1")
        name = model_name(path, taken)
        taken.add(name)
        resources = json.loads(getattr(args, f"{'large' if kind == 'large' else 'small'}_resources") or "{}")
        pools.append(PoolSpec(kind, name, path, count, _per_kind(args.replica_num_cpus, kind, 1.0),
                              _per_kind(args.replica_num_gpus, kind, 0.0), resources))
    llm_kwargs = dict(device=args.device, dtype=args.dtype, attention_backend=args.attention_backend,
                      max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                      kv_cache_bytes=args.kv_cache_bytes)
    if args.max_image_pixels is not None:
        llm_kwargs["max_image_pixels"] = args.max_image_pixels
    team = None
    if args.small:
        team = dict(selector=args.selector, budget=args.budget, brief_max_tokens=args.brief_max_tokens,
                    reason_max_tokens=args.reason_max_tokens)
    return RayServeConfig(pools=pools, llm_kwargs=llm_kwargs, team_options=team, max_queue=args.max_queue,
                          max_multi_agent=args.max_multi_agent, api_key=args.api_key, media=media,
                          routing=args.routing, max_load=args.replica_max_load,
                          progress_timeout_s=args.replica_timeout)


def run_from_args(args, media: dict) -> int:
    import ray

    config = config_from_args(args, media)
    ray.init(address=args.ray_address, ignore_reinit_error=True)
    try:
        deploy(config, args.host, args.port)
        names = [p.name for p in config.pools]
        if config.team_options is not None:
            from baton.engine.multi_agent import MODES

            names += [f"baton-{m}" for m in MODES]
        replicas = ", ".join(f"{p.name} x{p.replicas}" for p in config.pools)
        print(f"baton serve --ray: http://{args.host}:{args.port}/v1  models: {', '.join(names)}  "
              f"replicas: {replicas}", file=sys.stderr)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        serve.shutdown()
