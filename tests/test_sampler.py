"""Sampler: greedy, temperature/top-k/top-p support, per-request seeds, logprobs."""
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
    tokens, _ = Sampler()(logits, seqs(5, temperature=0))
    assert tokens == logits.argmax(-1).tolist()


def test_top_k_only_draws_from_the_k_best():
    logits = torch.randn(1, 40)
    best3 = set(logits[0].topk(3).indices.tolist())
    drawn = {Sampler()(logits, seqs(1, temperature=1.0, top_k=3, seed=s))[0][0] for s in range(200)}
    assert drawn <= best3 and len(drawn) == 3


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    drawn = {Sampler()(probs.log(), seqs(1, temperature=1.0, top_p=0.7, seed=s))[0][0] for s in range(300)}
    assert drawn == {0, 1}  # 0.5 < 0.7 so token 1 is needed; 0.8 >= 0.7 stops there


def test_sampling_frequencies_follow_softmax_with_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    temp = 0.7
    want = torch.softmax(logits[0] / temp, -1)
    n = 3000
    counts = torch.zeros(3)
    batch = seqs(n, temperature=temp, seed=None)
    tokens, _ = Sampler()(logits.expand(n, -1).clone(), batch)
    counts += torch.bincount(torch.tensor(tokens), minlength=3)
    assert torch.allclose(counts / n, want, atol=0.03)


def test_same_seed_same_tokens_different_seed_differs():
    logits = torch.randn(1, 1000)
    a = [Sampler()(logits, seqs(1, temperature=1.0, seed=7))[0][0] for _ in range(3)]
    b = [Sampler()(logits, seqs(1, temperature=1.0, seed=s))[0][0] for s in range(20)]
    assert len(set(a)) == 1 and len(set(b)) > 1


def test_logprobs_are_raw_log_softmax_with_sampled_token():
    logits = torch.randn(2, 30)
    batch = seqs(2, temperature=0.5, top_k=2, logprobs=3, seed=1)
    tokens, lps = Sampler()(logits, batch)
    ref = torch.log_softmax(logits, -1)
    for row, (tok, lp) in enumerate(zip(tokens, lps)):
        top3 = ref[row].topk(3).indices.tolist()
        assert set(top3) <= set(lp) and tok in lp
        for t, v in lp.items():
            assert math.isclose(v, ref[row, t].item(), abs_tol=1e-5)


@pytest.mark.parametrize("field,value", [
    ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5), ("top_k", 0), ("max_tokens", 0),
    ("stop", [""]), ("stop_token_ids", [-1]), ("logprobs", -2), ("seed", "x"),
])
def test_invalid_sampling_values_name_the_field(field, value):
    with pytest.raises(InvalidRequestError, match=field):
        SamplingParams(**{field: value})
    assert issubclass(InvalidRequestError, ValueError)
