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
together) are routed as one group, predicted at the batch they will decode in.

The default cost model is engine/analysis's calibrated FLOPs/bytes model (a device preset's
time model), scaled online per model, phase and decode batch by the ratio of measured to
predicted seconds of the engine steps that ran, so it converges to this machine's actual
speed. Any object
with `prefill(model, new_tokens, prefix_tokens)` and `decode(model, context_len,
num_tokens, batch)` (seconds) can replace it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

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
    model reads the steps it has not seen and moves a correction toward measured / predicted
    seconds: one per model for pure prefill steps, one per model and decode batch class for
    pure decode steps (mixed steps are skipped). Per step, not per finished stage, because a
    stage's time-to-first-token includes its wait in the queue, and a stage's decode time mixes
    the batches it ran in. Per batch class, because on the 2-core CPU the demo models' measured
    decode step grew 7.7-10x from batch 1 to 16 where the analytic model says 3.3-4.2x."""

    def __init__(self, engines: dict, time_model=None, ema: float = 0.1):
        from baton.engine.analysis.calibration import TimeModel
        from baton.engine.analysis.devices import PRESETS
        from baton.engine.analysis.predictor import LatencyPredictor

        self.engines = engines
        self.predictors = {}
        for name, llm in engines.items():
            tm = time_model or TimeModel.from_spec(PRESETS["h100" if llm.device.type == "cuda" else "cpu"])
            nbytes = {"float32": 4}.get(str(llm.dtype).replace("torch.", ""), 2)
            self.predictors[name] = LatencyPredictor(name, llm.model_cfg, nbytes, tm)
        # measured / predicted seconds, an average over steps: (model, "prefill") and
        # (model, "decode", batch class); 1.0 until a step of that kind ran
        self.scale: dict[tuple, float] = {}
        self.ema = ema
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
        """Moves one correction toward measured / predicted for one step (a StepTiming)."""
        p = self.predictors[model]
        if step.prefills and not step.decode_contexts:
            predicted = sum(p.prefill(n, prefix) for n, prefix in step.prefills)
            self._update((model, "prefill"), step.seconds / max(predicted, 1e-12))
        elif step.decode_contexts and not step.prefills:
            batch = len(step.decode_contexts)
            predicted = p.decode_step(round(sum(step.decode_contexts) / batch), batch)
            self._update((model, "decode", batch_class(batch)), step.seconds / max(predicted, 1e-12))

    def observe(self, stage) -> None:
        """Finished stages teach nothing beyond their steps, which sync() reads."""
        self.sync()

    def _update(self, key, ratio: float) -> None:
        old = self.scale.get(key)
        self.scale[key] = ratio if old is None else (1 - self.ema) * old + self.ema * ratio


def _runner(llm):
    return getattr(llm, "runner", None)


class LatencyRouter:
    def __init__(self, cost_model, reason_prior, ema: float = 0.3, shared_device: bool = False):
        """reason_prior: the reasoning length assumed before any is seen (int, or per model).
        shared_device: the engines step in turn on one device (see the module docstring)."""
        self.cost = cost_model
        prior = reason_prior if isinstance(reason_prior, dict) else {"small": reason_prior, "large": reason_prior}
        self.reason_tokens = {m: float(prior[m]) for m in ("small", "large")}
        self.ema = ema
        self.shared_device = shared_device

    def _reason_lengths(self) -> tuple[int, int]:
        """The small and the large model's expected reasoning tokens (online estimates)."""
        return round(self.reason_tokens["small"]), round(self.reason_tokens["large"])

    def predict(self, shape: PathShape, load: dict[str, int], group: int = 1) -> dict[str, float]:
        """Seconds of each path for one request of a group of `group` that takes it together:
        they decode in one batch, and each waits on average for half the group's prefills."""
        c, s = self.cost, shape
        n_small, n_large = self._reason_lengths()
        batch = {m: load.get(m, 0) + group for m in ("small", "large")}
        queue = (group + 1) / 2

        def prefill(model: str, new: int, prefix: int) -> float:
            return queue * c.prefill(model, new, prefix)

        # the other engine's context, for its interleaved steps: its reasoning prompt, a proxy
        other_context = {"small": s.large_reason_prompt, "large": s.small_reason_prompt}

        def decode(model: str, context: int, tokens: int) -> float:
            t = c.decode(model, context, tokens, batch[model])
            other = "large" if model == "small" else "small"
            if self.shared_device and load.get(other, 0) > 0:
                t += c.decode(other, other_context[model], tokens, load[other])
            return t

        moved = n_small if s.transfer_fraction >= 1 else max(1, round(s.transfer_fraction * n_small))
        if s.transfer_cap is not None:
            moved = min(moved, s.transfer_cap)
        left = moved if s.streamed_tokens is None else min(moved, s.streamed_tokens)
        final_prefix = s.transfer_prompt + moved - left
        transfer = (prefill("small", s.small_reason_prompt - s.small_reason_cached, s.small_reason_cached)
                    + decode("small", s.small_reason_prompt, n_small)
                    + prefill("large", left + s.close_tokens, final_prefix)
                    + decode("large", final_prefix + left + s.close_tokens, s.answer_tokens - 1))
        after = s.large_reason_prompt + n_large
        large = (prefill("large", s.large_reason_prompt - s.large_reason_cached, s.large_reason_cached)
                 + decode("large", s.large_reason_prompt, n_large)
                 + prefill("large", s.close_tokens, after)
                 + decode("large", after + s.close_tokens, s.answer_tokens - 1))
        return {"transfer": transfer, "large-reason": large}

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
        predicted = [self.predict(s, load, g) for s in shapes]
        imposed = [self.imposed(s, load, g) if self.shared_device else {p: 0.0 for p in PATHS} for s in shapes]
        choice = min(PATHS, key=lambda p: (sum(pr[p] + im[p] for pr, im in zip(predicted, imposed)), PATHS.index(p)))
        return [RouteDecision(choice, pr, dict(self.reason_tokens), dict(load), imposed=im, group=g)
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

