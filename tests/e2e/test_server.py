"""`baton serve` through the official openai client against a real uvicorn on 127.0.0.1:
chat with a base64 image (streamed and not), completions, logprobs, disconnects, 64
concurrent clients, every bad input's status and error shape, multi-agent modes and the API
key. Every output is compared with the same request run offline on a separate engine."""
import asyncio
import base64
import http.server
import io
import re
import socket
import struct
import threading
import time
import zlib

import httpx
import openai
import pytest
import uvicorn

from baton import LLM, AsyncEngine, MultiAgent, SamplingParams
from baton.engine.demo import make_demo_image
from baton.engine.media_policy import MediaPolicy
from baton.engine.openai_protocol import ApiError
from baton.engine.openai_server import create_app
from baton.models.synthetic import build_synthetic_checkpoint

KEY = "test-key"
MAX_LEN = 2048


def png(seed=0, w=64, h=48) -> bytes:
    buf = io.BytesIO()
    make_demo_image(w, h, seed=seed).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def bomb_png(side=20000) -> bytes:
    """A PNG whose header claims side x side pixels (the pixels are never there)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def image_chat(url, text="What is in the picture?"):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def engine_kwargs():
    return dict(device="cpu", dtype="float32", attention_backend="torch", max_model_len=MAX_LEN)


class _Media(http.server.BaseHTTPRequestHandler):
    """Loopback image host for the remote-fetch checks."""

    def do_GET(self):
        if self.path == "/slow.png":
            time.sleep(1.5)
        body = png(7) if self.path in ("/ok.png", "/slow.png") else b"\0" * 200_000
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def media_host():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Media)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join(10)


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory, tiny_checkpoint):
    return tiny_checkpoint, build_synthetic_checkpoint(tmp_path_factory.mktemp("large"), "tiny-hd32", seed=5)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    (root / "cat.png").write_bytes(png(3))
    return root


@pytest.fixture(scope="module")
def server(pair_dirs, media_dir):
    small, large = (LLM(str(d), **engine_kwargs()) for d in pair_dirs)
    team = MultiAgent(small, large, brief_max_tokens=4, reason_max_tokens=12)
    engine = AsyncEngine({"tiny": small, "tiny-hd32": large}, team=team)
    media = MediaPolicy(allowed_local_media_path=str(media_dir), allow_remote=True, fetch_timeout=0.5,
                        max_fetch_bytes=100_000, max_images=2)
    app = create_app(engine, api_key=KEY, media=media, disconnect_poll_s=0.1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # loopback only, a free port
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield {"url": f"http://127.0.0.1:{port}", "engine": engine, "small": small, "large": large, "team": team}
    srv.should_exit = True
    thread.join(30)
    engine.shutdown()
    sock.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def offline(pair_dirs):
    """A separate engine over the small checkpoint: the oracle for every plain request."""
    return LLM(str(pair_dirs[0]), **engine_kwargs())


def greedy(max_tokens=8, **kw):
    return SamplingParams(temperature=0, max_tokens=max_tokens, **kw)


def stream_chats_concurrently(url: str, key: str, texts: list[str], model: str = "tiny",
                               max_tokens: int = 6) -> list[str]:
    """Each text as its own streamed chat (greedy, ignore_eos), all at once through the async
    openai client; the joined deltas of each, in order."""

    async def one(aclient, text):
        stream = await aclient.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=max_tokens, temperature=0,
            stream=True, extra_body={"ignore_eos": True})
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main():
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120) as aclient:
            return await asyncio.wait_for(asyncio.gather(*(one(aclient, t) for t in texts)), 180)

    return asyncio.run(main())


def metric(server, name, **labels) -> float:
    return metric_value(httpx.get(server["url"] + "/metrics", timeout=10).text, name, **labels)


def metric_value(text: str, name: str, **labels) -> float:
    """One sample of a Prometheus exposition text (0.0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$" if labels else rf"^{re.escape(name)} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_for(cond, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def no_blocks_in_use(server) -> bool:
    return all(metric(server, "baton_kv_blocks_in_use", model=m) == 0 for m in ("tiny", "tiny-hd32"))


# -- happy paths ---------------------------------------------------------------------------------

def test_models_health_and_metrics(server, client):
    ids = [m.id for m in client.models.list().data]
    assert ids[:2] == ["tiny", "tiny-hd32"] and {"baton-auto", "baton-transfer", "baton-small"} <= set(ids)
    assert httpx.get(server["url"] + "/health", timeout=10).json() == {"status": "ok"}
    text = httpx.get(server["url"] + "/metrics", timeout=10).text
    for name in ("baton_queue_depth", "baton_kv_blocks_in_use", "baton_prefix_cache_hit_rate",
                 "baton_encoder_cache_hit_rate", "baton_preemptions_total", "baton_time_to_first_token_seconds",
                 "baton_time_per_output_token_seconds", "baton_http_requests_total"):
        assert name in text, name


def test_chat_with_base64_image_streamed_and_not(server, client, offline):
    messages = image_chat(data_url(png(1)))
    want = offline.chat(messages, greedy(10))[0]
    full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    assert full.choices[0].message.content == want.text and full.choices[0].message.role == "assistant"
    assert full.choices[0].finish_reason == want.finish_reason
    assert full.usage.completion_tokens == len(want.token_ids)
    assert full.usage.prompt_tokens == len(want.prompt_token_ids)

    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in with_choices[1:])
    assert [c.choices[0].finish_reason for c in with_choices] == [None] * (len(with_choices) - 1) + [want.finish_reason]
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == want.text
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage.completion_tokens == len(want.token_ids)
    # the same prompt again: its image and prefix come from the caches
    assert usage.prompt_tokens_details.cached_tokens >= usage.prompt_tokens - 16


def test_sampling_fields_and_logprobs(client, offline):
    messages = [{"role": "user", "content": "Count to five."}]
    want = offline.chat(messages, greedy(6, stop=["zz"], logprobs=3))[0]
    got = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=6, temperature=0,
                                         top_p=0.9, stop=["zz"], seed=3, logprobs=True, top_logprobs=3,
                                         extra_body={"top_k": 5})
    choice = got.choices[0]
    assert choice.message.content == want.text
    content = choice.logprobs.content
    assert len(content) == len(want.token_ids)
    for tok, entry, tid in zip(content, want.logprobs, want.token_ids):
        assert tok.logprob == pytest.approx(entry[tid], abs=1e-4)
        assert len(tok.top_logprobs) == 3 and tok.top_logprobs[0].logprob == pytest.approx(tok.logprob, abs=1e-4)
    seeded = [client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=1.0,
                                             seed=11).choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1] == offline.chat(messages, SamplingParams(max_tokens=6, seed=11))[0].text


def test_completions_with_text_and_token_ids(client, offline):
    text = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    want = offline.generate(text, greedy(5, logprobs=2))[0]
    got = client.completions.create(model="tiny", prompt=text, max_tokens=5, temperature=0, logprobs=2)
    assert got.choices[0].text == want.text and got.usage.completion_tokens == len(want.token_ids)
    assert got.choices[0].logprobs.token_logprobs == pytest.approx(
        [e[t] for e, t in zip(want.logprobs, want.token_ids)], abs=1e-4)
    ids = want.prompt_token_ids
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == want.text
    streamed = list(client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == want.text
    assert [c.choices[0].finish_reason for c in streamed][-1] == want.finish_reason


def test_image_sources_file_and_http(server, client, offline, media_dir, media_host):
    inside = client.chat.completions.create(model="tiny", messages=image_chat(f"file://{media_dir}/cat.png"),
                                            max_tokens=4, temperature=0)
    assert inside.choices[0].message.content == offline.chat(image_chat(data_url(png(3))), greedy(4))[0].text
    fetched = client.chat.completions.create(model="tiny", messages=image_chat(f"{media_host}/ok.png"),
                                             max_tokens=4, temperature=0)
    assert fetched.choices[0].message.content == offline.chat(image_chat(data_url(png(7))), greedy(4))[0].text


# -- disconnects and load ------------------------------------------------------------------------

def test_client_disconnect_mid_stream_aborts_and_frees_blocks(server, client):
    aborted = metric(server, "baton_requests_finished_total", model="tiny", reason="abort")
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Go on."}],
                                            max_tokens=1800, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()  # the client vanishes mid-stream
    wait_for(lambda: metric(server, "baton_requests_finished_total", model="tiny", reason="abort") == aborted + 1)
    wait_for(lambda: no_blocks_in_use(server))
    assert server["small"].stats()["running"] == 0


def test_64_concurrent_streaming_clients_match_offline(server, offline):
    texts = [f"Tell me about item number {i}." for i in range(64)]
    params = greedy(6, ignore_eos=True)
    want = [o.text for o in offline.chat([[{"role": "user", "content": t}] for t in texts], params)]

    assert stream_chats_concurrently(server["url"], KEY, texts) == want
    wait_for(lambda: no_blocks_in_use(server))
    assert server["engine"].stats()["in_flight"] == 0


# -- errors --------------------------------------------------------------------------------------

def expect_error(call, status: int, code: str | None = None):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    err = info.value
    assert err.status_code == status, err
    body = err.response.json()
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


BAD_CHATS = {
    "bad base64": (dict(messages=image_chat("data:image/png;base64,@@@not-base64")), 400),
    "undecodable image": (dict(messages=image_chat(data_url(b"this is not an image"))), 400),
    "decompression bomb": (dict(messages=image_chat(data_url(bomb_png()))), 400),
    "too many images": (dict(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(png(i))}} for i in range(3)]}]), 400),
    "file outside the allowed dir": (dict(messages=image_chat("file:///etc/hostname")), 400),
    "bare local path": (dict(messages=image_chat("/etc/hostname")), 400),
    "image part with a path": (dict(messages=[{"role": "user", "content": [
        {"type": "image", "image": "/etc/hostname"}]}]), 400),
    "negative temperature": (dict(messages=[{"role": "user", "content": "hi"}], temperature=-1), 400),
    "top_p above 1": (dict(messages=[{"role": "user", "content": "hi"}], top_p=1.5), 400),
    "zero max_tokens": (dict(messages=[{"role": "user", "content": "hi"}], max_tokens=0), 400),
    "n above 1": (dict(messages=[{"role": "user", "content": "hi"}], n=2), 400),
    "bad role": (dict(messages=[{"role": "wizard", "content": "hi"}]), 400),
    "empty messages": (dict(messages=[]), 400),
    "unknown model": (dict(messages=[{"role": "user", "content": "hi"}], model="gpt-9"), 404),
}


@pytest.mark.parametrize("case", list(BAD_CHATS))
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(case, client, offline, media_host):
    kwargs, status = BAD_CHATS[case]
    kwargs = {"model": "tiny", "max_tokens": 4, **kwargs}
    error = expect_error(lambda: client.chat.completions.create(**kwargs), status)
    assert error["type"] == "invalid_request_error"  # OpenAI's type for an unknown model too
    if status == 404:
        assert error["code"] == "model_not_found"
    good = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                          temperature=0)
    assert good.choices[0].message.content == offline.chat([{"role": "user", "content": "hi"}], greedy(4))[0].text


def test_more_bad_inputs(server, client, media_host):
    expect_error(lambda: client.completions.create(model="tiny", prompt=[5] * (MAX_LEN + 1), max_tokens=4), 400)
    expect_error(lambda: client.chat.completions.create(model="tiny", messages=image_chat(f"{media_host}/big.png"),
                                                        max_tokens=4), 400, "image_too_large")
    expect_error(lambda: client.chat.completions.create(model="tiny", messages=image_chat(f"{media_host}/slow.png"),
                                                        max_tokens=4), 400, "image_fetch_failed")
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    bad_json = httpx.post(server["url"] + "/v1/chat/completions", content=b"{not json", headers=headers, timeout=10)
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    missing = httpx.get(server["url"] + "/v1/nothing-here", headers=headers, timeout=10)
    assert missing.status_code == 404 and set(missing.json()["error"]) >= {"message", "type", "code"}
    assert client.completions.create(model="tiny", prompt="ok", max_tokens=2).choices[0].finish_reason


def test_remote_and_local_media_are_off_by_default():
    policy = MediaPolicy()
    for url in ("http://127.0.0.1:1/x.png", "file:///tmp/x.png"):
        with pytest.raises(ApiError) as info:
            policy.resolve_messages(image_chat(url))
        assert info.value.status == 400 and "disabled" in info.value.message


def test_full_queue_gets_503_and_the_server_recovers(server, client):
    engine = server["engine"]
    engine.max_queue = 0  # nothing may wait: every new request is refused
    try:
        error = expect_error(lambda: client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2), 503, "queue_full")
        assert "max_queue=0" in error["message"]
    finally:
        engine.max_queue = 256
    assert client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2).choices[0].message.role == "assistant"


def test_failed_step_is_a_500_and_the_next_request_succeeds(server, client):
    def explode(batch):
        raise RuntimeError("injected fault")

    server["small"].fault_hook = explode
    try:
        error = expect_error(lambda: client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3), 500)
        assert "injected fault" in error["message"]
    finally:
        server["small"].fault_hook = None
    # served normally (which token random weights pick, EOS or not, is beside the point)
    assert client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2).choices[0].finish_reason in ("length", "stop")
    wait_for(lambda: no_blocks_in_use(server))


def test_api_key_is_required(server):
    for key in ("wrong", ""):
        anon = openai.OpenAI(base_url=server["url"] + "/v1", api_key=key or "none", max_retries=0, timeout=30)
        error = expect_error(lambda: anon.models.list(), 401, "invalid_api_key")
        assert error["type"] == "authentication_error"
    raw = httpx.post(server["url"] + "/v1/chat/completions", json={"model": "tiny", "messages": []}, timeout=10)
    assert raw.status_code == 401
    assert httpx.get(server["url"] + "/health", timeout=10).status_code == 200


# -- multi-agent ---------------------------------------------------------------------------------

def test_multi_agent_auto_returns_its_path_and_stage_table(server, client):
    messages = image_chat(data_url(png(2)), "Which colour is the box?")
    got = client.chat.completions.create(model="baton-auto", messages=messages)
    ext = got.model_extra["baton"]
    offline = server["team"].run(image_chat(data_url(png(2)), "Which colour is the box?"), mode="auto")
    assert got.choices[0].message.content == offline.answer
    assert ext["path"] == offline.mode and ext["path"] in ("auto:agree", "auto:transfer")
    assert [s["name"] for s in ext["stages"]] == [s.name for s in offline.stages]
    for stage in ext["stages"]:
        assert {"name", "model", "prompt_tokens", "cached_tokens", "output_tokens", "seconds",
                "vision_encoder_calls"} <= set(stage)
    assert got.usage.prompt_tokens == sum(s["prompt_tokens"] for s in ext["stages"])

    chunks = list(client.chat.completions.create(model="baton-auto", messages=messages, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == offline.answer
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert chunks[-1].model_extra["baton"]["path"] == offline.mode
    assert metric(server, "baton_multi_agent_requests_total", path=offline.mode) >= 2


def test_multi_agent_transfer_streams_the_final_answer_with_options(server, client):
    messages = image_chat(data_url(png(5)), "Count the boxes.")
    opts = {"multi_agent": {"selector": "truncate", "budget": 3}}
    chunks = list(client.chat.completions.create(model="baton-transfer", messages=messages, stream=True,
                                                 extra_body=opts))
    offline = server["team"].run(messages, mode="transfer", selector="truncate", budget=3)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == offline.answer
    ext = chunks[-1].model_extra["baton"]
    assert ext["path"] == "transfer" and ext["transferred_tokens"] == len(offline.transferred_token_ids) <= 3
    expect_error(lambda: client.chat.completions.create(model="baton-transfer", messages=messages,
                                                        extra_body={"multi_agent": {"selector": "nope"}}), 400)
    expect_error(lambda: client.chat.completions.create(model="baton-auto", messages=[{"role": "system",
                                                                                      "content": "x"}]), 400)
