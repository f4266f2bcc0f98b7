"""LLM.score (the attention probe) vs transformers' eager attention weights of the last layer,
and its contract: bad ranges rejected, no KV blocks held, requests in flight untouched."""
import pytest
import torch

from baton import InvalidRequestError, SamplingParams
from baton.engine.demo import make_demo_image
from tests.parity_utils import hf_inputs

PAD = "<|vision_start|><|image_pad|><|vision_end|>"
PROMPT = {"prompt": f"<|im_start|>user\n{PAD}Think about the boxes and their colours.<|im_end|>\n"
                    "<|im_start|>assistant\nThe red one is big. Answer: red",
          "images": [make_demo_image(48, 48, seed=2)]}


@pytest.fixture(scope="module")
def llm(tiny_llm_factory):
    return tiny_llm_factory(max_num_batched_tokens=24)


@pytest.fixture(scope="module")
def hf_last_layer_attention(llm, tiny_checkpoint):
    """[H, T, T] eager attention probabilities of the last layer over PROMPT."""
    from transformers import Qwen3VLForConditionalGeneration

    ref = Qwen3VLForConditionalGeneration.from_pretrained(str(tiny_checkpoint), dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    processed = llm.processor.process(PROMPT["prompt"], PROMPT["images"])
    with torch.no_grad():
        return ref(**hf_inputs(processed, llm.model_cfg.image_token_id), output_attentions=True).attentions[-1][0]


def assert_pool_clean(llm):
    s = llm.stats()
    assert s["kv_blocks_free"] == s["kv_blocks_total"] and not any(llm.block_manager.ref_counts)


@pytest.mark.parametrize("cached", [False, True], ids=["cold", "prompt-cached"])
def test_score_matches_transformers_eager_attention(tiny_llm_factory, hf_last_layer_attention, cached):
    llm = tiny_llm_factory(max_num_batched_tokens=24)
    n = hf_last_layer_attention.shape[-1]
    q0, k0, k1 = n - 4, n - 20, n - 6
    if cached:  # the cache then holds blocks past query_start, which must still be recomputed
        llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=2))
        assert llm.stats()["kv_blocks_cached"] * llm.block_size > q0
    got = llm.score(PROMPT, query_start=q0, key_start=k0, key_end=k1)
    want = hf_last_layer_attention[:, q0:, k0:k1].sum(dim=(0, 1))
    assert got.dtype == torch.float32 and got.shape == (k1 - k0,)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert_pool_clean(llm)


def test_score_of_the_whole_prompt_onto_its_start(llm, hf_last_layer_attention):
    got = llm.score(PROMPT, query_start=1, key_start=0, key_end=1)
    want = hf_last_layer_attention[:, 1:, 0:1].sum(dim=(0, 1))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert_pool_clean(llm)


def test_score_leaves_requests_in_flight_alone(llm):
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    want = llm.generate(PROMPT, params)[0].token_ids
    rid = llm.add_request(PROMPT, params)
    outs = [o for _ in range(3) for o in llm.step()]  # mid-prefill and decode steps
    n = len(llm.processor.process(PROMPT["prompt"], PROMPT["images"]).token_ids)
    llm.score(PROMPT, query_start=n - 3, key_start=0, key_end=5)
    while llm.has_unfinished():
        outs += llm.step()
    final = [o for o in outs if o.request_id == rid and o.finished]
    assert len(final) == 1 and final[0].token_ids == want
    assert_pool_clean(llm)


@pytest.mark.parametrize("q0,k0,k1", [
    (10, -1, 5), (10, 5, 5), (10, 6, 5), (10, 2, 11), (10**6, 0, 5), (10, 0, 5.0), (True, 0, 1),
])
def test_score_rejects_bad_ranges(llm, q0, k0, k1):
    with pytest.raises(InvalidRequestError, match="query_start"):
        llm.score(PROMPT, query_start=q0, key_start=k0, key_end=k1)
    assert_pool_clean(llm)


def test_score_rejects_a_bad_prompt(llm):
    with pytest.raises(InvalidRequestError):
        llm.score({"prompt_token_ids": []}, query_start=1, key_start=0, key_end=1)
