"""Latency-aware routing (`MultiAgent(router="latency")`): on a disagreement, take whichever of
small-reason -> transfer and large-reason is predicted to finish sooner.

Prediction = the cost model's prefill and decode seconds for each path's remaining stages,
with each model's reasoning length estimated online (an exponential moving average of the
reasoning stages seen so far; the prior is the reasoning token limit) and each engine's
current load (sequences running or waiting there) as the decode batch.

When both engines share one device (`shared_device`, the default when they sit on the same
one), the pipeline steps them in turn, so every decode step of a path also waits for one step
of the other engine's running sequences: a path's prediction adds those steps whenever the
other engine has work. Without this, a loaded small engine sent requests to large-reason,
whose decode then slowed every transfer sharing the device. On a shared device the choice
also counts the time the path's own steps add for every other running sequence (`imposed`):
mixing paths makes both engines step, and each sequence waits for both.

Requests that reach the decision in the same engine step (a batch whose briefs finish
together) are routed as one group. Each stage of a path is predicted by stepping through the
engine's schedule for the group: chunked prefills under the step token budget, decodes of
those done prefilling in the same steps, then decode at the group's batch.

The default cost model is engine/analysis's calibrated FLOPs/bytes model (a device preset's
time model), scaled online per model, phase and decode batch by the ratio of measured to
predicted seconds of the engine steps that ran, so it converges to this machine's actual
speed. Any object with `prefill(model, new_tokens, prefix_tokens)` and `decode(model,
context_len, num_tokens, batch)` (seconds), and optionally `mixed_scale(model)` (the factor
of a step with both), can replace it.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import astuple, dataclass, field

PATHS = ("transfer", "large-reason")


@dataclass
class RouteDecision:
    choice: str                      # "transfer" | "large-reason"
    predicted: dict[str, float]      # seconds of each path, from the decision to the answer
    reason_tokens: dict[str, float]  # the reasoning lengths the prediction assumed
    load: dict[str, int]             # other sequences on each engine at the decision
    actual_seconds: float | None = None  # measured, once the chosen path finished
    # shared device: seconds each path's steps add for all the other running sequences; the
    # choice minimises predicted + imposed
    imposed: dict[str, float] = field(default_factory=dict)
    group: int = 1  # requests decided together (they reached the decision in the same step)

    @property
    def predicted_chosen(self) -> float:
        return self.predicted[self.choice]


@dataclass
class PathShape:
    """Token counts of both paths for one request at its decision point."""

    small_reason_prompt: int
    small_reason_cached: int
    large_reason_prompt: int
    large_reason_cached: int
    transfer_prompt: int        # the large model's final prompt before any transferred token
    transfer_fraction: float    # share of the reasoning transferred (1 with no budget)
    transfer_cap: int | None    # token budget, if an int
    streamed_tokens: int | None  # with a streaming selector: what is left to prefill at the end
    close_tokens: int           # the end-of-thought marker added after reasoning
    answer_tokens: int          # brief answer length


def batch_class(batch: float) -> int:
    """Decode batches calibrated together: 1, 2-3, 4-7, 8-15, 16-31, ..."""
    return max(1, int(batch)).bit_length()


class AnalyticCostModel:
    """engine/analysis's cost model per engine, corrected online by the engines' own step times.

    Every executed step is logged by its runner (ModelRunner.recent_steps); before each use the
    model reads the steps it has not seen; a correction is the median of measured / predicted
    seconds over the latest steps of its kind: one per model for pure prefill steps, one per
    model and decode batch class for pure decode steps, and one per model for mixed steps on
    top of their parts' corrections. Steps that also chose CPU kernel paths are skipped.
    Per step, not per finished stage, because a stage's time-to-first-token includes its wait
    in the queue, and a stage's decode time mixes the batches it ran in. Per batch class,
    because on the 2-core CPU the demo models' measured decode step grew 7.7-10x from batch 1
    to 16 where the analytic model says 3.3-4.2x."""

    def __init__(self, engines: dict, time_model=None, window: int = 15):
        from baton.engine.analysis.calibration import TimeModel
        from baton.engine.analysis.devices import PRESETS
        from baton.engine.analysis.predictor import LatencyPredictor

        self.engines = engines
        self.predictors = {}
        for name, llm in engines.items():
            tm = time_model or TimeModel.from_spec(PRESETS["h100" if llm.device.type == "cuda" else "cpu"])
            nbytes = {"float32": 4}.get(str(llm.dtype).replace("torch.", ""), 2)
            self.predictors[name] = LatencyPredictor(name, llm.model_cfg, nbytes, tm)
        # measured / predicted seconds, the median of the last `window` steps of each kind:
        # (model, "prefill"), (model, "decode", batch class), (model, "mixed"); 1.0 until one ran.
        # A median, because one slow step must not set a class that sees few steps (a batch-16
        # run makes one or two batch-1 steps): a step that chose kernel paths for a new shape
        # ran 37-40x its prediction and, as the first sample of an average, stayed in it.
        self.scale: dict[tuple, float] = {}
        self.window = window
        self._ratios: dict[tuple, deque] = {}
        self._seen = {m: getattr(_runner(llm), "steps_executed", 0) for m, llm in engines.items()}

    def prefill(self, model: str, new_tokens: int, prefix_tokens: int) -> float:
        if new_tokens <= 0:
            return 0.0
        self.sync()
        return self.predictors[model].prefill(new_tokens, prefix_tokens) * self.scale.get((model, "prefill"), 1.0)

    def decode_scale(self, model: str, batch: float) -> float:
        """The decode correction at this batch: linear in log2(batch) between the nearest
        measured classes (class c sits at batch 2^(c-1)), the end ones beyond them; 1.0 before
        any. Continuous, so one more sequence never changes the correction by a class's jump."""
        seen = sorted((k[2], v) for k, v in self.scale.items() if k[:2] == (model, "decode"))
        if not seen:
            return 1.0
        x = math.log2(max(batch, 1.0)) + 1
        if x <= seen[0][0]:
            return seen[0][1]
        for (c0, s0), (c1, s1) in zip(seen, seen[1:]):
            if x <= c1:
                return s0 + (s1 - s0) * (x - c0) / (c1 - c0)
        return seen[-1][1]

    def decode(self, model: str, context_len: int, num_tokens: int, batch: float = 1) -> float:
        if num_tokens <= 0:
            return 0.0
        self.sync()
        b = max(1, round(batch))
        return self.predictors[model].decode_step(context_len + num_tokens // 2, b) * num_tokens \
            * self.decode_scale(model, b)

    def sync(self) -> None:
        """Learns from the steps each engine ran since the last call (at most its log's length)."""
        for model, llm in self.engines.items():
            runner = _runner(llm)
            if runner is None:
                continue
            new = runner.steps_executed - self._seen[model]
            if new <= 0:  # the common case: many predictions between two engine steps
                continue
            self._seen[model] = runner.steps_executed
            log = list(runner.recent_steps)
            for step in log[len(log) - min(new, len(log)):]:
                self.observe_step(model, step)

    def observe_step(self, model: str, step) -> None:
        """Adds one step's (a StepTiming's) measured / predicted to its correction's window."""
        p = self.predictors[model]
        if getattr(step, "first_use", False):  # its time includes kernel routing, not only the model
            return
        if step.prefills and not step.decode_contexts:
            predicted = sum(p.prefill(n, prefix) for n, prefix in step.prefills)
            self._update((model, "prefill"), step.seconds / max(predicted, 1e-12))
        elif step.decode_contexts:
            batch = len(step.decode_contexts)
            predicted = p.decode_step(round(sum(step.decode_contexts) / batch), batch)
            if not step.prefills:
                self._update((model, "decode", batch_class(batch)), step.seconds / max(predicted, 1e-12))
                return
            # mixed: what the two corrected parts leave unexplained
            predicted = predicted * self.decode_scale(model, batch) + self.scale.get((model, "prefill"), 1.0) \
                * sum(p.prefill(n, prefix) for n, prefix in step.prefills)
            self._update((model, "mixed"), step.seconds / max(predicted, 1e-12))

    def mixed_scale(self, model: str) -> float:
        """The correction of a step that carries both prefill chunks and decodes, on top of the
        prefill and decode corrections of its parts; 1.0 before any such step ran."""
        self.sync()
        return self.scale.get((model, "mixed"), 1.0)

    def observe(self, stage) -> None:
        """Finished stages teach nothing beyond their steps, which sync() reads."""
        self.sync()

    def _update(self, key, ratio: float) -> None:
        recent = self._ratios.setdefault(key, deque(maxlen=self.window))
        recent.append(ratio)
        self.scale[key] = statistics.median(recent)


def _runner(llm):
    return getattr(llm, "runner", None)


class LatencyRouter:
    def __init__(self, cost_model, reason_prior, ema: float = 0.3, shared_device: bool = False,
                 step_tokens: dict[str, int] | None = None):
        """reason_prior: the reasoning length assumed before any is seen (int, or per model).
        shared_device: the engines step in turn on one device (see the module docstring).
        step_tokens: each engine's token budget per step (max_num_batched_tokens); without one
        a model's prefills all fit one step."""
        self.cost = cost_model
        prior = reason_prior if isinstance(reason_prior, dict) else {"small": reason_prior, "large": reason_prior}
        self.reason_tokens = {m: float(prior[m]) for m in ("small", "large")}
        self.ema = ema
        self.shared_device = shared_device
        self.step_tokens = dict(step_tokens or {})

    def _reason_lengths(self) -> tuple[int, int]:
        """The small and the large model's expected reasoning tokens (online estimates)."""
        return round(self.reason_tokens["small"]), round(self.reason_tokens["large"])

    def predict(self, shape: PathShape, load: dict[str, int], group: int = 1) -> dict[str, float]:
        """Seconds of each path for one request of a group of `group` that takes it together:
        the mean over the group of each stage's schedule (see `_stage`)."""
        s = shape
        n_small, n_large = self._reason_lengths()
        moved = n_small if s.transfer_fraction >= 1 else max(1, round(s.transfer_fraction * n_small))
        if s.transfer_cap is not None:
            moved = min(moved, s.transfer_cap)
        left = moved if s.streamed_tokens is None else min(moved, s.streamed_tokens)
        final_prefix = s.transfer_prompt + moved - left
        # the other engine's context, for its interleaved steps: its reasoning prompt, a proxy
        other = {"small": s.large_reason_prompt, "large": s.small_reason_prompt}

        def stage(model, new, prefix, tokens):
            return self._stage(model, new, prefix, tokens, load, group, other[model])

        transfer = (stage("small", s.small_reason_prompt - s.small_reason_cached, s.small_reason_cached, n_small)
                    + stage("large", left + s.close_tokens, final_prefix, s.answer_tokens - 1))
        after = s.large_reason_prompt + n_large
        large = (stage("large", s.large_reason_prompt - s.large_reason_cached, s.large_reason_cached, n_large)
                 + stage("large", s.close_tokens, after, s.answer_tokens - 1))
        return {"transfer": transfer, "large-reason": large}

    def _stage(self, model: str, new: int, prefix: int, tokens: int, load: dict[str, int], group: int,
               other_context: int) -> float:
        """Mean seconds until each of `group` requests that reach `model`'s engine together has
        prefilled `new` tokens after a cached `prefix` and then decoded `tokens`, beside the
        load[model] sequences decoding there: the engine's schedule stepped through. Each step
        decodes every sequence that has finished its prefill, then fills the rest of the step's
        token budget with prefill chunks in arrival order, so a request that finished its
        prefill early decodes in steps that also carry the others' chunks (the transfer's final
        stage: 16 prefills of 500+ tokens ran over several 4096-token steps beside the first
        ones' answers). On a shared device each step also waits for one step of the other
        engine's running sequences. Once every prefill is done the rest is pure decode, costed
        in closed form per stretch of equal batch."""
        c = self.cost
        budget = self.step_tokens.get(model) or math.inf
        busy = load.get(model, 0)
        other = "large" if model == "small" else "small"

        def other_steps(n: int) -> float:
            if self.shared_device and load.get(other, 0) > 0:
                return c.decode(other, other_context, n, load[other])
            return 0.0

        mixed = getattr(c, "mixed_scale", lambda m: 1.0)(model)
        todo = [max(new, 1)] * group  # prefill tokens left; the engine computes at least one
        done = [0] * group            # decode tokens produced
        finish: list[float | None] = [None] * group
        t = 0.0
        while todo[-1] > 0:
            decoding = [i for i in range(group) if todo[i] == 0 and done[i] < tokens]
            batch = busy + len(decoding)
            room, seconds = max(budget - batch, 1), 0.0  # at least 1: load filling the budget would stall the model
            for i in range(group):
                if todo[i] > 0 and room > 0:
                    n = min(todo[i], room)
                    seconds += c.prefill(model, n, prefix + max(new, 1) - todo[i])
                    todo[i], room = todo[i] - n, room - n
            if batch:  # a mixed step: its own correction
                context = prefix + new + (done[decoding[0]] if decoding else 0)
                seconds = (seconds + c.decode(model, context, 1, batch)) * mixed
            t += seconds + other_steps(1)
            for i in decoding:
                done[i] += 1
            for i in range(group):
                if finish[i] is None and todo[i] == 0 and done[i] == tokens:
                    finish[i] = t
        # pure decode: stretches of equal batch, each ending when the next requests finish
        position = 0
        for r in sorted({tokens - d for d in done if d < tokens}):
            active = sum(1 for d in done if tokens - d >= r)
            t += c.decode(model, prefix + new + tokens - r + position, r - position, busy + active) \
                + other_steps(r - position)
            for i in range(group):
                if tokens - done[i] == r:
                    finish[i] = t
            position = r
        return sum(finish) / group

    def imposed(self, shape: PathShape, load: dict[str, int], group: int = 1) -> dict[str, float]:
        """Per path, on a shared device: every other running sequence waits for what this
        request's decode steps add to each step (its batch share where that engine steps anyway,
        the whole step where it would have been idle); a group's addition is split among it."""
        c, s = self.cost, shape
        n_small, n_large = self._reason_lengths()
        others = load.get("small", 0) + load.get("large", 0)

        def added(model: str, context: int, tokens: int) -> float:
            busy = load.get(model, 0)
            with_us = c.decode(model, context, tokens, busy + group)
            return max(0.0, with_us - (c.decode(model, context, tokens, busy) if busy else 0.0)) / group

        transfer = (added("small", s.small_reason_prompt, n_small)
                    + added("large", s.transfer_prompt, s.answer_tokens - 1))
        large = added("large", s.large_reason_prompt, n_large + s.answer_tokens - 1)
        return {"transfer": others * transfer, "large-reason": others * large}

    def choose(self, shape: PathShape, load: dict[str, int]) -> RouteDecision:
        return self.choose_group([shape], load)[0]

    def choose_group(self, shapes: list[PathShape], load: dict[str, int]) -> list[RouteDecision]:
        """One path for requests that reach the decision together (the same engine step): the
        one with the least predicted + imposed seconds summed over them, each predicted at the
        batch they will decode in. Decided one by one instead, the first would see idle engines
        and choose for batch 1, and the rest would follow it to avoid mixing paths."""
        g = len(shapes)
        seen: dict[tuple, tuple[dict, dict]] = {}  # a batch's requests mostly share one shape
        for s in shapes:
            if astuple(s) not in seen:
                seen[astuple(s)] = (self.predict(s, load, g),
                                    self.imposed(s, load, g) if self.shared_device else {p: 0.0 for p in PATHS})
        predicted, imposed = zip(*(seen[astuple(s)] for s in shapes))
        choice = min(PATHS, key=lambda p: (sum(pr[p] + im[p] for pr, im in zip(predicted, imposed)), PATHS.index(p)))
        return [RouteDecision(choice, dict(pr), dict(self.reason_tokens), dict(load), imposed=dict(im), group=g)
                for pr, im in zip(predicted, imposed)]

    def observe(self, stages) -> None:
        """Learns from a finished request's stage records: reasoning lengths, cost-model scales."""
        for st in stages:
            if st.name in ("small-reason", "large-reason"):
                r = self.reason_tokens[st.model]
                self.reason_tokens[st.model] = (1 - self.ema) * r + self.ema * st.output_tokens
            if hasattr(self.cost, "observe"):
                self.cost.observe(st)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n

