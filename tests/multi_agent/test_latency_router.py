"""router="latency" on a fake cost model: it takes the cheaper path, counts engine load, learns
reasoning lengths, and records its decision with predicted and actual seconds."""
from collections import deque
from types import SimpleNamespace

import pytest

from baton import InvalidRequestError, LLM, MultiAgent, SamplingParams
from baton.engine.latency_router import AnalyticCostModel, LatencyRouter
from baton.engine.model_runner import StepTiming
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
    # the reasoning prefill step also decodes the busy sequences
    transfer = (REASON * (load_small + 1) + load_small) * cost.per_token["small"] + (BRIEF - 1) * cost.per_token["large"]
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
    """The engines step in turn: each step on the large engine (large-reason's two prefills and
    10 + 3 decodes, transfer's prefill and 3 answer decodes) also runs one step of the 3
    sequences on the small engine (0.1 * 3 each), and the small engine's reasoning prefill step
    decodes them too; the idle large engine adds nothing to the small one's steps. Transfer
    stays cheaper (5.95 s against 6.45 s), where separate devices chose large-reason."""
    cost = DecodeOnlyCost(small=0.1, large=0.15)
    res = run_with_small_busy(engines, cost, shared_device=True)
    transfer = 0.1 * 3 + 10 * 0.1 * 4 + 0.1 * 3 + 3 * 0.15 + 3 * 0.1 * 3
    large = 0.1 * 3 + 10 * 0.15 + 10 * 0.1 * 3 + 0.1 * 3 + 3 * 0.15 + 3 * 0.1 * 3
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


class FakeRunner:
    def __init__(self):
        self.recent_steps, self.steps_executed = deque(maxlen=4), 0

    def run(self, step):
        self.recent_steps.append(step)
        self.steps_executed += 1


def test_analytic_cost_model_is_calibrated_by_engine_steps(engines):
    """Corrections = measured / predicted seconds of the steps the engines ran: prefill from pure
    prefill steps, decode per batch class (interpolated in log2 batch) from pure decode steps,
    mixed steps against their corrected parts; steps before the model existed teach nothing."""
    model = AnalyticCostModel({"small": engines[0], "large": engines[1]}, window=1)
    raw = dict(model.predictors)
    runner = FakeRunner()
    runner.run(StepTiming(99.0, (10,), ()))  # before the model looked: not read
    model.engines = {"small": SimpleNamespace(runner=runner), "large": SimpleNamespace(runner=None)}
    model._seen = {"small": 1, "large": 0}
    assert model.decode("small", 100, 10) == pytest.approx(raw["small"].decode_step(105, 1) * 10)

    runner.run(StepTiming(2 * raw["small"].decode_step(100, 1), (100,), ()))
    runner.run(StepTiming(10 * raw["small"].decode_step(100, 16), (90, 110) * 8, ()))
    runner.run(StepTiming(3 * (raw["small"].prefill(40, 0) + raw["small"].prefill(8, 30)), (), ((40, 0), (8, 30))))
    runner.run(StepTiming(1e3, (100,), ((40, 0),)))  # mixed: on top of the parts' corrections
    assert model.decode("small", 100, 10, batch=1) == pytest.approx(2 * raw["small"].decode_step(105, 1) * 10)
    assert model.decode("small", 100, 10, batch=16) == pytest.approx(10 * raw["small"].decode_step(105, 16) * 10)
    # batch 4 sits halfway between batch 1 and 16 in log2: halfway between the corrections
    assert model.decode("small", 100, 10, batch=4) == pytest.approx(6 * raw["small"].decode_step(105, 4) * 10)
    assert model.prefill("small", 64, 0) == pytest.approx(3 * raw["small"].prefill(64, 0))
    assert model.prefill("large", 64, 0) == pytest.approx(raw["large"].prefill(64, 0))  # nothing ran there
    mixed = 2 * raw["small"].decode_step(100, 1) + 3 * raw["small"].prefill(40, 0)
    assert model.mixed_scale("small") == pytest.approx(1e3 / mixed)
    assert model.mixed_scale("large") == 1.0

    for _ in range(6):  # more new steps than the log keeps: the kept ones are read
        runner.run(StepTiming(4 * raw["small"].decode_step(50, 1), (50,), ()))
    assert model.decode("small", 50, 2) == pytest.approx(4 * raw["small"].decode_step(51, 1) * 2)


def test_one_slow_step_does_not_skew_the_correction(engines):
    """A shape's first step also times its kernel routing (tens of times slower): the correction
    is a median over the latest steps, so one outlier among normal steps leaves it alone, and
    an outlier seen first is outvoted by the next two steps."""
    model = AnalyticCostModel({"small": engines[0], "large": engines[1]}, window=5)
    raw = model.predictors["small"].decode_step(100, 1)
    runner = FakeRunner()
    runner.recent_steps = deque(maxlen=16)
    model.engines = {"small": SimpleNamespace(runner=runner), "large": SimpleNamespace(runner=None)}
    model._seen = {"small": 0, "large": 0}
    for seconds in (40 * raw, 2 * raw, 2.2 * raw):
        runner.run(StepTiming(seconds, (100,), ()))
    assert model.decode_scale("small", 1) == 1.0  # not read yet
    model.sync()
    assert model.decode_scale("small", 1) == pytest.approx(2.2)
    for seconds in (2 * raw, 40 * raw, 2 * raw):
        runner.run(StepTiming(seconds, (100,), ()))
    model.sync()  # last five: 2, 2.2, 2, 40, 2
    assert model.decode_scale("small", 1) == pytest.approx(2.0)
    for _ in range(3):  # steps that also chose kernel paths teach nothing
        runner.run(StepTiming(50 * raw, (100,), (), first_use=True))
    model.sync()
    assert model.decode_scale("small", 1) == pytest.approx(2.0)


def test_runner_logs_each_step_for_the_cost_model(engines):
    small = engines[0]
    ids = small.processor.tokenizer.encode("hello there, a prompt of some length")
    before = small.runner.steps_executed
    small.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=4, ignore_eos=True))
    steps = list(small.runner.recent_steps)[before - small.runner.steps_executed:]
    assert [(s.prefills, s.decode_contexts) for s in steps] == [
        (((len(ids), 0),), ()), ((), (len(ids) + 1,)), ((), (len(ids) + 2,)), ((), (len(ids) + 3,))]
    assert all(s.seconds > 0 for s in steps)


def test_steps_that_choose_kernel_paths_are_flagged(engines, monkeypatch):
    """The first product of a new shape class times both CPU paths inside the step."""
    from baton.kernels import cpu_routing

    small = engines[0]
    monkeypatch.setenv("BATON_CPU_KERNELS", "auto")
    ids = small.processor.tokenizer.encode("a prompt for routing")
    params = SamplingParams(max_tokens=2, ignore_eos=True)
    small.generate([{"prompt_token_ids": ids}], params)
    assert not small.runner.recent_steps[-1].first_use  # all shapes routed by now
    cpu_routing.reset()
    small.generate([{"prompt_token_ids": ids}], params)
    assert [s.first_use for s in list(small.runner.recent_steps)[-2:]] == [True, False]


class BatchSensitiveCost(DecodeOnlyCost):
    """The small model's decode step grows with the batch squared, the large one's linearly."""

    def decode(self, model, context_len, num_tokens, batch=1):
        return max(num_tokens, 0) * self.per_token[model] * (batch ** 2 if model == "small" else batch)


def test_requests_reaching_the_decision_in_one_step_are_routed_together(engines):
    """Alone, transfer is cheaper; three at once decode at batch 3, where the small model's
    steps cost 9x and large-reason is cheaper. Decided one by one, the first would have seen
    idle engines and taken transfer."""
    cost = BatchSensitiveCost(small=0.1, large=0.15)
    t = team(engines, cost)
    t.router.shared_device = False
    assert t.run(question(53)).route.choice == "transfer"
    results = t.run_batch([question(54), question(55), question(56)])
    assert [r.route.group for r in results] == [3, 3, 3]
    assert [r.route.choice for r in results] == ["large-reason"] * 3
    transfer = REASON * 0.1 * 9 + (BRIEF - 1) * 0.15 * 3
    large = REASON * 0.15 * 3 + (BRIEF - 1) * 0.15 * 3
    for r in results:
        assert r.route.load == {"small": 0, "large": 0}
        assert r.route.predicted == pytest.approx({"transfer": transfer, "large-reason": large})


class LinearCost:
    """A prefill token costs `prefill_token`; a decode step `per_sequence` per sequence."""

    def __init__(self, prefill_token, per_sequence):
        self.prefill_token, self.per_sequence = prefill_token, per_sequence

    def prefill(self, model, new_tokens, prefix_tokens):
        return max(new_tokens, 0) * self.prefill_token

    def decode(self, model, context_len, num_tokens, batch=1):
        return max(num_tokens, 0) * self.per_sequence * batch


def test_a_groups_stage_is_predicted_as_the_engine_schedules_it(agent_pair):
    """Three 11-token prompts reach an engine that decodes 2 other sequences, under a 16-token
    step budget: their prefills are chunked over 3 steps that also decode the ones done
    prefilling. The router's stage time for the group equals the mean finish time of the three
    on the engine's own step log, each step costed by the same linear cost."""
    budget, tokens, prompt = 16, 3, 11
    llm = engine(agent_pair[0], max_num_batched_tokens=budget, enable_prefix_caching=False)
    never = SamplingParams(max_tokens=100, ignore_eos=True)
    busy = [llm.add_request({"prompt_token_ids": [7 + i] * 4}, never) for i in range(2)]
    llm.step()
    first = llm.runner.steps_executed
    group = [llm.add_request({"prompt_token_ids": [20 + i] * prompt}, SamplingParams(max_tokens=tokens + 1, ignore_eos=True))
             for i in range(3)]
    finished_at = {}
    while len(finished_at) < len(group):
        for out in llm.step():
            if out.finished:
                finished_at[out.request_id] = llm.runner.steps_executed - first
    steps = list(llm.runner.recent_steps)[first - llm.runner.steps_executed:]
    for rid in busy:
        llm.abort(rid)
    assert max(len(s.prefills) for s in steps) == 2 and sum(bool(s.prefills) for s in steps) == 3  # chunked

    cost = LinearCost(prefill_token=0.01, per_sequence=0.1)
    elapsed, clock = 0.0, []
    for s in steps:
        elapsed += sum(n for n, _ in s.prefills) * cost.prefill_token + len(s.decode_contexts) * cost.per_sequence
        clock.append(elapsed)
    engine_mean = sum(clock[finished_at[rid] - 1] for rid in group) / len(group)
    router = LatencyRouter(cost, reason_prior=1, step_tokens={"small": budget})
    predicted = router._stage("small", prompt, 0, tokens, {"small": len(busy)}, len(group), 0)
    assert predicted == pytest.approx(engine_mean)
    # without a budget all three prefill in one step and then decode at batch 5
    unbounded = LatencyRouter(cost, reason_prior=1)._stage("small", prompt, 0, tokens, {"small": 2}, 3, 0)
    assert unbounded == pytest.approx(3 * prompt * 0.01 + 2 * 0.1 + tokens * 5 * 0.1)


def test_bad_router_options(engines):
    with pytest.raises(InvalidRequestError, match="router"):
        MultiAgent(*engines, router="fastest")
    with pytest.raises(InvalidRequestError, match="cost_model"):
        MultiAgent(*engines, router="latency", cost_model=object())
    assert isinstance(engines[0], LLM)
