"""MultiAgent on synthetic pairs: agreement short-circuits, disagreement transfers, the large
model reuses its cached prompt, selection respects budget and order, bad requests fail alone."""
import json

import pytest

from baton import LLM, InvalidRequestError, MultiAgent
from baton.engine.demo import make_demo_image
from baton.models.synthetic import build_synthetic_checkpoint
from baton.models.tokenizer_builder import write_tokenizer_files


def question(seed=1, text="What colour is the largest box?"):
    return [{"role": "user", "content": [{"type": "image", "image": make_demo_image(64, 48, seed=seed)},
                                         {"type": "text", "text": text}]}]


def engine(path, **kw):
    return LLM(str(path), device="cpu", dtype="float32", attention_backend="torch", **kw)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_checkpoint):
    large = build_synthetic_checkpoint(tmp_path_factory.mktemp("large"), "tiny-hd32", seed=5)
    return tiny_checkpoint, large


@pytest.fixture(scope="module")
def team(pair):
    return MultiAgent(engine(pair[0]), engine(pair[1]), reason_max_tokens=24, brief_max_tokens=6)


def test_auto_returns_after_brief_stage_when_models_agree(tiny_checkpoint):
    same = MultiAgent(engine(tiny_checkpoint), engine(tiny_checkpoint), brief_max_tokens=6)
    res = same.run(question(), mode="auto")
    assert res.mode == "auto:agree"
    assert {s.name for s in res.stages} == {"small-brief", "large-brief"}
    assert res.answer == res.stages[0].text.strip() == res.stages[1].text.strip()
    assert res.transferred_token_ids == []


def test_auto_transfers_on_disagreement_and_large_reuses_its_prompt(team):
    res = team.run(question(2), mode="auto", selector="full")
    assert res.mode == "auto:transfer", [s.text for s in res.stages]
    names = [s.name for s in res.stages]
    assert set(names) == {"small-brief", "large-brief", "small-reason", "large-final"}
    large = [s for s in res.stages if s.model == "large"]
    assert sum(s.vision_encoder_calls for s in large) == 1
    brief = next(s for s in res.stages if s.name == "large-brief")
    final = next(s for s in res.stages if s.name == "large-final")
    assert final.cached_tokens >= brief.prompt_tokens  # token-granular: nothing of stage 1 recomputed
    reason = next(s for s in res.stages if s.name == "small-reason")
    assert len(res.transferred_token_ids) in (reason.output_tokens, reason.output_tokens - 1)  # minus a stop token
    assert final.prompt_tokens > brief.prompt_tokens + len(res.transferred_token_ids) - 1


@pytest.mark.parametrize("selector,budget", [("truncate", 5), ("entropy", 6), ("entropy", 0.25), ("attention", 4)])
def test_selection_respects_budget_and_order(team, selector, budget):
    res = team.run(question(3), mode="transfer", selector=selector, budget=budget)
    reason = next(s for s in res.stages if s.name == "small-reason")
    limit = budget if isinstance(budget, int) else max(1, round(budget * reason.output_tokens))
    assert 0 < len(res.transferred_token_ids) <= limit
    # the transferred ids are a subsequence of the reasoning, in order
    full = team.run(question(3), mode="transfer", selector="full").transferred_token_ids
    it = iter(full)
    assert all(t in it for t in res.transferred_token_ids)
    if selector == "truncate":
        assert res.transferred_token_ids == full[:budget]
    if selector == "attention":  # scored by a direct LLM.score call, not an engine stage
        names = [s.name for s in res.stages if s.name != "large-prefill"]  # prefill-ahead runs beside
        assert names == ["small-reason", "small-answer", "large-final"]


def test_attention_selector_beside_other_requests_holds_no_blocks(team):
    results = team.run_batch([question(3), question(10), question(11)], mode="transfer", selector="attention",
                             budget=3)
    assert all(r.error is None and 0 < len(r.transferred_token_ids) <= 3 for r in results)
    alone = team.run(question(10), mode="transfer", selector="attention", budget=3)
    assert alone.transferred_token_ids == results[1].transferred_token_ids
    for eng in team.engines.values():
        s = eng.stats()
        assert s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == s["waiting"] == 0


def test_reason_modes_answer_after_reasoning_with_prefix_reuse(team):
    res = team.run(question(4), mode="large-reason")
    assert [s.name for s in res.stages] == ["large-reason", "large-answer"]
    reason, answer = res.stages
    assert answer.cached_tokens >= reason.prompt_tokens + reason.output_tokens - 1
    assert answer.vision_encoder_calls == 0


def test_cross_tokenizer_transfer(tmp_path, tiny_checkpoint):
    tok_dir = tmp_path / "tok"
    write_tokenizer_files(tok_dir, vocab_size=1200)
    other = build_synthetic_checkpoint(tmp_path / "other", "tiny-gqa4", seed=9, tokenizer_dir=tok_dir)
    team = MultiAgent(engine(tiny_checkpoint), engine(other), reason_max_tokens=16, brief_max_tokens=4)
    assert not team.shared_vocab
    res = team.run(question(5), mode="transfer", selector="full")
    large_tok = team.engines["large"].processor.tokenizer
    assert res.transferred_token_ids == large_tok.encode(res.transferred_text, add_special_tokens=False)
    assert res.answer is not None and res.stages[-1].name == "large-final"


def test_bad_request_in_batch_fails_alone(team):
    bad_image = [{"role": "user", "content": [{"type": "image", "image": b"not an image"},
                                              {"type": "text", "text": "?"}]}]
    too_long = [{"role": "user", "content": "word " * 5000}]
    results = team.run_batch([question(6), bad_image, too_long, question(7)], mode="auto")
    assert results[0].error is None and results[3].error is None
    assert "image" in results[1].error and "max_model_len" in results[2].error
    for eng in team.engines.values():
        s = eng.stats()
        assert s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == s["waiting"] == 0
    with pytest.raises(InvalidRequestError):
        team.run(bad_image)


def test_trace_export_is_chrome_json(team, tmp_path):
    res = team.run_batch([question(8), question(9)], mode="auto")
    path = tmp_path / "trace.json"
    MultiAgent.export_trace(res, path)
    events = json.loads(path.read_text())["traceEvents"]
    stages = [e for e in events if e["ph"] == "X"]
    assert len(stages) == sum(len(r.stages) for r in res)
    assert all(e["dur"] >= 0 and "prompt_tokens" in e["args"] for e in stages)


def test_vision_placeholders_generated_in_reasoning_are_not_transferred(team):
    proc = team.engines["small"].processor
    ids = [5, proc.image_token_id, 6, proc.vision_start_token_id, proc.video_token_id, 7]
    assert team.builders["small"].clean(ids) == [5, 6, 7]


def test_multi_agent_shares_its_engines_with_other_callers(team):
    """A user's add_request requests and a stream are in flight on the same engines while
    MultiAgent runs; every output reaches its owner, and nothing differs from running alone."""
    from baton import SamplingParams

    small, large = team.engines["small"], team.engines["large"]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    prompt = "<|im_start|>user\nCount the boxes.<|im_end|>\n<|im_start|>assistant\n"
    solo_small = small.generate(prompt, params)[0]
    solo_large = large.generate(prompt, params)[0]
    solo_team = team.run(question(seed=3), mode="auto")

    rid = small.add_request(prompt, params)
    small.step()
    stream = large.stream(prompt, params)
    first = next(stream)
    shared_team = team.run(question(seed=3), mode="auto")  # steps both engines many times
    streamed = [first, *stream]
    mine = []
    for _ in range(50):  # bounded: a lost output must fail, not hang
        mine += [o for o in small.step() if o.request_id == rid]
        if mine and mine[-1].finished:
            break
    assert mine and mine[-1].finished, "the add_request output was lost"

    assert shared_team.answer == solo_team.answer and shared_team.mode == solo_team.mode
    assert [s.name for s in shared_team.stages] == [s.name for s in solo_team.stages]
    assert streamed[-1].token_ids == solo_large.token_ids
    assert "".join(o.delta for o in streamed) == solo_large.text
    assert mine[-1].token_ids == solo_small.token_ids and mine[-1].text == solo_small.text
    for llm in (small, large):
        s = llm.stats()
        assert s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == 0 and s["waiting"] == 0
