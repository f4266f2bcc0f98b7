"""Early verification: briefs are settled by their first line, and once settled answers
disagree the briefs are cut short and the reasoning starts at once."""
import pytest

import baton.engine.multi_agent as ma
from baton import MultiAgent
from baton.engine.answers import answer_settled, briefs_cannot_agree

from .conftest import engine, question


@pytest.mark.parametrize("text,finished,settled", [
    ("B", False, False), ("B", True, True), ("\n  B", False, False), ("B.\nbecause", False, True),
    ("", True, True), ("  yes\n", False, True)])
def test_answer_settled(text, finished, settled):
    assert answer_settled(text, finished) is settled


def test_briefs_cannot_agree_only_when_both_settled():
    assert briefs_cannot_agree("A\n", False, "B\n", False)
    assert not briefs_cannot_agree("A\n", False, "B", False)      # B's first line may still grow
    assert not briefs_cannot_agree("(b)\n", False, "B.\nok", False)  # same option: they agree
    assert briefs_cannot_agree("yes", True, "no\n", False)


def test_briefs_are_cut_once_settled_answers_disagree(agent_pair, monkeypatch):
    small, large = engine(agent_pair[0]), engine(agent_pair[1])
    brief = 12
    # random weights never print a newline on cue: settle every answer at its 3rd token instead
    monkeypatch.setattr(ma, "briefs_cannot_agree",
                        lambda s, sd, l, ld: min(len(s), len(l)) > 0 and _tokens[0] >= 3)
    _tokens = [0]

    def count(i, stage, out):
        if stage.name.endswith("brief"):
            _tokens[0] = len(out.token_ids)

    team = MultiAgent(small, large, reason_max_tokens=8, brief_max_tokens=brief, exact_lengths=True)
    res = team.run(question(60), on_output=count)
    assert res.verified_early and res.mode == "auto:transfer"
    briefs = [s for s in res.stages if s.name.endswith("brief")]
    assert len(briefs) == 2 and all(s.output_tokens < brief for s in briefs)
    assert res.early_saved_seconds > 0
    # the path after the cut is the ordinary transfer: same final prompt as without it
    late = MultiAgent(engine(agent_pair[0]), engine(agent_pair[1]), reason_max_tokens=8, brief_max_tokens=brief,
                      exact_lengths=True, early_verification=False).run(question(60))
    assert not late.verified_early and late.mode == "auto:transfer"
    assert res.stages[-1].prompt_token_ids == late.stages[-1].prompt_token_ids and res.answer == late.answer
    for eng in (small, large):
        s = eng.stats()
        assert s["kv_blocks_free"] == s["kv_blocks_total"] and s["running"] == s["waiting"] == 0
