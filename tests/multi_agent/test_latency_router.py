"""router="latency" on a fake cost model: it takes the cheaper path, counts engine load, learns
reasoning lengths, and records its decision with predicted and actual seconds."""
import pytest

from baton import InvalidRequestError, LLM, MultiAgent, SamplingParams
from baton.engine.latency_router import AnalyticCostModel, LatencyRouter
from baton.engine.trace import StageRecord

from .conftest import engine, question

REASON, BRIEF = 10, 4


class DecodeOnlyCost:
    """Prefill is free; a decode token costs per_token[model] * batch."""

    def __init__(self, small, large):
        self.per_token = {"small": small, "large": large}

    def prefill(self, model, new_tokens, prefix_tokens):
        return 0.0

    def decode(self, model, context_len, num_tokens, batch=1):
        return max(num_tokens, 0) * self.per_token[model] * batch


def expected(cost, load_small=0):
    transfer = REASON * cost.per_token["small"] * (load_small + 1) + (BRIEF - 1) * cost.per_token["large"]
    large = REASON * cost.per_token["large"] + (BRIEF - 1) * cost.per_token["large"]
    return {"transfer": transfer, "large-reason": large}


@pytest.fixture(scope="module")
def engines(agent_pair):
    return engine(agent_pair[0]), engine(agent_pair[1])


def team(engines, cost):
    return MultiAgent(*engines, reason_max_tokens=REASON, brief_max_tokens=BRIEF, exact_lengths=True,
                      router="latency", cost_model=cost, agreement=lambda a, b: False)


def test_cheap_small_model_routes_to_transfer(engines):
    cost = DecodeOnlyCost(small=0.01, large=0.1)
    res = team(engines, cost).run(question(50))
    assert res.mode == "auto:transfer" and res.route.choice == "transfer"
    assert res.route.predicted == pytest.approx(expected(cost))
    assert res.route.actual_seconds > 0 and res.route.load == {"small": 0, "large": 0}
    assert [s.name for s in res.stages][-1] == "large-final"


def test_slow_small_model_routes_to_large_reasoning(engines):
    cost = DecodeOnlyCost(small=1.0, large=0.1)
    res = team(engines, cost).run(question(51))
    assert res.mode == "auto:large-reason" and res.route.choice == "large-reason"
    assert res.route.predicted == pytest.approx(expected(cost))
    assert [s.name for s in res.stages][-2:] == ["large-reason", "large-answer"]
    alone = MultiAgent(*engines, reason_max_tokens=REASON, brief_max_tokens=BRIEF, exact_lengths=True)
    assert res.answer == alone.run(question(51), mode="large-reason").answer


def run_with_small_busy(engines, cost, shared_device):
    small, _ = engines
    busy = [small.add_request("<|im_start|>user\nhi<|im_end|>\n", SamplingParams(max_tokens=200, ignore_eos=True))
            for _ in range(3)]
    t = team(engines, cost)
    assert t.router.shared_device  # both engines on the CPU
    t.router.shared_device = shared_device
    try:
        return t.run(question(52))
    finally:
        for rid in busy:
            small.abort(rid)


def test_load_on_the_small_engine_flips_the_choice_on_separate_devices(engines):
    cost = DecodeOnlyCost(small=0.1, large=0.15)  # idle: transfer 1.45 < large-reason 1.95
    assert min(expected(cost), key=expected(cost).get) == "transfer"
    res = run_with_small_busy(engines, cost, shared_device=False)
    assert res.route.load["small"] == 3 and res.route.imposed == {"transfer": 0.0, "large-reason": 0.0}
    assert res.route.predicted == pytest.approx(expected(cost, load_small=3))
    assert res.route.choice == "large-reason" and res.mode == "auto:large-reason"


def test_on_a_shared_device_large_reasoning_also_waits_for_the_busy_small_engine(engines):
    """The engines step in turn: each decode step on the large engine (large-reason's 10 + 3,
    transfer's 3 answer steps) also runs one step of the 3 sequences on the small engine
    (0.1 * 3 each); the idle large engine adds nothing to the small one's steps. Transfer stays
    cheaper (5.35 s against 5.85 s), where separate devices chose large-reason."""
    cost = DecodeOnlyCost(small=0.1, large=0.15)
    res = run_with_small_busy(engines, cost, shared_device=True)
    transfer = 10 * 0.1 * 4 + 3 * 0.15 + 3 * 0.1 * 3
    large = 10 * 0.15 + 10 * 0.1 * 3 + 3 * 0.15 + 3 * 0.1 * 3
    assert res.route.predicted == pytest.approx({"transfer": transfer, "large-reason": large})
    # the 3 busy sequences wait for what this request adds: one small batch share per reasoning
    # step (the small engine steps anyway), whole large steps (the large engine was idle)
    assert res.route.imposed == pytest.approx({"transfer": 3 * (10 * 0.1 + 3 * 0.15),
                                               "large-reason": 3 * (13 * 0.15)})
    assert res.route.choice == "transfer" and res.mode == "auto:transfer"


def test_router_learns_reasoning_lengths_and_cost_scales():
    class Scaled(DecodeOnlyCost):
        seen = []

        def observe(self, stage):
            self.seen.append(stage.name)

    cost = Scaled(0.1, 0.2)
    router = LatencyRouter(cost, reason_prior=100, ema=0.5)
    rec = StageRecord("small-reason", "small", 50, 40, 20, 1.0, 0, 0.0, 1.0)
    router.observe([rec])
    assert router.reason_tokens == {"small": 60.0, "large": 100.0}
    assert cost.seen == ["small-reason"]


def test_analytic_cost_model_is_calibrated_online(engines):
    model = AnalyticCostModel({"small": engines[0], "large": engines[1]}, ema=1.0)
    assert model.decode("large", 100, 10) > model.decode("small", 100, 10) > 0
    before = model.decode("small", 100, 11)
    model.observe(StageRecord("small-reason", "small", 100, 100, 11, 1.0, 0, 0.0, 1.0, decode_seconds=2 * before))
    assert model.decode("small", 100, 10) == pytest.approx(2 * before * 10 / 10, rel=1e-6)


def test_bad_router_options(engines):
    with pytest.raises(InvalidRequestError, match="router"):
        MultiAgent(*engines, router="fastest")
    with pytest.raises(InvalidRequestError, match="cost_model"):
        MultiAgent(*engines, router="latency", cost_model=object())
    assert isinstance(engines[0], LLM)
