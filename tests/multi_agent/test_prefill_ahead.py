"""Prefill-ahead in "transfer" mode: the large model caches [image + question] while the small
model reasons; the image is encoded once; the answer equals a cold engine's on the same prompt."""
import pytest

from baton import MultiAgent, SamplingParams

from .conftest import engine, question


@pytest.fixture(scope="module")
def cold_large(agent_pair):
    return engine(agent_pair[1], enable_prefix_caching=False)


@pytest.fixture(scope="module")
def team(agent_pair):
    return MultiAgent(engine(agent_pair[0]), engine(agent_pair[1]), reason_max_tokens=12, brief_max_tokens=6,
                      exact_lengths=True)


@pytest.mark.parametrize("selector,budget,seeds", [("full", None, (20, 21)), ("entropy", 0.5, (30, 31))])
def test_prefill_ahead_encodes_once_and_answers_like_a_cold_engine(team, cold_large, selector, budget, seeds):
    large = team.engines["large"]
    msgs = [question(s) for s in seeds]  # new images: no encoder-cache hits from other tests
    before = large.stats()["vision_encoder_calls"]
    res = team.run_batch(msgs, mode="transfer", selector=selector, budget=budget)
    assert large.stats()["vision_encoder_calls"] - before == len(msgs)  # exactly one per image
    for r, m in zip(res, msgs):
        names = [s.name for s in r.stages]
        assert names.count("large-prefill") == 1 and names[-1] == "large-final"
        pre = next(s for s in r.stages if s.name == "large-prefill")
        final = r.stages[-1]
        assert pre.vision_encoder_calls == 1 and final.vision_encoder_calls == 0
        head = len(pre.prompt_token_ids)
        assert final.prompt_token_ids[:head] == pre.prompt_token_ids
        assert final.cached_tokens >= head  # only the transferred tokens + template are prefilled
        ref = cold_large.generate({"prompt_token_ids": final.prompt_token_ids, "images": [m[0]["content"][0]["image"]]},
                                  SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))[0]
        assert final.text == ref.text and r.answer == ref.text.strip()


def test_prefill_ahead_off_gives_the_same_answer(agent_pair, team):
    on = team
    off = MultiAgent(engine(agent_pair[0]), engine(agent_pair[1]), reason_max_tokens=12, brief_max_tokens=6,
                     exact_lengths=True, prefill_ahead=False)
    a, b = on.run(question(22), mode="transfer"), off.run(question(22), mode="transfer")
    assert "large-prefill" not in [s.name for s in b.stages]
    assert a.answer == b.answer and a.transferred_token_ids == b.transferred_token_ids
    assert a.stages[-1].prompt_token_ids == b.stages[-1].prompt_token_ids
    assert b.stages[-1].vision_encoder_calls == 1 and a.stages[-1].vision_encoder_calls == 0
