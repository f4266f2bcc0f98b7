"""`baton serve --ray` on a local Ray instance (2 CPUs): 2 small + 2 large replicas of tiny
synthetic checkpoints behind the ingress, through the official openai client. Outputs are
compared with the same requests run on in-process engines (the single-process server's code
path), multi-agent requests must find [image + question] cached on the large replica of their
final stage, and a replica killed mid-stream must cost a retry (or a clean error), never a hang.

One Ray + Serve start for the module (tens of seconds); marked `ray`, skipped without Ray."""
import asyncio
import re
import socket
import time

import httpx
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")

from baton import LLM, MultiAgent  # noqa: E402
from baton.models.synthetic import build_synthetic_checkpoint  # noqa: E402

from tests.e2e.test_server import (  # noqa: E402
    data_url, expect_error, greedy, image_chat, png, stream_chats_concurrently)
from tests.e2e.test_server import metric_value as metric  # noqa: E402

pytestmark = pytest.mark.ray

KEY = "ray-key"
MAX_LEN = 2048
TEAM = dict(brief_max_tokens=4, reason_max_tokens=12)


def engine_kwargs():
    return dict(device="cpu", dtype="float32", attention_backend="torch", max_model_len=MAX_LEN,
                kv_cache_bytes=48 << 20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-ckpt")
    return (build_synthetic_checkpoint(root / "tiny", "tiny", seed=0),
            build_synthetic_checkpoint(root / "tiny-hd32", "tiny-hd32", seed=5))


@pytest.fixture(scope="module")
def cluster(pair_dirs):
    from baton.engine.ray_serve import PoolSpec, RayServeConfig, deploy

    small, large = (str(d) for d in pair_dirs)
    config = RayServeConfig(
        pools=[PoolSpec("small", "tiny", small, 2, num_cpus=0), PoolSpec("large", "tiny-hd32", large, 2, num_cpus=0)],
        llm_kwargs=engine_kwargs(), team_options=TEAM, api_key=KEY,
        admission_timeout_s=30, progress_timeout_s=20, health_check_period_s=1, health_check_timeout_s=5)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    port = free_port()
    try:
        deploy(config, "127.0.0.1", port)
        yield {"url": f"http://127.0.0.1:{port}", "config": config}
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(cluster):
    return openai.OpenAI(base_url=cluster["url"] + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def offline(pair_dirs):
    """In-process engines over the same checkpoints: the oracle."""
    small, large = (LLM(str(d), **engine_kwargs()) for d in pair_dirs)
    return {"small": small, "large": large, "team": MultiAgent(small, large, **TEAM)}


def metrics_text(cluster) -> str:
    return httpx.get(cluster["url"] + "/metrics", timeout=30).text


# -- the same API as `baton serve` ------------------------------------------------------------

def test_models_health_and_per_replica_metrics(cluster, client):
    ids = [m.id for m in client.models.list().data]
    assert ids[:2] == ["tiny", "tiny-hd32"] and {"baton-auto", "baton-transfer", "baton-small"} <= set(ids)
    assert httpx.get(cluster["url"] + "/health", timeout=10).json() == {"status": "ok"}
    text = metrics_text(cluster)
    for name in ("baton_queue_depth", "baton_kv_blocks_in_use", "baton_prefix_cache_hit_rate",
                 "baton_time_to_first_token_seconds", "baton_http_requests_total"):
        assert name in text, name
    for model, replica in (("tiny", "small-0"), ("tiny", "small-1"), ("tiny-hd32", "large-0"),
                           ("tiny-hd32", "large-1")):
        assert metric(text, "baton_replica_up", model=model, replica=replica) == 1.0
        assert f'baton_replica_prefix_cache_hit_rate{{model="{model}",replica="{replica}"}}' in text


def test_plain_requests_match_the_single_process_engine(client, offline):
    messages = image_chat(data_url(png(1)))
    want = offline["small"].chat(messages, greedy(10))[0]
    full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    assert full.choices[0].message.content == want.text and full.choices[0].finish_reason == want.finish_reason
    assert full.usage.prompt_tokens == len(want.prompt_token_ids)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    # the same image again reaches the replica that cached it
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= chunks[-1].usage.prompt_tokens - 16

    text = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    want = offline["small"].generate(text, greedy(5, logprobs=2))[0]
    got = client.completions.create(model="tiny", prompt=text, max_tokens=5, temperature=0, logprobs=2)
    assert got.choices[0].text == want.text
    assert got.choices[0].logprobs.token_logprobs == pytest.approx(
        [e[t] for e, t in zip(want.logprobs, want.token_ids)], abs=1e-4)
    by_ids = client.completions.create(model="tiny-hd32", prompt=want.prompt_token_ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == offline["large"].generate({"prompt_token_ids": want.prompt_token_ids},
                                                               greedy(5))[0].text


def test_concurrent_streams_match_offline(cluster, offline):
    texts = [f"Tell me about item number {i}." for i in range(12)]
    want = [o.text for o in offline["small"].chat([[{"role": "user", "content": t}] for t in texts],
                                                  greedy(6, ignore_eos=True))]

    assert stream_chats_concurrently(cluster["url"], KEY, texts) == want


def test_errors_are_the_single_process_servers(cluster, client):
    error = expect_error(lambda: client.chat.completions.create(
        model="gpt-9", messages=[{"role": "user", "content": "hi"}], max_tokens=2), 404, "model_not_found")
    assert error["type"] == "invalid_request_error"
    expect_error(lambda: client.chat.completions.create(
        model="tiny", messages=image_chat(data_url(b"not an image")), max_tokens=2), 400)
    expect_error(lambda: client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=-1), 400)
    expect_error(lambda: client.completions.create(model="tiny", prompt=[5] * (MAX_LEN + 1), max_tokens=4), 400)
    expect_error(lambda: client.chat.completions.create(model="baton-auto", messages=[
        {"role": "system", "content": "x"}]), 400)
    anon = openai.OpenAI(base_url=cluster["url"] + "/v1", api_key="wrong", max_retries=0, timeout=30)
    expect_error(lambda: anon.models.list(), 401, "invalid_api_key")
    assert client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2).choices[0].finish_reason in ("length", "stop")


# -- multi-agent and affinity -------------------------------------------------------------------

def test_multi_agent_matches_the_in_process_team(client, offline):
    messages = image_chat(data_url(png(2)), "Which colour is the box?")
    want = offline["team"].run(messages, mode="auto")
    got = client.chat.completions.create(model="baton-auto", messages=messages)
    ext = got.model_extra["baton"]
    assert got.choices[0].message.content == want.answer and ext["path"] == want.mode
    assert sorted(s["name"] for s in ext["stages"]) == sorted(s.name for s in want.stages)
    messages = image_chat(data_url(png(5)), "Count the boxes.")
    opts = {"multi_agent": {"selector": "truncate", "budget": 3}}
    chunks = list(client.chat.completions.create(model="baton-transfer", messages=messages, stream=True,
                                                 extra_body=opts))
    want = offline["team"].run(messages, mode="transfer", selector="truncate", budget=3)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.answer
    assert chunks[-1].model_extra["baton"]["transferred_tokens"] == len(want.transferred_token_ids)


def test_20_concurrent_auto_requests_find_image_and_question_cached(cluster, offline):
    """Every auto request that transfers runs its large-final stage on the large replica of its
    large-brief stage: [image + question] is a prefix-cache hit there."""
    questions = ["Which colour is the box?", "Count the boxes.", "Is there a circle?", "What shape is left?"]
    requests = [image_chat(data_url(png(10 + i % 5)), questions[i % 4]) for i in range(20)]
    before = metrics_text(cluster)

    async def one(aclient, messages):
        got = await aclient.chat.completions.create(model="baton-auto", messages=messages)
        return got.choices[0].message.content, got.model_extra["baton"]

    async def main():
        async with openai.AsyncOpenAI(base_url=cluster["url"] + "/v1", api_key=KEY, max_retries=0,
                                      timeout=300) as aclient:
            return await asyncio.wait_for(asyncio.gather(*(one(aclient, m) for m in requests)), 300)

    results = asyncio.run(main())
    transferred = 0
    for messages, (answer, ext) in zip(requests, results):
        want = offline["team"].run(messages, mode="auto")
        assert answer == want.answer and ext["path"] == want.mode
        if ext["path"] != "auto:transfer":
            continue
        transferred += 1
        stages = {s["name"]: s for s in ext["stages"]}
        brief, final = stages["large-brief"], stages["large-final"]
        # the final prompt starts with the large brief's prompt ([image + question]), block aligned
        assert final["cached_tokens"] >= brief["prompt_tokens"] - 16, (brief, final)
        assert final["vision_encoder_calls"] == 0
    assert transferred >= 10, f"only {transferred} of 20 transferred"
    after = metrics_text(cluster)
    gained = [metric(after, "baton_replica_prefix_cache_hit_tokens_total", model="tiny-hd32", replica=r)
              - metric(before, "baton_replica_prefix_cache_hit_tokens_total", model="tiny-hd32", replica=r)
              for r in ("large-0", "large-1")]
    assert sum(gained) > 0 and "baton_replica_prefix_cache_hit_rate" in after


# -- faults -------------------------------------------------------------------------------------

def _replica_actor(replica: str):
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if re.fullmatch(rf"SERVE_REPLICA::baton#{re.escape(replica)}#\w+", entry["name"]):
            return ray.get_actor(entry["name"], namespace=entry["namespace"])
    raise AssertionError(f"no actor for replica {replica}")


def test_killed_replica_mid_stream_retries_and_later_requests_succeed(cluster, client, offline):
    messages = [{"role": "user", "content": "Go on and on."}]
    n = 160
    want = offline["small"].chat(messages, greedy(n, ignore_eos=True))[0]
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=n, temperature=0,
                                            stream=True, extra_body={"ignore_eos": True})
    text, killed, error = "", None, None
    started = time.monotonic()
    for chunk in stream:
        if not chunk.choices:
            continue
        text += chunk.choices[0].delta.content or ""
        if killed is None and len(text) > 8:
            snapshot = metrics_text(cluster)
            busy = [r for r in ("small-0", "small-1") if metric(snapshot, "baton_replica_load", model="tiny",
                                                                   replica=r) > 0]
            assert len(busy) == 1, snapshot
            killed = busy[0]
            ray.kill(_replica_actor(killed), no_restart=True)
    assert killed is not None
    assert time.monotonic() - started < 120
    # greedy: the retry continues from the tokens so far, so the text is the uninterrupted one
    assert text == want.text, (text, want.text, error)
    snapshot = metrics_text(cluster)
    assert metric(snapshot, "baton_replica_retries_total") >= 1
    assert metric(snapshot, "baton_replica_failures_total", model="tiny", replica=killed) >= 1

    # Serve replaces the dead replica; requests keep succeeding meanwhile and afterwards
    deadline = time.monotonic() + 120
    while metric(metrics_text(cluster), "baton_replica_up", model="tiny", replica=killed) != 1.0:
        assert time.monotonic() < deadline, "the replica was not restarted"
        got = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=2, temperature=0)
        assert got.choices[0].finish_reason in ("length", "stop")
        time.sleep(0.5)
    for i in range(4):
        messages = [{"role": "user", "content": f"After the restart {i}"}]
        got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0)
        assert got.choices[0].message.content == offline["small"].chat(messages, greedy(4))[0].text


def test_cli_flags_build_the_deployment_config(pair_dirs):
    import argparse

    from baton.engine.ray_serve import config_from_args
    from baton.engine.serve_command import add_arguments
    from baton.errors import InvalidRequestError

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    small, large = (str(d) for d in pair_dirs)
    args = parser.parse_args(["--ray", "--small", small, "--large", large, "--small-replicas", "3",
                              "--large-replicas", "2", "--replica-num-gpus", "0.5,1", "--replica-num-cpus", "2",
                              "--large-resources", '{"large_node": 1}', "--routing", "round-robin"])
    config = config_from_args(args, {})
    s, l_ = config.pools
    assert (s.kind, s.name, s.replicas, s.num_gpus, s.num_cpus) == ("small", "tiny", 3, 0.5, 2.0)
    assert (l_.kind, l_.name, l_.replicas, l_.num_gpus, l_.resources) == ("large", "tiny-hd32", 2, 1.0,
                                                                          {"large_node": 1})
    assert s.replica_names() == ["small-0", "small-1", "small-2"] and config.routing == "round-robin"
    assert config.team_options["brief_max_tokens"] == 16
    with pytest.raises(InvalidRequestError):
        config_from_args(parser.parse_args(["--ray", "--small", small]), {})
    with pytest.raises(InvalidRequestError):
        config_from_args(parser.parse_args(["--ray", "--model", small, "--small-replicas", "0"]), {})
