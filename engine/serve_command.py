"""`baton serve`: its flags, and building the engines and the server from them. The server
stack (FastAPI, uvicorn) is imported only when the command runs."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def _budget(text: str):
    value = float(text)
    return int(value) if value >= 1 and value == int(value) else value


def add_arguments(p) -> None:
    p.add_argument("--model", help="checkpoint directory of a model to serve")
    p.add_argument("--small", help="small model checkpoint (with --large: also serves the multi-agent modes)")
    p.add_argument("--large", help="large model checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("BATON_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $BATON_API_KEY)")
    p.add_argument("--allowed-local-media-path", default=None,
                   help="directory under which file:// image URLs may be read (default: none)")
    p.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) image URLs")
    p.add_argument("--media-fetch-timeout", type=float, default=5.0, help="seconds per remote image")
    p.add_argument("--media-max-bytes", type=int, default=20 << 20, help="byte cap per remote image")
    p.add_argument("--max-images", type=int, default=16, help="images per request")
    p.add_argument("--max-image-pixels", type=int, default=None, help="pixel cap per image (default: the engine's)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting for their first token before new ones get 503")
    p.add_argument("--max-multi-agent", type=int, default=16, help="multi-agent requests run at once")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--kv-cache-bytes", type=int, default=None, help="KV pool bytes per model")
    p.add_argument("--selector", default="full", help="multi-agent selector (full, truncate, entropy, attention)")
    p.add_argument("--budget", type=_budget, default=None, help="tokens (int) or fraction of the reasoning")
    p.add_argument("--brief-max-tokens", type=int, default=16)
    p.add_argument("--reason-max-tokens", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--attention-backend", default="auto")
    p.add_argument("--log-level", default="info")
    p.add_argument("--gil-switch-interval", type=float, default=0.0005,
                   help="seconds a thread may hold the GIL while another waits (Python's default 0.005): "
                        "shorter lets the step thread win it back from the HTTP loop between torch ops")
    ray = p.add_argument_group("scale-out on Ray Serve (pip install -e '.[ray]')")
    ray.add_argument("--ray", action="store_true", help="serve with model replicas as Ray Serve deployments")
    ray.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start a local one)")
    ray.add_argument("--small-replicas", type=int, default=1, help="replicas of --small (or of --model)")
    ray.add_argument("--large-replicas", type=int, default=1, help="replicas of --large")
    ray.add_argument("--replica-num-gpus", default=None,
                     help="GPUs per replica: X, or SMALL,LARGE (default 0; 1 gives each replica its own GPU)")
    ray.add_argument("--replica-num-cpus", default=None, help="CPUs per replica: X, or SMALL,LARGE (default 1)")
    ray.add_argument("--small-resources", default=None,
                     help='custom Ray resources of each small replica, JSON (e.g. \'{"small_node": 1}\')')
    ray.add_argument("--large-resources", default=None, help="custom Ray resources of each large replica, JSON")
    ray.add_argument("--routing", default="affinity", choices=("affinity", "round-robin"),
                     help="replica choice: prefix affinity (default) or round robin")
    ray.add_argument("--replica-max-load", type=int, default=32,
                     help="calls in flight past which a replica counts as saturated (least-loaded fallback)")
    ray.add_argument("--replica-timeout", type=float, default=120.0,
                     help="seconds without output before a replica counts as failed (the request moves on)")


def model_name(path: str, taken) -> str:
    """The served name of a checkpoint: its directory's name, made unique."""
    base = Path(path).resolve().name or "model"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


def build_engine(args):
    from baton import LLM, MultiAgent
    from baton.engine.async_engine import AsyncEngine
    from baton.errors import InvalidRequestError

    if bool(args.small) != bool(args.large):
        raise InvalidRequestError("--small and --large go together")
    if not args.model and not args.small:
        raise InvalidRequestError("give --model DIR, or --small DIR --large DIR (or all three)")
    kwargs = dict(device=args.device, dtype=args.dtype, attention_backend=args.attention_backend,
                  max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                  kv_cache_bytes=args.kv_cache_bytes)
    if args.max_image_pixels is not None:
        kwargs["max_image_pixels"] = args.max_image_pixels
    engines, team = {}, None
    if args.model:
        engines[model_name(args.model, engines)] = LLM(args.model, **kwargs)
    if args.small:
        small, large = LLM(args.small, **kwargs), LLM(args.large, **kwargs)
        engines[model_name(args.small, engines)] = small
        engines[model_name(args.large, engines)] = large
        team = MultiAgent(small, large, selector=args.selector, budget=args.budget,
                          brief_max_tokens=args.brief_max_tokens, reason_max_tokens=args.reason_max_tokens)
    return AsyncEngine(engines, team=team, max_queue=args.max_queue, max_multi_agent=args.max_multi_agent)


def run_from_args(args) -> int:
    from baton.engine.media_policy import MediaPolicy

    # Every torch op drops and retakes the GIL; while the event loop holds it, the step thread
    # waits up to a switch interval per op (16-client stream, demo-large: 42-43 ms per token
    # at 0.5 ms against 46-48 ms at Python's 5 ms; bench/serve_bench.py)
    if not args.gil_switch_interval > 0:
        from baton.errors import BatonError

        raise BatonError(f"--gil-switch-interval must be > 0 seconds, got {args.gil_switch_interval}")
    sys.setswitchinterval(args.gil_switch_interval)

    media = MediaPolicy(allowed_local_media_path=args.allowed_local_media_path, allow_remote=args.allow_remote_media,
                        fetch_timeout=args.media_fetch_timeout, max_fetch_bytes=args.media_max_bytes,
                        max_images=args.max_images)
    if getattr(args, "ray", False):
        try:
            from baton.engine.ray_serve import run_from_args as run_ray
        except ImportError as e:
            from baton.errors import BatonError

            raise BatonError(f"baton serve --ray needs Ray Serve ({e.name} is missing): "
                             "pip install 'ray[serve]', or pip install -e '.[ray]'") from None
        return run_ray(args, dict(allowed_local_media_path=args.allowed_local_media_path,
                                  allow_remote=args.allow_remote_media, fetch_timeout=args.media_fetch_timeout,
                                  max_fetch_bytes=args.media_max_bytes, max_images=args.max_images))
    try:
        from baton.engine.openai_server import run_server
    except ImportError as e:
        from baton.errors import BatonError

        raise BatonError(f"baton serve needs the server stack ({e.name} is missing): "
                         "pip install fastapi uvicorn prometheus-client, or pip install -e '.[serve]'") from None
    engine = build_engine(args)

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"baton serve: warning: listening on {args.host} without --api-key", file=sys.stderr)
    from baton.engine.multi_agent import MODES

    names = [*engine.engines] + ([f"baton-{m}" for m in MODES] if engine.team else [])
    print(f"baton serve: http://{args.host}:{args.port}/v1  models: {', '.join(names)}", file=sys.stderr)
    run_server(engine, args.host, args.port, log_level=args.log_level, api_key=args.api_key, media=media)
    return 0
