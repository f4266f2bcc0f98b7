"""AsyncEngine: streamed outputs equal offline generate, cancellation aborts and frees blocks,
the waiting queue is bounded, a failing step fails only its requests, multi-agent stages
share steps with plain requests, and the idle loop does not spin."""
import asyncio
import subprocess
import sys
import threading
import time

import pytest

from baton import AsyncEngine, MultiAgent, SamplingParams
from baton.engine.demo import make_demo_image
from baton.errors import InvalidRequestError, QueueFullError
from baton.models.synthetic import build_synthetic_checkpoint


def prompt(text):
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
LONG = SamplingParams(temperature=0, max_tokens=1500, ignore_eos=True)


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def pool_clean(llm):
    s = llm.stats()
    return s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == 0 and s["waiting"] == 0


@pytest.fixture(scope="module")
def reference(tiny_llm_factory):
    fresh = tiny_llm_factory(max_model_len=2048)
    return lambda texts, params=GREEDY: [o.token_ids for o in fresh.generate([prompt(t) for t in texts], params)]


@pytest.fixture
def llm(tiny_llm_factory):
    return tiny_llm_factory(max_model_len=2048)


async def collect(engine, text, params=GREEDY, **kw):
    deltas, last = [], None
    async for out in engine.generate(prompt(text), params, **kw):
        deltas.append(out.delta)
        last = out
    return "".join(deltas), last


def test_concurrent_generate_matches_offline(llm, reference):
    texts = [f"question {i}" for i in range(8)]

    async def main():
        with AsyncEngine(llm) as engine:
            return await asyncio.gather(*(collect(engine, t) for t in texts))

    results = run(main())
    assert [last.token_ids for _, last in results] == reference(texts)
    assert all(joined == last.text and last.finish_reason == "length" for joined, last in results)
    assert pool_clean(llm)


def test_a_slow_consumer_gets_merged_outputs(llm, reference):
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)

    async def main():
        with AsyncEngine(llm) as engine:
            stream = await engine.add_request(prompt("slow reader"), params)
            first = await stream.__anext__()
            await asyncio.to_thread(wait_until, lambda: llm.stats()["running"] == 0)  # all steps are done
            rest = [out async for out in stream]
            return [first, *rest]

    outs = run(main())
    assert len(outs) == 2 and outs[-1].finished  # the other 23 outputs arrived as one
    assert "".join(o.delta for o in outs) == outs[-1].text
    assert outs[-1].token_ids == reference(["slow reader"], params)[0]


def test_cancelled_task_aborts_its_request_and_frees_blocks(llm):
    async def main():
        engine = AsyncEngine(llm)
        got = []

        async def consume():
            async for out in engine.generate(prompt("a long answer"), LONG):
                got.append(out)

        task = asyncio.create_task(consume())
        while len(got) < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(wait_until, lambda: pool_clean(llm))
        stats = engine.stats()
        engine.shutdown()
        return got, stats

    got, stats = run(main())
    assert stats["finished"] == {"abort": 1} and stats["in_flight"] == 0
    assert len(got[-1].token_ids) < LONG.max_tokens


def test_full_queue_refuses_then_serves(llm, reference):
    entered, release = threading.Event(), threading.Event()

    def hold_first_step(batch):
        entered.set()
        release.wait(10)

    llm.fault_hook = hold_first_step

    async def main():
        engine = AsyncEngine(llm, max_queue=1)
        first = await engine.add_request(prompt("first"), GREEDY)
        await asyncio.to_thread(entered.wait, 10)  # the first request waits for its first token
        with pytest.raises(QueueFullError, match="max_queue=1"):
            await engine.add_request(prompt("second"), GREEDY)
        llm.fault_hook = None
        release.set()
        outs = [out async for out in first]
        again = await collect(engine, "second")
        engine.shutdown()
        return outs[-1], again[1]

    first, second = run(main())
    assert [first.token_ids, second.token_ids] == reference(["first", "second"])


def test_failing_step_fails_its_requests_and_the_rest_keep_going(tiny_llm_factory, reference):
    llm = tiny_llm_factory(max_model_len=2048, max_num_seqs=1)  # one request per step

    def explode(batch):
        if any(s.request_id == "boom" for s in batch.seqs):
            raise RuntimeError("injected fault")

    llm.fault_hook = explode

    async def main():
        with AsyncEngine(llm) as engine:
            return await asyncio.gather(collect(engine, "fine"), collect(engine, "bad", request_id="boom"),
                                        collect(engine, "also fine"))

    (_, ok), (_, bad), (_, ok2) = run(main())
    assert bad.finish_reason == "error" and "injected fault" in bad.error
    assert [ok.token_ids, ok2.token_ids] == reference(["fine", "also fine"])
    assert pool_clean(llm)


def test_bad_request_raises_and_engine_keeps_serving(llm, reference):
    async def main():
        with AsyncEngine(llm) as engine:
            with pytest.raises(InvalidRequestError):
                await engine.add_request({"prompt": prompt("x"), "images": ["data:image/png;base64,@@"]}, GREEDY)
            with pytest.raises(InvalidRequestError, match="unknown model"):
                await engine.add_request(prompt("x"), GREEDY, model="nope")
            return await collect(engine, "after")

    assert run(main())[1].token_ids == reference(["after"])[0]


def test_idle_loop_sleeps(llm):
    engine = AsyncEngine(llm)
    calls = []
    original = engine._step_engine
    engine._step_engine = lambda name: calls.append(name) or original(name)
    run(collect(engine, "hello"))
    busy = len(calls)
    time.sleep(0.3)
    engine.shutdown()
    assert busy > 0 and len(calls) == busy  # no steps at all while idle


@pytest.fixture(scope="module")
def team(tmp_path_factory, tiny_checkpoint):
    from baton import LLM

    large = build_synthetic_checkpoint(tmp_path_factory.mktemp("large"), "tiny-hd32", seed=5)
    kw = dict(device="cpu", dtype="float32", attention_backend="torch", max_model_len=2048)
    return MultiAgent(LLM(str(tiny_checkpoint), **kw), LLM(str(large), **kw), brief_max_tokens=4,
                      reason_max_tokens=12)


def question(seed):
    return [{"role": "user", "content": [{"type": "image", "image": make_demo_image(64, 48, seed=seed)},
                                         {"type": "text", "text": "Which colour?"}]}]


def test_multi_agent_stages_share_steps_with_plain_requests(team):
    small, large = team.engines["small"], team.engines["large"]
    batches = []
    small.fault_hook = lambda batch: batches.append({s.request_id for s in batch.seqs})

    async def main():
        engine = AsyncEngine({"small": small, "large": large}, team=team)
        plain = await engine.add_request(prompt("keep decoding"), LONG, model="small")
        first = await plain.__anext__()
        events = [e async for e in engine.multi_agent(question(2), mode="transfer", selector="truncate", budget=4)]
        plain.abort()
        await asyncio.to_thread(wait_until, lambda: pool_clean(small) and pool_clean(large))
        engine.shutdown()
        return first, events

    try:
        first, events = run(main(), timeout=120)
    finally:
        small.fault_hook = None
    assert first.request_id.startswith("async-")
    shared = [b for b in batches if any(r.startswith("async-") for r in b) and any(r.startswith("req-") for r in b)]
    assert shared, "no step held both a plain request and a multi-agent stage"
    result = events[-1]
    assert result.kind == "result" and result.result.mode == "transfer"
    assert "".join(e.text for e in events if e.kind == "delta") == result.result.answer
    assert {e.stage_name for e in events if e.kind == "stage"} == {s.name for s in result.result.stages}
    offline = team.run(question(2), mode="transfer", selector="truncate", budget=4)
    assert offline.answer == result.result.answer
    assert offline.transferred_token_ids == result.result.transferred_token_ids


def test_cancelled_multi_agent_frees_its_stages(team):
    small, large = team.engines["small"], team.engines["large"]

    async def main():
        engine = AsyncEngine({"small": small, "large": large}, team=team)
        stream = engine.start_multi_agent(question(4), mode="small-reason")
        assert (await stream.__anext__()).kind == "started"
        stream.abort()
        await asyncio.to_thread(wait_until, lambda: pool_clean(small) and pool_clean(large) and
                                not engine.stats()["multi_agent_in_flight"])
        engine.shutdown()

    run(main())


def test_import_baton_does_not_import_the_server_stack():
    probe = ("import sys, baton, baton.engine.cli, baton.engine.async_engine\n"
             "baton.AsyncEngine\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('fastapi', 'uvicorn', 'starlette', 'prometheus_client', 'openai')))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
