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

The default cost model is engine/analysis's calibrated FLOPs/bytes model (a device preset's
time model), scaled online per model and phase by the ratio of measured to predicted
seconds of the stages that ran, so it converges to this machine's actual speed. Any object
with `prefill(model, new_tokens, prefix_tokens)` and `decode(model, context_len,
num_tokens, batch)` (seconds) can replace it.
"""
from __future__ import annotations

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


class AnalyticCostModel:
    """engine/analysis's cost model per engine, corrected online by measured stage times."""

    def __init__(self, engines: dict, time_model=None, ema: float = 0.3):
        from baton.engine.analysis.calibration import TimeModel
        from baton.engine.analysis.devices import PRESETS
        from baton.engine.analysis.predictor import LatencyPredictor

        self.predictors = {}
        for name, llm in engines.items():
            tm = time_model or TimeModel.from_spec(PRESETS["h100" if llm.device.type == "cuda" else "cpu"])
            nbytes = {"float32": 4}.get(str(llm.dtype).replace("torch.", ""), 2)
            self.predictors[name] = LatencyPredictor(name, llm.model_cfg, nbytes, tm)
        self.scale = {(m, p): 1.0 for m in engines for p in ("prefill", "decode")}
        self.ema = ema

    def prefill(self, model: str, new_tokens: int, prefix_tokens: int) -> float:
        if new_tokens <= 0:
            return 0.0
        return self.predictors[model].prefill(new_tokens, prefix_tokens) * self.scale[(model, "prefill")]

    def decode(self, model: str, context_len: int, num_tokens: int, batch: int = 1) -> float:
        if num_tokens <= 0:
            return 0.0
        step = self.predictors[model].decode_step(context_len + num_tokens // 2, max(1, batch))
        return step * num_tokens * self.scale[(model, "decode")]

    def observe(self, stage) -> None:
        """Moves the scales toward measured / predicted for one finished stage record."""
        new = stage.prompt_tokens - stage.cached_tokens
        if stage.ttft and new > 0 and stage.vision_encoder_calls == 0:
            self._update((stage.model, "prefill"), stage.ttft / max(self.prefill(stage.model, new, stage.cached_tokens), 1e-9))
        steps = stage.output_tokens - 1
        if steps > 0 and stage.decode_seconds > 0:
            self._update((stage.model, "decode"),
                         stage.decode_seconds / max(self.decode(stage.model, stage.prompt_tokens, steps), 1e-9))

    def _update(self, key, ratio: float) -> None:
        self.scale[key] *= (1 - self.ema) + self.ema * ratio


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

    def predict(self, shape: PathShape, load: dict[str, int]) -> dict[str, float]:
        c, s = self.cost, shape
        n_small, n_large = self._reason_lengths()
        batch = {m: load.get(m, 0) + 1 for m in ("small", "large")}
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
        transfer = (c.prefill("small", s.small_reason_prompt - s.small_reason_cached, s.small_reason_cached)
                    + decode("small", s.small_reason_prompt, n_small)
                    + c.prefill("large", left + s.close_tokens, final_prefix)
                    + decode("large", final_prefix + left + s.close_tokens, s.answer_tokens - 1))
        after = s.large_reason_prompt + n_large
        large = (c.prefill("large", s.large_reason_prompt - s.large_reason_cached, s.large_reason_cached)
                 + decode("large", s.large_reason_prompt, n_large)
                 + c.prefill("large", s.close_tokens, after)
                 + decode("large", after + s.close_tokens, s.answer_tokens - 1))
        return {"transfer": transfer, "large-reason": large}

    def imposed(self, shape: PathShape, load: dict[str, int]) -> dict[str, float]:
        """Per path, on a shared device: every other running sequence waits for what this
        request's decode steps add to each step (its batch share where that engine steps anyway,
        the whole step where it would have been idle)."""
        c, s = self.cost, shape
        n_small, n_large = self._reason_lengths()
        others = load.get("small", 0) + load.get("large", 0)

        def added(model: str, context: int, tokens: int) -> float:
            busy = load.get(model, 0)
            with_us = c.decode(model, context, tokens, busy + 1)
            return with_us - (c.decode(model, context, tokens, busy) if busy else 0.0)

        transfer = (added("small", s.small_reason_prompt, n_small)
                    + added("large", s.transfer_prompt, s.answer_tokens - 1))
        large = added("large", s.large_reason_prompt, n_large + s.answer_tokens - 1)
        return {"transfer": others * transfer, "large-reason": others * large}

    def choose(self, shape: PathShape, load: dict[str, int]) -> RouteDecision:
        predicted = self.predict(shape, load)
        imposed = self.imposed(shape, load) if self.shared_device else {p: 0.0 for p in PATHS}
        choice = min(PATHS, key=lambda p: (predicted[p] + imposed[p], PATHS.index(p)))
        return RouteDecision(choice, predicted, dict(self.reason_tokens), dict(load), imposed=imposed)

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

