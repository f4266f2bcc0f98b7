"""Measurement sweeps on the engine itself: `LLM.from_random` builds a real architecture with
random weights, and every number comes from `LLM.generate` and the per-request metrics the
engine records (vision-encoder time, prefill time, decode time) or the wall clock around it.

Each point runs `warmup` discarded times, then `repeats` times; the median is kept with all
samples. A model that does not fit in available memory, and a point whose predicted run time
(from a prior time model) exceeds the plan's limit, is skipped with a note saying why.
"""
from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from baton.engine.analysis import cost_model as cm
from baton.engine.analysis.calibration import TimeModel
from baton.engine.analysis.predictor import LatencyPredictor
from baton.engine.analysis.variants import ModelVariant
from baton.engine.analysis.workload import Workload

KINDS = ("vision", "prefill", "decode", "e2e")


@dataclass
class Measurement:
    """One measured point. `seconds` is the median over repeats: for "decode" the time of one
    decode step (mean over the run's steps); for the others the time of the whole component."""

    kind: str
    model: str
    device: str
    dtype: str
    visual_tokens: int = 0
    input_tokens: int = 0   # prompt tokens (vision / prefill / e2e); context at the first decode step
    batch: int = 1
    output_tokens: int = 0
    seconds: float = 0.0
    samples: list[float] = field(default_factory=list)
    load_avg: float = float("nan")  # the machine's 1-minute load average around the timed runs (median)


@dataclass
class SweepPlan:
    visual_tokens: list[int]             # image sizes for vision-encoder points (square numbers)
    prefill_lengths: list[int]           # text-only prompt lengths
    decode_contexts: list[int]           # prompt lengths before decoding
    decode_batches: list[int]
    decode_steps: int = 8                # decode steps timed per run
    e2e: list[tuple[int, int, int]] = field(default_factory=list)  # (visual tokens, text tokens, output tokens)
    image_text_tokens: int = 16          # text tokens around the image in vision points
    warmup: int = 1                      # warm-up rounds (every point once, discarded)
    repeats: int = 3                     # timed rounds; the median is kept
    max_point_seconds: float = 60.0      # skip a point if one run is predicted to take longer
    memory_fraction: float = 0.8         # of MemAvailable that a model may use


def available_memory() -> int:
    """Bytes the kernel reports as available (MemAvailable), 4 GiB if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def _kv_tokens(plan: SweepPlan) -> int:
    """KV slots the sweep needs at once (decode shares its prompt through the prefix cache)."""
    longest_prompt = max([*plan.prefill_lengths, *plan.decode_contexts,
                          *(v + plan.image_text_tokens + 2 for v in plan.visual_tokens),
                          *(v + t + 2 + n for v, t, n in plan.e2e)], default=16)
    # every decode prompt stays cached between rounds, next to the largest other prompt and
    # the decode batch's own blocks
    decode = sum(plan.decode_contexts) + max(plan.decode_batches, default=1) * (plan.decode_steps + 48)
    return longest_prompt + decode + 256


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


class ModelSweep:
    """Measures one model variant; `run()` returns (measurements, notes)."""

    def __init__(self, variant: ModelVariant, plan: SweepPlan, *, processor_dir, dtype: str = "float32",
                 device: str = "cpu", prior: TimeModel, seed: int = 0, progress: bool = True):
        self.variant, self.plan, self.dtype, self.device = variant, plan, dtype, device
        self.processor_dir = processor_dir
        self.predictor = LatencyPredictor(variant.name, variant.model_config, cm.DTYPE_BYTES[dtype], prior)
        self.seed = seed
        self.progress = progress
        self.notes: list[str] = []
        self.results: list[Measurement] = []

    # -- planning ---------------------------------------------------------------------------
    def memory_needed(self) -> int:
        cfg, e = self.variant.model_config, cm.DTYPE_BYTES[self.dtype]
        activations = 1 << 30  # prefill / vision activations and the allocator's slack
        return cm.weight_bytes(cfg, e) + _kv_tokens(self.plan) * cm.kv_bytes_per_token(cfg.text, e) + activations

    def points(self) -> list[tuple]:
        """(kind, args, predicted seconds of one run) for every point, before skipping."""
        p, plan = self.predictor, self.plan
        out = []
        for v in plan.visual_tokens:
            n = p.prompt_len(v, plan.image_text_tokens)
            out.append(("vision", (v,), p.vision(v) + p.prefill(n)))
        for n in plan.prefill_lengths:
            out.append(("prefill", (n,), p.prefill(n)))
        for c in plan.decode_contexts:
            for b in plan.decode_batches:
                # the priming request re-prefills the prompt at worst (evicted since the last round)
                run = p.prefill(c) + p.prefill(16) * b + p.decode(c, plan.decode_steps + 1, b)
                out.append(("decode", (c, b), run))
        for v, t, n in plan.e2e:
            out.append(("e2e", (v, t, n), p.request(v, t, n).total))
        return out

    # -- running ----------------------------------------------------------------------------
    def run(self) -> tuple[list[Measurement], list[str]]:
        """Rounds: `warmup` discarded rounds, then `repeats` timed ones, each running every point once.
        Interleaving spreads slow drifts of the machine (other jobs, clocks) over all points
        instead of biasing whichever point ran during them."""
        name = self.variant.name
        need, avail = self.memory_needed(), available_memory()
        if need > self.plan.memory_fraction * avail:
            self.notes.append(f"{name}: skipped, needs ~{need / 1e9:.1f} GB ({self.dtype} weights + KV + "
                              f"activations) but {avail / 1e9:.1f} GB is available; predicted only")
            return [], self.notes
        todo = []
        for kind, args, predicted in self.points():
            if predicted > self.plan.max_point_seconds:
                self.notes.append(f"{name}: {kind} {args} skipped, one run predicted at {predicted:.0f} s "
                                  f"> limit {self.plan.max_point_seconds:.0f} s")
            else:
                todo.append((kind, args))
        if not todo:
            return [], self.notes
        llm = self._build()
        self.work = Workload(llm.processor, seed=self.seed)
        # one short request first: first-call costs (allocator, lazy inits) never land in a point
        llm.generate(self.work.image_prompt(16, 8), self._params(2))
        points = [getattr(self, f"_{kind}")(llm, *args) for kind, args in todo]
        rounds = self.plan.warmup + self.plan.repeats
        samples: list[list[dict]] = [[] for _ in points]
        bar = tqdm(total=len(points) * rounds, desc=f"measure {name}", unit="run", disable=not self.progress)
        try:
            for r in range(rounds):
                for i, ((kind, args), point) in enumerate(zip(todo, points)):
                    bar.set_postfix_str(f"round {r + 1}/{rounds} {kind} {args}")
                    values = point()
                    values["load_avg"] = os.getloadavg()[0]
                    if r >= self.plan.warmup:
                        samples[i].append(values)
                    bar.update(1)
        finally:
            bar.close()
            del llm, points
            gc.collect()
        for (kind, args), runs in zip(todo, samples):
            for kind_out, fields in runs[0]["records"]:
                values = [run[kind_out] for run in runs]
                self.results.append(Measurement(kind_out, name, self.device, self.dtype, seconds=_median(values),
                                                samples=values, load_avg=_median([r["load_avg"] for r in runs]),
                                                **fields))
        return self.results, self.notes

    def _build(self):
        from baton.engine.llm import LLM

        plan = self.plan
        cfg = self.variant.model_config
        e = cm.DTYPE_BYTES[self.dtype]
        longest = max([*plan.prefill_lengths, *plan.decode_contexts,
                       *(v + plan.image_text_tokens + 2 for v in plan.visual_tokens),
                       *(v + t + 2 for v, t, _ in plan.e2e)], default=16)
        return LLM.from_random(
            self.variant.config, processor_dir=self.processor_dir, seed=self.seed, dtype=self.dtype,
            device=self.device, attention_backend="torch" if self.device == "cpu" else "auto",
            kv_cache_bytes=_kv_tokens(plan) * cm.kv_bytes_per_token(cfg.text, e),
            max_num_seqs=max(plan.decode_batches, default=1),
            max_num_batched_tokens=max(longest + 64, max(plan.decode_batches, default=1) * 64),
            enable_prefix_caching=True,
        )

    def _params(self, max_tokens: int):
        from baton.engine.sampling_params import SamplingParams

        return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)

    # Each _<kind> prepares a point and returns a callable that runs it once and returns
    # {"records": [(kind, fields)], kind: seconds, ...}.
    def _vision(self, llm, visual_tokens: int):
        """A fresh image per run: its encoder time, and the prefill of the whole image prompt."""
        def once():
            out = llm.generate(self.work.image_prompt(visual_tokens, self.plan.image_text_tokens), self._params(1))[0]
            fields = {"visual_tokens": visual_tokens, "input_tokens": len(out.prompt_token_ids)}
            return {"records": [("vision", fields), ("prefill", fields)],
                    "vision": out.metrics.vision_encoder_time, "prefill": out.metrics.prefill_time}
        return once

    def _prefill(self, llm, length: int):
        def once():
            out = llm.generate(self.work.text_prompt(length), self._params(1))[0]
            return {"records": [("prefill", {"input_tokens": length})], "prefill": out.metrics.prefill_time}
        return once

    def _decode(self, llm, context: int, batch: int):
        """`batch` copies of one prompt of `context` tokens. An untimed priming request right
        before each run puts the prompt's KV in the prefix cache (the other points may have
        evicted it since the last round), so the run computes only the prompt's last partial
        block, then `decode_steps` decode steps of the whole batch (timed by the engine, per
        sequence). Without it, the copies would prefill in turn and one copy's prefill would
        land inside the others' decode steps."""
        prompt = self.work.text_prompt(context)
        steps = self.plan.decode_steps
        fields = {"input_tokens": context, "batch": batch, "output_tokens": steps + 1}

        def once():
            llm.generate(prompt, self._params(1))
            outs = llm.generate([prompt] * batch, self._params(steps + 1))
            per_step = _median([o.metrics.decode_time / (len(o.token_ids) - 1) for o in outs])
            return {"records": [("decode", fields)], "decode": per_step}
        return once

    def _e2e(self, llm, visual_tokens: int, text_tokens: int, output_tokens: int):
        """Wall clock around generate(): preprocessing, vision, prefill, decode, everything."""
        def once():
            prompt = self.work.image_prompt(visual_tokens, text_tokens)
            t0 = time.perf_counter()
            out = llm.generate(prompt, self._params(output_tokens))[0]
            seconds = time.perf_counter() - t0
            fields = {"visual_tokens": visual_tokens, "input_tokens": len(out.prompt_token_ids),
                      "output_tokens": output_tokens}
            return {"records": [("e2e", fields)], "e2e": seconds}
        return once


def measured_cost(m: Measurement, cfg, dtype_bytes: int) -> cm.Cost:
    """The cost-model work of what a measurement timed (per decode step for "decode"); for
    "e2e" the sum of its components (exact for the additive time model only)."""
    if m.kind == "vision":
        return cm.vision_cost(cfg, cm.image_grid(m.visual_tokens, cfg.vision), dtype_bytes)
    if m.kind == "prefill":
        return cm.prefill_cost(cfg, m.input_tokens, dtype_bytes=dtype_bytes)
    if m.kind == "decode":
        steps = m.output_tokens - 1
        return cm.decode_cost(cfg, m.input_tokens, m.output_tokens, m.batch, dtype_bytes=dtype_bytes) * (1 / steps)
    if m.kind == "e2e":
        grid = cm.image_grid(m.visual_tokens, cfg.vision)
        return (cm.vision_cost(cfg, grid, dtype_bytes) + cm.prefill_cost(cfg, m.input_tokens, dtype_bytes=dtype_bytes)
                + cm.decode_cost(cfg, m.input_tokens, m.output_tokens, dtype_bytes=dtype_bytes))
    raise ValueError(f"unknown measurement kind {m.kind!r}")
