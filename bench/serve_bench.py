"""`baton serve` under N concurrent streaming clients vs offline `LLM.generate` on the same
requests: throughput, TTFT p50/p99 and per-token latency p50/p99 at each concurrency.

The server runs as its own process (`baton serve` on 127.0.0.1, a free port); the clients are
the official `openai` async client in this process, each sending `--rounds` chat requests one
after another. Offline, the same requests go through `LLM.generate` in this process in
batches of N (the same concurrency), on an engine with the same settings, called from a
worker thread as the server's step loop is (`--offline-main-thread` calls it from the main
thread: on a busy 2-core VM torch's CPU ops ran several times slower there, which would
credit the server with a gain that is not the HTTP layer's). Every request
generates exactly --max-tokens tokens (greedy, ignore_eos), so both sides do equal work. The
ratio server / offline throughput is what the HTTP layer (and the clients sharing the CPU)
costs.

    python bench/serve_bench.py [--preset tiny] [--concurrency 1,4,16,64] [--max-tokens 32]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from baton import LLM, SamplingParams  # noqa: E402
from baton.models.synthetic import ensure_checkpoint  # noqa: E402
from bench.common import cpu_flags, print_table  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def messages_for(level: int, i: int) -> list[dict]:
    return [{"role": "user", "content": f"Request {i} of level {level}: describe a red square in detail."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir, port: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "baton.engine.cli", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--dtype", "float32", "--max-num-seqs", str(args.max_num_seqs),
           "--max-model-len", str(args.max_model_len), "--max-queue", "1024", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not come up")


async def raw_stream(base_url: str, body: dict) -> tuple[float, float, int]:
    """One streamed chat request over a bare asyncio socket: (TTFT, ms/token, tokens). Costs the
    client a fraction of the official client's per-chunk parsing, so less of the shared cores
    goes to the measuring side."""
    host, port = base_url.split("//", 1)[1].split("/", 1)[0].split(":")
    payload = json.dumps(body).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer bench\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                 % (host.encode(), len(payload), payload))
    first = last = None
    tokens = 0
    try:
        while line := await reader.readline():
            if not line.startswith(b"data: "):
                continue
            if line.startswith(b"data: [DONE]"):
                break
            now = time.perf_counter()
            if b'"usage":{' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
            elif b'"content":' in line:
                first = first if first is not None else now
                last = now
    finally:
        writer.close()
    return first - t0, (last - first) / max(tokens - 1, 1), tokens


async def run_clients(base_url: str, model: str, level: int, rounds: int, max_tokens: int, raw: bool = False):
    import openai

    async with openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=3600) as client:
        async def one(i):
            if raw:
                return await raw_stream(base_url, {
                    "model": model, "messages": messages_for(level, i), "max_tokens": max_tokens, "temperature": 0,
                    "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True})
            t0 = time.perf_counter()
            first = last = None
            tokens = 0
            stream = await client.chat.completions.create(
                model=model, messages=messages_for(level, i), max_tokens=max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            async for chunk in stream:
                now = time.perf_counter()
                if chunk.choices:
                    first = first if first is not None else now
                    last = now
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            return first - t0, (last - first) / max(tokens - 1, 1), tokens

        async def client_loop(c):
            return [await one(c * rounds + r) for r in range(rounds)]

        t0 = time.perf_counter()
        per_client = await asyncio.gather(*(client_loop(c) for c in range(level)))
        wall = time.perf_counter() - t0
    results = [r for rs in per_client for r in rs]
    return wall, results


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def run_offline(llm: LLM, level: int, rounds: int, max_tokens: int):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    results = []
    t0 = time.perf_counter()
    for r in range(rounds):  # the same requests, `level` at a time
        batch = [messages_for(level, c * rounds + r) for c in range(level)]
        for out in llm.chat(batch, params):
            m = out.metrics
            n = len(out.token_ids)
            results.append((m.ttft, (m.finished_time - m.first_token_time) / max(n - 1, 1), n))
    return time.perf_counter() - t0, results


def summarize(wall: float, results) -> dict:
    tokens = sum(r[2] for r in results)
    return {"tps": tokens / wall, "ttft50": pct([r[0] for r in results], 0.5),
            "ttft99": pct([r[0] for r in results], 0.99), "tpot50": pct([r[1] for r in results], 0.5),
            "tpot99": pct([r[1] for r in results], 0.99), "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="synthetic checkpoint preset (tiny, demo-small, pair-0.3b, ...)")
    ap.add_argument("--model", default=None, help="a checkpoint directory instead of a preset")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--rounds", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--client", choices=["openai", "raw"], default="openai",
                    help="openai: the official async client; raw: a bare asyncio socket reader (cheaper per chunk)")
    ap.add_argument("--offline-main-thread", action="store_true", help="run offline generate in the main thread")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    model_dir = args.model or ensure_checkpoint(args.preset)
    name = os.path.basename(os.path.normpath(str(model_dir)))
    import torch

    print(f"model {model_dir}; CPU flags: {cpu_flags()}; torch threads {torch.get_num_threads()}; "
          f"{os.cpu_count()} CPUs; {args.max_tokens} tokens per request, {args.rounds} per client; offline from the "
          f"{'main' if args.offline_main_thread else 'a worker'} thread; {args.client} client; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    llm = LLM(str(model_dir), device="cpu", dtype="float32", max_num_seqs=args.max_num_seqs,
              max_model_len=args.max_model_len)
    port = free_port()
    server = start_server(model_dir, port, args)
    base = f"http://127.0.0.1:{port}/v1"
    rows = []
    pool = ThreadPoolExecutor(1)

    def offline(*a):
        return run_offline(*a) if args.offline_main_thread else pool.submit(run_offline, *a).result()

    try:
        asyncio.run(run_clients(base, name, 2, 1, 4))  # warm-up: both sides, same shapes
        offline(llm, 2, 1, 4)
        for level in levels:
            cpu0 = process_cpu_seconds(server.pid), process_cpu_seconds(os.getpid())
            srv = summarize(*asyncio.run(run_clients(base, name, level, args.rounds, args.max_tokens,
                                                       raw=args.client == "raw")))
            cpu1 = process_cpu_seconds(server.pid), process_cpu_seconds(os.getpid())
            off = summarize(*offline(llm, level, args.rounds, args.max_tokens))
            rows.append([level, level * args.rounds, f"{srv['tps']:.1f}", f"{off['tps']:.1f}",
                         f"{srv['tps'] / off['tps']:.2f}",
                         f"{srv['ttft50'] * 1e3:.0f} / {srv['ttft99'] * 1e3:.0f}",
                         f"{off['ttft50'] * 1e3:.0f} / {off['ttft99'] * 1e3:.0f}",
                         f"{srv['tpot50'] * 1e3:.1f} / {srv['tpot99'] * 1e3:.1f}",
                         f"{off['tpot50'] * 1e3:.1f} / {off['tpot99'] * 1e3:.1f}",
                         f"{cpu1[0] - cpu0[0]:.1f} / {cpu1[1] - cpu0[1]:.1f}"])
            print(f"concurrency {level}: server {srv['tps']:.1f} tok/s, offline {off['tps']:.1f} tok/s", flush=True)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    print()
    print_table(["clients", "requests", "server tok/s", "offline tok/s", "ratio", "server TTFT p50/p99 ms",
                 "offline TTFT p50/p99 ms", "server ms/token p50/p99", "offline ms/token p50/p99",
                 "CPU s server / clients"], rows)
    print(f"\nCPU flags: {cpu_flags()}. Server TTFT is measured by the client (request sent -> first chunk);"
          " offline TTFT by the engine (arrival -> first token). 'CPU s': CPU seconds the server process and"
          " the client process used during the server run (they share this machine's cores).")


if __name__ == "__main__":
    main()
