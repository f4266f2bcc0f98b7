"""Sampler: greedy, temperature/top-k/top-p support, per-request seeds, logprobs, per-token stats."""
import math

import pytest
import torch

from baton.errors import InvalidRequestError
from baton.engine.sampler import Sampler
from baton.engine.sampling_params import SamplingParams
from tests.helpers import make_seq


def seqs(n, **params):
    return [make_seq(f"s{i}", [1, 2], 4, **params) for i in range(n)]


def test_greedy_is_argmax():
    logits = torch.randn(5, 50)
    tokens = Sampler()(logits, seqs(5, temperature=0)).token_ids
    assert tokens == logits.argmax(-1).tolist()


def test_top_k_only_draws_from_the_k_best():
    logits = torch.randn(1, 40)
    best3 = set(logits[0].topk(3).indices.tolist())
    drawn = {Sampler()(logits, seqs(1, temperature=1.0, top_k=3, seed=s)).token_ids[0] for s in range(200)}
    assert drawn <= best3 and len(drawn) == 3


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    drawn = {Sampler()(probs.log(), seqs(1, temperature=1.0, top_p=0.7, seed=s)).token_ids[0] for s in range(300)}
    assert drawn == {0, 1}  # 0.5 < 0.7 so token 1 is needed; 0.8 >= 0.7 stops there


def test_sampling_frequencies_follow_softmax_with_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    temp = 0.7
    want = torch.softmax(logits[0] / temp, -1)
    n = 3000
    counts = torch.zeros(3)
    batch = seqs(n, temperature=temp, seed=None)
    tokens = Sampler()(logits.expand(n, -1).clone(), batch).token_ids
    counts += torch.bincount(torch.tensor(tokens), minlength=3)
    assert torch.allclose(counts / n, want, atol=0.03)


def test_same_seed_same_tokens_different_seed_differs():
    logits = torch.randn(1, 1000)
    a = [Sampler()(logits, seqs(1, temperature=1.0, seed=7)).token_ids[0] for _ in range(3)]
    b = [Sampler()(logits, seqs(1, temperature=1.0, seed=s)).token_ids[0] for s in range(20)]
    assert len(set(a)) == 1 and len(set(b)) > 1


def test_logprobs_are_raw_log_softmax_with_sampled_token():
    logits = torch.randn(2, 30)
    batch = seqs(2, temperature=0.5, top_k=2, logprobs=3, seed=1)
    out = Sampler()(logits, batch)
    tokens, lps = out.token_ids, out.logprobs
    ref = torch.log_softmax(logits, -1)
    for row, (tok, lp) in enumerate(zip(tokens, lps)):
        top3 = ref[row].topk(3).indices.tolist()
        assert set(top3) <= set(lp) and tok in lp
        for t, v in lp.items():
            assert math.isclose(v, ref[row, t].item(), abs_tol=1e-5)


@pytest.mark.parametrize("field,value", [
    ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5), ("top_k", 0), ("max_tokens", 0),
    ("stop", [""]), ("stop_token_ids", [-1]), ("logprobs", -2), ("seed", "x"), ("token_stats", 1),
    ("token_stats", None),
])
def test_invalid_sampling_values_name_the_field(field, value):
    with pytest.raises(InvalidRequestError, match=field):
        SamplingParams(**{field: value})
    assert issubclass(InvalidRequestError, ValueError)


def plain_stats(logits: torch.Tensor, token: int) -> tuple[float, float, float, float]:
    """entropy, max_prob, top-1 minus top-2 probability, logprob of `token`, in float64."""
    logp = torch.log_softmax(logits.double(), -1)
    p = logp.exp()
    top2 = p.topk(2).values
    return (-(p * logp).sum().item(), top2[0].item(), (top2[0] - top2[1]).item(), logp[token].item())


def test_token_stats_only_for_rows_that_ask_and_from_raw_logits():
    logits = torch.randn(3, 64) * 3
    batch = [make_seq("a", [1], 4, temperature=0, token_stats=True),
             make_seq("b", [1], 4, temperature=0),
             make_seq("c", [1], 4, temperature=0.3, top_k=2, seed=0, token_stats=True)]
    out = Sampler()(logits, batch)
    assert out.token_stats[1] is None
    for row in (0, 2):
        got, want = out.token_stats[row], plain_stats(logits[row], out.token_ids[row])
        assert all(math.isclose(g, w, rel_tol=1e-4, abs_tol=1e-5) for g, w in zip(got, want)), (got, want)


def test_token_stats_reach_the_request_output(tiny_llm_factory):
    """Per generated token, the stats of the logits the engine sampled it from."""
    from baton.kernels import token_stats
    from tests.parity_utils import LogitsRecorder

    llm = tiny_llm_factory()
    rec = LogitsRecorder(llm.model)
    prompt = {"prompt_token_ids": list(range(10, 40))}
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, token_stats=True))
    plain = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    stats, rows = out[0].token_stats, torch.cat(rec.calls[:5])
    assert plain[0].token_stats is None and plain[0].token_ids == out[0].token_ids
    want = token_stats(rows, torch.tensor(out[0].token_ids))
    for name in ("entropy", "max_prob", "margin", "logprob"):
        assert len(stats[name]) == 5
        torch.testing.assert_close(torch.tensor(stats[name]), getattr(want, name))
    ref = [plain_stats(r, t) for r, t in zip(rows, out[0].token_ids)]
    torch.testing.assert_close(torch.tensor(stats["entropy"]), torch.tensor([r[0] for r in ref]).float(),
                               rtol=1e-4, atol=1e-5)
