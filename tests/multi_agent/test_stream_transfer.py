"""selector="entropy-stream": chunks of the small model's reasoning reach the large model while
it is still generating; the final prompt is exactly the one built from the same selection after
the fact (checked against a plain re-implementation), and the answer equals a cold engine's."""
import pytest

from baton import MultiAgent, SamplingParams
from baton.engine.agent_prompts import AgentPrompts

from .conftest import engine, question

CHUNK, REASON, BRIEF = 4, 20, 5


def plain_selection(entropy, fraction, chunk):
    kept = []
    for start in range(0, len(entropy), chunk):
        idx = list(range(start, min(start + chunk, len(entropy))))
        q = len(idx) if fraction is None else max(1, round(fraction * len(idx)))
        kept += sorted(sorted(idx, key=lambda i: (-entropy[i], i))[:q])
    return kept


@pytest.fixture(scope="module")
def engines(agent_pair):
    return engine(agent_pair[0]), engine(agent_pair[1]), engine(agent_pair[1], enable_prefix_caching=False)


@pytest.mark.parametrize("mode,budget", [("transfer", 0.5), ("auto", None)])
def test_streamed_transfer_builds_the_same_prompt_and_answer(engines, mode, budget):
    small, large, cold = engines
    team = MultiAgent(small, large, reason_max_tokens=REASON, brief_max_tokens=BRIEF, exact_lengths=True,
                      selector="entropy-stream", budget=budget, stream_chunk=CHUNK)
    msgs = question(40 if mode == "transfer" else 41)
    image = msgs[0]["content"][0]["image"]
    res = team.run(msgs, mode=mode)
    assert res.mode in ("transfer", "auto:transfer")

    # the reference: the small model's reasoning with its entropies, selected by a plain loop
    p, tok = AgentPrompts(), small.processor.tokenizer
    reason = team.builders["small"].reason(msgs)[0]  # its chat template + think-open
    out = small.generate({"prompt_token_ids": reason, "images": [image]},
                         SamplingParams(temperature=0, max_tokens=REASON, ignore_eos=True, token_stats=True))[0]
    keep = plain_selection(out.token_stats["entropy"], budget, CHUNK)
    selected = [out.token_ids[i] for i in keep]
    brief = team.builders["large"].brief(msgs)[0]
    enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    want = brief + enc(p.think_open + p.transfer_preamble) + selected + enc(p.think_close)

    final = res.stages[-1]
    assert final.name == "large-final" and final.prompt_token_ids == want
    assert res.transferred_token_ids == selected
    # streamed: large-prefill stages grew the prefix while the small model reasoned
    prefills = [s for s in res.stages if s.name == "large-prefill"]
    assert len(prefills) >= 2
    reason_end = next(s.end for s in res.stages if s.name == "small-reason")
    assert any(s.start < reason_end for s in prefills[1:])
    # at the end only the last chunk(s) + the end-of-thought marker are left
    assert final.prompt_tokens - final.cached_tokens <= CHUNK + len(enc(p.think_close)) + 1
    ref = cold.generate({"prompt_token_ids": want, "images": [image]},
                        SamplingParams(temperature=0, max_tokens=BRIEF, ignore_eos=True))[0]
    assert final.text == ref.text and final.vision_encoder_calls == 0
    for eng in (small, large):
        s = eng.stats()
        assert s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == s["waiting"] == 0


def test_entropy_stream_rejects_segments(engines):
    from baton import InvalidRequestError

    team = MultiAgent(engines[0], engines[1], segments="word")
    with pytest.raises(InvalidRequestError, match="segments"):
        team.run(question(1), mode="transfer", selector="entropy-stream")


def test_overlapped_engines_give_the_same_transfer(agent_pair, engines):
    """overlap_engines steps the two engines in two threads; one request's stages still see
    the same prompts, so its prompts and greedy answer match the one-thread loop's."""
    small, large, _ = engines
    kw = dict(reason_max_tokens=REASON, brief_max_tokens=BRIEF, exact_lengths=True, selector="entropy-stream",
              budget=0.5, stream_chunk=CHUNK)
    together = MultiAgent(small, large, overlap_engines=True, **kw)
    alone = MultiAgent(engine(agent_pair[0]), engine(agent_pair[1]), **kw)
    for mode in ("transfer", "auto"):
        a, b = together.run(question(70), mode=mode), alone.run(question(70), mode=mode)
        assert a.mode == b.mode and a.answer == b.answer
        assert a.stages[-1].prompt_token_ids == b.stages[-1].prompt_token_ids
    res = together.run_batch([question(71), question(72)], mode="auto")
    assert all(r.error is None and r.answer for r in res)
    for eng in (small, large):
        s = eng.stats()
        assert s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == s["waiting"] == 0
