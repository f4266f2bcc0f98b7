"""Validation at the door: bad sampling values, text, constructor options and images raise
typed errors naming the field before they reach step(), and the engine keeps serving: a good
request afterwards gives the tokens of a fresh engine, and no KV block is left held."""
import io
import math
import struct
import zlib

import pytest
from PIL import Image

from baton import BatonError, InvalidRequestError, MultiAgent, SamplingParams
from baton.engine.host_allocator import release_free_memory
from baton.engine.sampling_params import GREEDY_EPSILON

PAD = "<|vision_start|><|image_pad|><|vision_end|>"
GOOD = "<|im_start|>user\nname three colours<|im_end|>\n<|im_start|>assistant\n"
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_llm_factory):
    return tiny_llm_factory(max_model_len=256, kv_cache_bytes=1 << 20)


@pytest.fixture(scope="module")
def reference(tiny_llm_factory):
    """Tokens of GOOD (and of an image prompt) on an engine that never saw a bad request."""
    fresh = tiny_llm_factory(max_model_len=256, kv_cache_bytes=1 << 20)
    img = Image.new("RGB", (64, 48), (200, 30, 90))
    return {"text": fresh.generate(GOOD, GREEDY)[0].token_ids,
            "image": fresh.generate({"prompt": PAD + "what is it", "images": [img]}, GREEDY)[0].token_ids}


def assert_healthy(llm, reference):
    assert llm.generate(GOOD, GREEDY)[0].token_ids == reference["text"]
    s = llm.stats()
    assert s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == 0 and s["waiting"] == 0


def png_bytes(width: int, height: int) -> bytes:
    """A black RGB PNG written row by row, so the test never holds its pixels (~1 KB/Mpx)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


# -- sampling values ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [2**64, 2**70, -2**63 - 1])
def test_seed_outside_64_bits_is_refused(llm, reference, seed):
    with pytest.raises(InvalidRequestError, match="seed"):
        SamplingParams(seed=seed)
    assert_healthy(llm, reference)


@pytest.mark.parametrize("seed", [-2**63, 2**64 - 1])
def test_seed_at_the_64_bit_edges_samples_deterministically(llm, seed):
    params = SamplingParams(temperature=1.0, max_tokens=6, ignore_eos=True, seed=seed)
    first, second = llm.generate([GOOD, GOOD], [params, params])
    assert first.finish_reason == "length" and first.token_ids == second.token_ids


def test_logprobs_above_the_vocabulary_are_refused_at_submission(llm, reference):
    vocab = llm.model_cfg.text.vocab_size
    with pytest.raises(InvalidRequestError, match=f"logprobs.*{vocab}"):
        llm.add_request(GOOD, SamplingParams(logprobs=vocab + 1))
    bad, good = llm.generate([GOOD, GOOD], [SamplingParams(logprobs=vocab + 1), GREEDY])
    assert bad.finish_reason == "error" and "logprobs" in bad.error
    assert good.token_ids == reference["text"]
    full = llm.generate(GOOD, SamplingParams(temperature=0, max_tokens=1, logprobs=vocab))[0]
    assert len(full.logprobs[0]) == vocab
    assert_healthy(llm, reference)


@pytest.mark.parametrize("temperature", [math.inf, -math.inf, math.nan, -0.5, "1", True])
def test_temperature_must_be_finite_and_non_negative(temperature):
    with pytest.raises(InvalidRequestError, match="temperature"):
        SamplingParams(temperature=temperature)


@pytest.mark.parametrize("temperature", [1e-45, 1e-6, 0.0])
def test_temperature_below_epsilon_is_greedy(llm, reference, temperature):
    assert temperature < GREEDY_EPSILON and SamplingParams(temperature=temperature).greedy
    params = SamplingParams(temperature=temperature, max_tokens=8, ignore_eos=True)
    assert llm.generate(GOOD, params)[0].token_ids == reference["text"]
    assert not SamplingParams(temperature=GREEDY_EPSILON).greedy


# -- text that cannot be encoded ------------------------------------------------------------------

def test_lone_surrogate_in_a_prompt_fails_only_its_request(llm, reference):
    with pytest.raises(InvalidRequestError, match="prompt"):
        llm.generate("abc \ud800", GREEDY)
    outs = llm.generate([GOOD, "abc \ud800", {"prompt": "x \udfff", "images": []}, GOOD], GREEDY)
    assert [o.finish_reason for o in outs] == ["length", "error", "error", "length"]
    assert "Unicode" in outs[1].error and "prompt" in outs[1].error
    assert outs[0].token_ids == outs[3].token_ids == reference["text"]
    assert_healthy(llm, reference)


def test_lone_surrogate_in_chat_messages_fails_only_its_conversation(llm, reference):
    good = [{"role": "user", "content": "name three colours"}]
    bad_str = [{"role": "user", "content": "abc \ud800"}]
    bad_part = [{"role": "user", "content": [{"type": "text", "text": "abc \ud800"}]}]
    with pytest.raises(InvalidRequestError, match=r"messages\[0\]\.content"):
        llm.chat(bad_str, GREEDY)
    outs = llm.chat([good, bad_str, bad_part, good], GREEDY)
    assert [o.finish_reason for o in outs] == ["length", "error", "error", "length"]
    assert r"messages[0].content[0].text" in outs[2].error
    assert outs[0].token_ids == outs[3].token_ids == reference["text"]
    with pytest.raises(InvalidRequestError, match="stop"):
        SamplingParams(stop=["ok", "\ud800"])
    assert_healthy(llm, reference)


# -- batch calls -----------------------------------------------------------------------------------

def test_a_params_list_of_the_wrong_length_is_refused(llm, reference):
    conv = [{"role": "user", "content": "hi"}]
    with pytest.raises(InvalidRequestError, match="1 sampling_params for 3 conversations"):
        llm.chat([conv, conv, conv], [GREEDY])
    with pytest.raises(InvalidRequestError, match="2 sampling_params for 3 prompts"):
        llm.generate([GOOD, GOOD, GOOD], [GREEDY, GREEDY])
    assert_healthy(llm, reference)


def test_generate_beside_pending_add_requests_keeps_their_outputs(llm, reference):
    mine = llm.add_request(GOOD, GREEDY, request_id="req-1")  # the shape of an automatic id
    auto = llm.add_request(GOOD, GREEDY)
    outs = llm.generate([GOOD, GOOD], GREEDY)
    assert {o.request_id for o in outs}.isdisjoint({mine, auto})
    assert all(o.token_ids == reference["text"] for o in outs)
    finished = {}
    for _ in range(50):  # generate may already have run them; step() then hands over their outputs
        finished.update({o.request_id: o for o in llm.step() if o.finished})
        if len(finished) == 2:
            break
    assert set(finished) == {mine, auto}
    assert all(o.token_ids == reference["text"] for o in finished.values())
    assert_healthy(llm, reference)


# -- constructor options ----------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [
    ("block_size", 3), ("block_size", 0), ("block_size", "16"), ("device", "tpu"), ("device", "cuda:x"),
    ("device", 0), ("dtype", "int8"), ("dtype", ["float32"]), ("max_num_seqs", 0),
    ("max_num_batched_tokens", -1), ("attention_backend", "bogus"), ("max_model_len", -5),
    ("max_model_len", 1), ("kv_cache_bytes", 16), ("kv_cache_bytes", -1), ("kv_cache_bytes", 1.5e6),
    ("encoder_cache_bytes", -1), ("enable_prefix_caching", "yes"), ("check_weights", None),
    ("max_image_pixels", 0),
])
def test_bad_llm_option_is_a_typed_error_naming_it(tiny_llm_factory, option, value):
    with pytest.raises(InvalidRequestError, match=option) as info:
        tiny_llm_factory(**{option: value})
    assert isinstance(info.value, BatonError)


@pytest.mark.parametrize("option, value", [
    ("reason_max_tokens", 0), ("brief_max_tokens", -1), ("brief_max_tokens", 2.5), ("selector", "bogus"),
    ("segments", "line"), ("budget", -1), ("budget", 1.5), ("budget", "half"), ("exact_lengths", "yes"),
    ("kv_cache_bytes", 0), ("prompts", "be brief"),
])
def test_bad_multi_agent_option_is_a_typed_error_naming_it(llm, option, value):
    with pytest.raises(InvalidRequestError, match=option):
        MultiAgent(llm, llm, **{option: value})


def test_multi_agent_needs_two_engines_or_two_paths(llm, tiny_checkpoint):
    with pytest.raises(InvalidRequestError, match="small and large"):
        MultiAgent(llm, str(tiny_checkpoint))


# -- images -------------------------------------------------------------------------------------

def test_oversized_image_is_refused_before_decoding(llm, reference, tmp_path):
    data = png_bytes(9000, 9000)
    assert len(data) < 1 << 20
    path = tmp_path / "huge.png"
    path.write_bytes(data)
    release_free_memory()
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM, so a decode shows as a peak
        f.write("5")
    base = _status_mb("VmRSS")
    for source in (data, str(path)):
        with pytest.raises(InvalidRequestError, match="9000x9000.*max_image_pixels"):
            llm.generate({"prompt": PAD + "what is it", "images": [source]}, GREEDY)
    assert _status_mb("VmHWM") - base < 100
    img = Image.new("RGB", (64, 48), (200, 30, 90))
    assert llm.generate({"prompt": PAD + "what is it", "images": [img]}, GREEDY)[0].token_ids == reference["image"]
    assert_healthy(llm, reference)


def test_max_image_pixels_is_configurable(tiny_llm_factory):
    small_cap = tiny_llm_factory(max_model_len=256, kv_cache_bytes=1 << 20, max_image_pixels=40 * 40)
    for source in (Image.new("RGB", (64, 48)), png_bytes(64, 48)):
        with pytest.raises(InvalidRequestError, match="max_image_pixels=1600"):
            small_cap.generate({"prompt": PAD + "x", "images": [source]}, GREEDY)
    ok = small_cap.generate({"prompt": PAD + "x", "images": [Image.new("RGB", (40, 40))]}, GREEDY)[0]
    assert ok.finish_reason == "length"
    uncapped = tiny_llm_factory(max_model_len=256, kv_cache_bytes=1 << 20, max_image_pixels=None)
    assert uncapped.processor.max_image_pixels is None


def test_image_cache_is_bounded_in_bytes(tiny_checkpoint):
    from baton.models.processor import Processor

    img = Image.new("RGB", (64, 48), (1, 2, 3))
    roomy, tight = Processor(tiny_checkpoint), Processor(tiny_checkpoint, image_cache_bytes=1000)
    assert roomy.preprocess_image(img).pixel_values.nbytes > 1000
    tight.preprocess_image(img)
    assert len(roomy._image_cache) == 1 and len(tight._image_cache) == 0


def test_memory_after_a_large_accepted_image_returns(llm, reference):
    data = png_bytes(5000, 5000)  # 25 Mpx: under the default cap, ~300 MB of decode buffers
    buf = io.BytesIO(data)
    assert Image.open(buf).size == (5000, 5000)
    release_free_memory()
    before = _status_mb("VmRSS")
    out = llm.generate({"prompt": PAD + "what is it", "images": [data]}, GREEDY)[0]
    assert out.finish_reason == "length"
    assert _status_mb("VmRSS") - before < 100
    assert_healthy(llm, reference)
