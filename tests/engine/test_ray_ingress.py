"""The Ray ingress's engine client (engine/ray_ingress.py) and affinity router
(engine/ray_affinity.py) without Ray: replicas are in-process AsyncEngines behind a fake
ReplicaSet, one of which can be made to die mid-stream. Outputs are compared with plain LLM /
MultiAgent runs on separate engines."""
import asyncio
import subprocess
import sys

import pytest

from baton import LLM, AsyncEngine, MultiAgent, SamplingParams
from baton.engine.demo import make_demo_image
from baton.engine.ray_affinity import AffinityRouter, chat_key, image_digest, prompt_key
from baton.engine.ray_ingress import Pool, RemoteEngine
from baton.models.synthetic import build_synthetic_checkpoint

TEAM = dict(brief_max_tokens=4, reason_max_tokens=12)


def kwargs():
    return dict(device="cpu", dtype="float32", attention_backend="torch", max_model_len=1024,
                kv_cache_bytes=16 << 20)


class Died(Exception):
    """What a dead replica's stream raises (Ray raises ActorDiedError)."""


class FakeReplica:
    def __init__(self, name, path):
        self.name, self.llm = name, LLM(str(path), **kwargs())
        self.engine = AsyncEngine({name: self.llm})
        self.die_after = None  # outputs to serve before dying
        # or: dies once it has served this many tokens, or before an output that would pass it
        # (the engine merges outputs for a slow consumer, so one output may carry several tokens)
        self.die_at_tokens = None
        self.calls = 0

    async def info(self):
        return {"max_seq_len": self.llm.max_seq_len, "eos_token_ids": sorted(self.llm.eos_token_ids),
                "max_image_pixels": self.llm.processor.max_image_pixels}

    async def stats(self):
        return self.engine.stats()

    async def score(self, prompt, query_start, key_start, key_end):
        return await asyncio.to_thread(self.llm.score, prompt, query_start, key_start, key_end)

    async def generate(self, kind, payload, params):
        self.calls += 1
        add = self.engine.add_chat if kind == "chat" else self.engine.add_request
        stream = await add(payload, params, model=self.name)
        try:
            yield None
            async for out in stream:
                if self.die_at_tokens is not None and len(out.token_ids) > self.die_at_tokens:
                    self.die_at_tokens = None
                    raise Died("the actor died")
                if self.die_at_tokens is not None and len(out.token_ids) == self.die_at_tokens:
                    self.die_at_tokens, self.die_after = None, 0  # serve this one, die on the next
                if self.die_after is not None:
                    if self.die_after == 0:
                        self.die_after = None
                        raise Died("the actor died")
                    self.die_after -= 1
                yield out
        finally:
            stream.abort()


class FakeGen:
    def __init__(self, agen):
        self.agen = agen

    def __anext__(self):
        return self.agen.__anext__()

    def cancel(self):
        asyncio.ensure_future(self.agen.aclose())


class FakeReplicaSet:
    def __init__(self, replicas):
        self.replicas = replicas

    def open_stream(self, name, method, *args):
        return FakeGen(getattr(self.replicas[name], method)(*args))

    async def call(self, name, method, *args):
        return await getattr(self.replicas[name], method)(*args)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingress")
    return (build_synthetic_checkpoint(root / "tiny", "tiny", seed=0),
            build_synthetic_checkpoint(root / "tiny-hd32", "tiny-hd32", seed=5))


@pytest.fixture(scope="module")
def replicas(dirs):
    reps = {"small-0": FakeReplica("tiny", dirs[0]), "small-1": FakeReplica("tiny", dirs[0]),
            "large-0": FakeReplica("tiny-hd32", dirs[1]), "large-1": FakeReplica("tiny-hd32", dirs[1])}
    yield reps
    for r in reps.values():
        r.engine.shutdown()


@pytest.fixture(scope="module")
def offline(dirs):
    small, large = (LLM(str(d), **kwargs()) for d in dirs)
    return {"small": small, "large": large, "team": MultiAgent(small, large, **TEAM)}


def make_client(dirs, replicas, **kw):
    pools = [Pool("small", "tiny", str(dirs[0]), ["small-0", "small-1"]),
             Pool("large", "tiny-hd32", str(dirs[1]), ["large-0", "large-1"])]
    return RemoteEngine(pools, FakeReplicaSet(replicas), team_options=TEAM, progress_timeout_s=20, **kw)


def data_url(seed):
    import base64
    import io

    buf = io.BytesIO()
    make_demo_image(64, 48, seed=seed).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_chat(seed, text):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(seed)}},
                                         {"type": "text", "text": text}]}]


async def collect(stream):
    out = None
    async for out in stream:
        pass
    return out


async def run_team(client, messages, mode="auto", **kw):
    async for event in _events(client.start_multi_agent(messages, mode, **kw)):
        if event.kind == "result":
            return event.result


async def _events(stream):
    async for event in stream:
        yield event


# -- the router -----------------------------------------------------------------------------------

def test_router_prefers_one_replica_per_key_and_falls_back_when_saturated():
    router = AffinityRouter({"large": ["large-0", "large-1", "large-2"]}, max_load=2)
    keys = [chat_key(image_chat(s, "q"), 256) for s in range(12)]
    firsts = [router.preference("large", k)[0] for k in keys]
    assert len(set(firsts)) > 1  # keys spread over the replicas
    key = keys[0]
    best, second = router.preference("large", key)[:2]
    assert router.pick("large", key) == best and router.pick("large", key) == best
    # saturated: the least-loaded other replica, then back once it frees up
    fallback = router.pick("large", key)
    assert fallback != best and router.load[fallback] == 1 and router.fallbacks == 1
    router.release(best)
    assert router.pick("large", key) == best
    # a failed replica is avoided during its cooldown; excluded ones only as a last resort
    router.mark_failed(best)
    assert router.pick("large", key) != best
    router.mark_ok(best)
    assert router.pick("large", key, exclude=[best]) != best


def test_keys_follow_the_image_and_the_prefix_not_the_rest():
    same_image = [chat_key(image_chat(1, q), 256) for q in ("What colour?", "How many boxes?")]
    assert same_image[0] == same_image[1]  # the question follows the image
    assert chat_key(image_chat(2, "What colour?"), 256) != same_image[0]
    assert image_digest(data_url(3)) == image_digest(data_url(3))
    system = {"role": "system", "content": "You are a careful assistant. " * 20}
    a = chat_key([system, {"role": "user", "content": "one"}], 256)
    assert a == chat_key([system, {"role": "user", "content": "two"}], 256)
    assert a != chat_key([{"role": "system", "content": "other"}, {"role": "user", "content": "one"}], 256)
    assert prompt_key([1, 2, 3], 256) == prompt_key([1, 2, 3], 256) != prompt_key([1, 2, 4], 256)


def test_import_baton_never_imports_ray():
    probe = ("import sys, baton, baton.engine.async_engine, baton.engine.serve_command, baton.engine.cli, "
             "baton.engine.ray_affinity, baton.engine.ray_ingress, baton.engine.ray_metrics\n"
             "print('RAY' if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 'CLEAN')")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "CLEAN"


# -- the engine client --------------------------------------------------------------------------

def test_plain_and_multi_agent_requests_match_in_process_runs(dirs, replicas, offline):
    async def main():
        client = make_client(dirs, replicas)
        await client.connect()
        messages = image_chat(1, "What is in the picture?")
        params = SamplingParams(temperature=0, max_tokens=8)
        plain = await collect(await client.add_chat(messages, params, model="tiny"))
        results = await asyncio.gather(*(run_team(client, image_chat(s, "Which colour is the box?"))
                                         for s in range(4)))
        transfer = await run_team(client, image_chat(5, "Count the boxes."), "transfer", selector="truncate",
                                  budget=3)
        attention = await run_team(client, image_chat(6, "Count the boxes."), "transfer", selector="attention",
                                   budget=3)
        return plain, results, transfer, attention

    plain, results, transfer, attention = asyncio.run(asyncio.wait_for(main(), 120))
    want = offline["small"].chat(image_chat(1, "What is in the picture?"), SamplingParams(temperature=0,
                                                                                         max_tokens=8))[0]
    assert plain.text == want.text and plain.token_ids == want.token_ids
    for seed, res in enumerate(results):
        ref = offline["team"].run(image_chat(seed, "Which colour is the box?"), mode="auto")
        assert res.answer == ref.answer and res.mode == ref.mode
        stages = {s.name: s for s in res.stages}
        if res.mode == "auto:transfer":
            assert stages["large-final"].cached_tokens >= stages["large-brief"].prompt_tokens - 16
    ref = offline["team"].run(image_chat(5, "Count the boxes."), mode="transfer", selector="truncate", budget=3)
    assert transfer.answer == ref.answer and transfer.transferred_token_ids == ref.transferred_token_ids
    # the attention selector's scoring pass runs on the small replica of the reasoning
    ref = offline["team"].run(image_chat(6, "Count the boxes."), mode="transfer", selector="attention", budget=3)
    assert attention.answer == ref.answer and attention.transferred_token_ids == ref.transferred_token_ids


def test_a_replica_dying_mid_stream_resumes_elsewhere_with_the_same_tokens(dirs, replicas, offline):
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    messages = [{"role": "user", "content": "Keep going."}]
    want = offline["small"].chat(messages, params)[0]

    async def main():
        client = make_client(dirs, replicas)
        await client.connect()
        preferred = client.router.preference("small", chat_key(messages, 256))[0]
        replicas[preferred].die_after = 5
        out = await collect(await client.add_chat(messages, params, model="tiny"))
        return client, preferred, out

    client, preferred, out = asyncio.run(asyncio.wait_for(main(), 120))
    assert out.token_ids == want.token_ids and out.text == want.text and out.finish_reason == want.finish_reason
    assert client.retries == 1 and client.failures == {preferred: 1}
    assert out.prompt_token_ids == want.prompt_token_ids


def _cut_inside_a_character(llm, params):
    """A prompt whose greedy output, cut after some token (the third or later: text on both
    sides), ends inside a character (bytes the detokenizer holds back), its output and that
    token count."""
    for text in ("Keep going.", "Go on.", "Continue, please.", "More.", "And then?", "Tell me more."):
        messages = [{"role": "user", "content": text}]
        out = llm.chat(messages, params)[0]
        for cut in range(3, len(out.token_ids) - 3):
            if llm.processor.decode(out.token_ids[:cut]).endswith("\ufffd"):
                return messages, out, cut
    pytest.fail("no greedy output here ends inside a character after any token: try other prompts")


@pytest.mark.parametrize("stop_across_the_cut", [False, True])
def test_a_resume_inside_a_character_keeps_the_uninterrupted_text(dirs, replicas, offline, stop_across_the_cut):
    """The resumed replica sees the earlier tokens as prompt: the bytes of a character they
    left unfinished, and a stop string spanning the cut, must still come out as in one run.
    (When the engine merges outputs past the cut, the replica dies a little earlier.)"""
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    messages, want, cut = _cut_inside_a_character(offline["small"], params)
    if stop_across_the_cut:
        before = offline["small"].processor.decode(want.token_ids[:cut]).rstrip("\ufffd")
        stop = want.text[max(0, len(before) - 2):len(before) + 3]
        assert want.text.find(stop) + len(stop) > len(before)  # it first matches past the cut
        params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop])
        want = offline["small"].chat(messages, params)[0]
        assert want.finish_reason == "stop" and len(want.token_ids) > cut

    async def main():
        client = make_client(dirs, replicas)
        await client.connect()
        preferred = client.router.preference("small", chat_key(messages, 256))[0]
        replicas[preferred].die_at_tokens = cut
        deltas, out = [], None
        async for out in await client.add_chat(messages, params, model="tiny"):
            deltas.append(out.delta)
        return client, out, "".join(deltas)

    client, out, joined = asyncio.run(asyncio.wait_for(main(), 120))
    assert client.retries == 1
    assert (out.token_ids, out.text, out.finish_reason) == (want.token_ids, want.text, want.finish_reason)
    assert joined == want.text


def test_no_replica_left_is_a_clean_error_not_a_hang(dirs, replicas):
    from baton.engine.openai_protocol import ApiError

    async def main():
        client = make_client(dirs, replicas, attempts=2)
        await client.connect()
        for name in ("small-0", "small-1"):
            replicas[name].die_after = 0
        try:
            stream = await client.add_chat([{"role": "user", "content": "x"}],
                                           SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), model="tiny")
            return await collect(stream)
        finally:
            for name in ("small-0", "small-1"):
                replicas[name].die_after = None

    try:
        out = asyncio.run(asyncio.wait_for(main(), 60))
    except ApiError as e:  # before any token: a 503
        assert e.status == 503 and e.code == "replica_unavailable"
    else:  # after some tokens: an error output (an SSE error event, or a 500)
        assert out.finish_reason == "error" and "tried" in out.error
