"""Prefix cache, encoder cache and scheduling under load, end to end on a tiny model: outputs
never change, only the work done does."""
import pytest

from baton import SamplingParams
from baton.engine.demo import make_demo_image

PAD = "<|vision_start|><|image_pad|><|vision_end|>"
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
IMG_A = make_demo_image(64, 64, seed=11)
IMG_B = make_demo_image(64, 64, seed=12)


def ask(question, image=IMG_A, history=""):
    return {"prompt": f"<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n{PAD}{question}"
                      f"<|im_end|>\n<|im_start|>assistant\n{history}", "images": [image]}


WORKLOAD = [ask("What is it?"), ask("What is it?"), ask("Which colours?"), ask("What is it?", IMG_B),
            ask("Count the boxes."), ask("What is it?")]


def tokens(outs):
    return [o.token_ids for o in outs]


@pytest.fixture(scope="module")
def reference(tiny_llm_factory):
    """Greedy outputs with prefix caching off, one request at a time."""
    llm = tiny_llm_factory(enable_prefix_caching=False)
    return [llm.generate(p, GREEDY)[0].token_ids for p in WORKLOAD]


def test_outputs_identical_with_prefix_caching_on(tiny_llm_factory, reference):
    llm = tiny_llm_factory(enable_prefix_caching=True)
    assert [llm.generate(p, GREEDY)[0].token_ids for p in WORKLOAD] == reference
    assert tokens(llm.generate(WORKLOAD, GREEDY)) == reference  # all at once, sharing blocks
    assert llm.stats()["prefix_cache_hit_tokens"] > 0


def test_repeat_hits_all_but_one_block_and_skips_the_vision_encoder(tiny_llm_factory):
    llm = tiny_llm_factory()
    first = llm.generate(ask("Again?"), GREEDY)[0]
    calls = llm.stats()["vision_encoder_calls"]
    second = llm.generate(ask("Again?"), GREEDY)[0]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens >= len(second.prompt_token_ids) - llm.block_size
    assert llm.stats()["vision_encoder_calls"] == calls
    assert second.token_ids == first.token_ids


def test_reuse_is_token_granular_and_outputs_match_a_fresh_engine(tiny_llm_factory):
    """A repeat serves all but the last token; a prompt that leaves the first one mid-block
    serves every shared token (the partial block's slots are copied), and both generate
    exactly what an engine without the cache does."""
    llm = tiny_llm_factory()
    fresh = tiny_llm_factory(enable_prefix_caching=False)
    first = llm.generate(ask("Partial?"), GREEDY)[0]
    n = len(first.prompt_token_ids)
    assert n % llm.block_size != 0, "the test needs a prompt that ends mid-block"
    again = llm.generate(ask("Partial?"), GREEDY)[0]
    assert again.num_cached_tokens == n - 1
    assert again.token_ids == first.token_ids
    # extend the first prompt by its answer's first tokens and a new question: the first
    # prompt plus two computed answer tokens are cached, the rest diverges mid-block
    follow_ids = first.prompt_token_ids + first.token_ids[:2] + first.prompt_token_ids[-7:]
    follow = {"prompt_token_ids": follow_ids, "images": [IMG_A]}
    out = llm.generate(follow, GREEDY)[0]
    assert out.num_cached_tokens >= n + 2
    assert out.token_ids == fresh.generate(follow, GREEDY)[0].token_ids
    s = llm.stats()
    assert s["kv_blocks_free"] == s["kv_blocks_total"]


def test_same_text_different_image_never_hits_image_blocks(tiny_llm_factory):
    llm = tiny_llm_factory()
    a = llm.generate(ask("Same words"), GREEDY)[0]
    b = llm.generate(ask("Same words", IMG_B), GREEDY)[0]
    image_start = a.prompt_token_ids.index(llm.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    assert b.num_cached_tokens <= image_start  # only the text before the image may be shared
    fresh = tiny_llm_factory(enable_prefix_caching=False).generate(ask("Same words", IMG_B), GREEDY)[0]
    assert b.token_ids == fresh.token_ids


def test_encoder_cache_serves_image_when_prefix_differs(tiny_llm_factory):
    llm = tiny_llm_factory()
    llm.generate(ask("One"), GREEDY)
    calls = llm.stats()["vision_encoder_calls"]
    other = {"prompt": f"<|im_start|>user\nDifferent system-free prefix {PAD} now<|im_end|>\n<|im_start|>assistant\n",
             "images": [IMG_A]}
    out = llm.generate(other, GREEDY)[0]
    assert llm.stats()["vision_encoder_calls"] == calls and llm.stats()["encoder_cache_hits"] >= 1
    fresh = tiny_llm_factory(enable_prefix_caching=False)
    assert fresh.generate(other, GREEDY)[0].token_ids == out.token_ids


def test_multi_turn_continuation_hits_previous_prompt_and_answer(tiny_llm_factory):
    llm = tiny_llm_factory()
    turn1 = llm.generate(ask("Start"), SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))[0]
    follow_ids = turn1.prompt_token_ids + turn1.token_ids + turn1.prompt_token_ids[-5:]
    follow = {"prompt_token_ids": follow_ids, "images": [IMG_A]}
    out = llm.generate(follow, GREEDY)[0]
    assert out.num_cached_tokens >= len(turn1.prompt_token_ids) + len(turn1.token_ids) - llm.block_size
    fresh = tiny_llm_factory(enable_prefix_caching=False)
    assert fresh.generate(follow, GREEDY)[0].token_ids == out.token_ids


def test_chunked_prefill_matches_whole_prefill(tiny_llm_factory, reference):
    llm = tiny_llm_factory(max_num_batched_tokens=16, enable_prefix_caching=False)
    assert tokens(llm.generate(WORKLOAD, GREEDY)) == reference


def test_overload_64_requests_small_pool_matches_unconstrained(tiny_llm_factory):
    prompts = [ask(f"Question number {i} " + "more " * (i % 7), image=[IMG_A, IMG_B][i % 2]) for i in range(64)]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    big = tiny_llm_factory()
    want = tokens(big.generate(prompts, params))
    small = tiny_llm_factory(kv_cache_bytes=_bytes_for_blocks(big, 40), max_num_batched_tokens=256)
    got = small.generate(prompts, params)
    assert tokens(got) == want
    s = small.stats()
    assert s["num_preemptions"] > 0, "the pool was meant to be too small to avoid preemption"
    assert s["kv_blocks_free"] == s["kv_blocks_total"]
    assert all(o.finish_reason == "length" for o in got)


def _bytes_for_blocks(llm, n):
    per = llm.runner.kv_cache[:, :, 0].numel() * llm.runner.kv_cache.element_size()
    return per * n
