"""MultiAgent(agreement=...): the hook alone decides verification, and results say so."""
import pytest

from baton import InvalidRequestError, MultiAgent

from .conftest import engine, question


@pytest.fixture(scope="module")
def engines(agent_pair):
    return engine(agent_pair[0]), engine(agent_pair[1])


def test_hook_true_ends_a_disagreement_at_the_briefs(engines):
    calls = []

    def agree(small_text, large_text):
        calls.append((small_text, large_text))
        return True

    plain = MultiAgent(*engines, reason_max_tokens=8, brief_max_tokens=6).run(question(2), mode="auto")
    assert plain.mode == "auto:transfer" and not plain.agreement_hook  # the answers really disagree
    res = MultiAgent(*engines, reason_max_tokens=8, brief_max_tokens=6, agreement=agree).run(question(2))
    assert res.mode == "auto:agree" and res.agreement_hook
    texts = {s.name: s.text for s in res.stages}
    assert set(texts) == {"small-brief", "large-brief"}
    assert calls == [(texts["small-brief"], texts["large-brief"])]
    assert res.answer == texts["large-brief"].strip()


def test_hook_false_forces_transfer_where_answers_agree(tiny_checkpoint):
    same = (engine(tiny_checkpoint), engine(tiny_checkpoint))
    assert MultiAgent(*same, brief_max_tokens=6).run(question(1)).mode == "auto:agree"
    res = MultiAgent(*same, brief_max_tokens=6, reason_max_tokens=8, agreement=lambda a, b: False).run(question(1))
    assert res.mode == "auto:transfer" and res.agreement_hook
    assert [s.name for s in res.stages][-1] == "large-final"


def test_a_counting_hook_sets_an_exact_agreement_rate(engines):
    verdicts = iter([True, False, True, True])
    team = MultiAgent(*engines, reason_max_tokens=6, brief_max_tokens=4, agreement=lambda a, b: next(verdicts))
    res = team.run_batch([question(s) for s in (2, 3, 4, 5)])
    assert sorted(r.mode for r in res) == ["auto:agree"] * 3 + ["auto:transfer"]
    assert all(r.agreement_hook for r in res)


def test_bad_hooks_fail_their_request_alone(engines):
    def broken(a, b):
        raise ValueError("boom")

    for hook, words in ((broken, "boom"), (lambda a, b: "yes", "True or False")):
        team = MultiAgent(*engines, reason_max_tokens=6, brief_max_tokens=4, agreement=hook)
        res = team.run_batch([question(2)])
        assert res[0].mode == "error" and words in res[0].error
        for eng in engines:
            s = eng.stats()
            assert s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == s["waiting"] == 0
    with pytest.raises(InvalidRequestError, match="agreement"):
        MultiAgent(*engines, agreement="always")
