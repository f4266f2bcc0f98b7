"""`baton serve --ray` on a local Ray instance: throughput with 1 vs 2 replicas, and the
prefix-cache hit rate of one multi-agent request stream with affinity routing vs round robin.

Throughput: one model (`--model`), N streaming chat clients (official openai async client),
every request generating exactly --max-tokens tokens (greedy, ignore_eos). The CPU budget is
the same in both runs (--cpus, default 2): one replica with all of it (torch threads = cpus),
or two replicas with half each. On a CPU-only machine the replicas share the same cores, so
the second replica adds no compute: expect about the same tokens/s (a gain comes from GPUs or
nodes, one replica per device).

Affinity: 2 small + 2 large replicas, fresh caches, the same stream of `baton-auto` requests
(--images distinct images x --questions questions, several rounds, concurrent) under
--routing affinity and round-robin. Reported: the large replicas' prefix-cache hit rate
(hit tokens / queried tokens, summed over replicas) and the mean cached fraction of the
large-final stage's prompt.

    python bench/ray_serve_bench.py [--cpus 2] [--requests 48] [--concurrency 16] [--max-tokens 32]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from baton.engine.demo import make_demo_image  # noqa: E402
from baton.models.synthetic import build_synthetic_checkpoint  # noqa: E402
from bench.common import cpu_flags, print_table  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_url(seed: int) -> str:
    buf = io.BytesIO()
    make_demo_image(64, 48, seed=seed).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def llm_kwargs():
    return dict(device="cpu", dtype="float32", attention_backend="torch", max_model_len=2048,
                kv_cache_bytes=64 << 20)


def deploy(config, port: int):
    from ray import serve

    from baton.engine.ray_serve import deploy as serve_deploy

    t0 = time.perf_counter()
    serve_deploy(config, "127.0.0.1", port)
    return f"http://127.0.0.1:{port}", time.perf_counter() - t0, serve


async def throughput(url: str, requests: int, concurrency: int, max_tokens: int, model: str) -> float:
    import openai

    sem = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(client, i):
        nonlocal tokens
        async with sem:
            stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"Request {i}: describe a box."}],
                max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True})
            async for chunk in stream:
                if chunk.usage is not None:
                    tokens += chunk.usage.completion_tokens

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600) as client:
        await one(client, -1)  # warm-up
        tokens = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(requests)))
        return tokens / (time.perf_counter() - t0)


def replica_hits(url: str) -> dict[str, tuple[float, float]]:
    import httpx

    text = httpx.get(url + "/metrics", timeout=30).text
    out = {}
    for kind in ("hit", "queried"):
        for m in re.finditer(rf'^baton_replica_prefix_cache_{kind}_tokens_total\{{model="([^"]+)",replica="([^"]+)"\}} '
                             r"(\S+)$", text, re.M):
            out.setdefault(m.group(2), [0.0, 0.0])[0 if kind == "hit" else 1] = float(m.group(3))
    return {k: tuple(v) for k, v in out.items()}


async def multi_agent_stream(url: str, images: int, questions: int, rounds: int, concurrency: int):
    import openai

    qs = ["Which colour is the box?", "Count the boxes.", "Is there a circle?", "What shape is left?",
          "Where is the red part?", "Is it large?"][:questions]
    stream = [(i, q) for _ in range(rounds) for i in range(images) for q in qs]
    sem = asyncio.Semaphore(concurrency)
    finals = []

    async def one(client, image, question):
        async with sem:
            got = await client.chat.completions.create(model="baton-auto", messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(100 + image)}},
                {"type": "text", "text": question}]}])
            for s in got.model_extra["baton"]["stages"]:
                if s["name"] == "large-final":
                    finals.append(s["cached_tokens"] / max(1, s["prompt_tokens"]))

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, i, q) for i, q in stream))
        return len(stream), time.perf_counter() - t0, finals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--questions", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-affinity", action="store_true")
    args = ap.parse_args()

    import ray

    from baton.engine.ray_serve import PoolSpec, RayServeConfig

    print(f"CPU: {cpu_flags()}  (os.cpu_count={os.cpu_count()}; machine shared with other jobs: timings are noisy)")
    import tempfile

    root = tempfile.mkdtemp(prefix="baton-ray-bench-")
    small = str(build_synthetic_checkpoint(os.path.join(root, "tiny"), "tiny", seed=0))
    large = str(build_synthetic_checkpoint(os.path.join(root, "tiny-hd32"), "tiny-hd32", seed=5))
    port = free_port()  # Serve's proxy keeps the port of its first start
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        if not args.skip_throughput:
            for n in (1, 2):
                config = RayServeConfig(pools=[PoolSpec("model", "tiny", small, n, num_cpus=args.cpus / n)],
                                        llm_kwargs=llm_kwargs())
                url, start_s, serve = deploy(config, port)
                tps = asyncio.run(throughput(url, args.requests, args.concurrency, args.max_tokens, "tiny"))
                rows.append([f"{n} replica(s) x {args.cpus / n:g} CPU", f"{tps:.1f}", f"{start_s:.0f}"])
                print(rows[-1], flush=True)
                serve.delete("baton")
            print_table(["throughput (tiny, chat)", "tokens/s", "deploy s"], rows)
        if not args.skip_affinity:
            table = []
            for routing in ("affinity", "round-robin"):
                config = RayServeConfig(
                    pools=[PoolSpec("small", "tiny", small, 2, num_cpus=args.cpus / 4),
                           PoolSpec("large", "tiny-hd32", large, 2, num_cpus=args.cpus / 4)],
                    llm_kwargs=llm_kwargs(), team_options=dict(brief_max_tokens=4, reason_max_tokens=12),
                    routing=routing)
                url, start_s, serve = deploy(config, port)
                n, seconds, finals = asyncio.run(multi_agent_stream(url, args.images, args.questions, args.rounds,
                                                                    args.concurrency))
                hits = replica_hits(url)
                large_hit = sum(h for r, (h, q) in hits.items() if r.startswith("large"))
                large_q = sum(q for r, (h, q) in hits.items() if r.startswith("large"))
                small_hit = sum(h for r, (h, q) in hits.items() if r.startswith("small"))
                small_q = sum(q for r, (h, q) in hits.items() if r.startswith("small"))
                mean_final = sum(finals) / len(finals) if finals else float("nan")
                split = ", ".join(f"{r}: {q:.0f}" for r, (h, q) in sorted(hits.items()))
                print(f"{routing}: prompt tokens per replica (the load split): {split}", flush=True)
                table.append([routing, n, f"{large_hit / max(1, large_q):.3f}", f"{small_hit / max(1, small_q):.3f}",
                              f"{mean_final:.3f} ({len(finals)} transfers)", f"{n / seconds:.2f}"])
                print(table[-1], flush=True)
                serve.delete("baton")
            print_table(["routing", "requests", "large hit rate", "small hit rate", "large-final cached frac",
                         "req/s"], table)
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
