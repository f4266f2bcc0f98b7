"""MultiAgent: a small and a large VLM in one process, driven by one step loop.

Each request is a pipeline of stages (a generator that yields the stages it needs next and
receives their outputs). The driver submits every pending stage to its engine and steps
both engines in turn, so stages of different requests and of the two models interleave
instead of waiting on each other.
"""
from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

import torch

from baton.engine.agent_prompts import AgentPrompts, PromptBuilder
from baton.engine.answers import answers_agree, briefs_cannot_agree
from baton.engine.latency_router import AnalyticCostModel, LatencyRouter, PathShape, RouteDecision, common_prefix
from baton.errors import BatonError, InvalidRequestError
from baton.engine.llm import LLM
from baton.engine.outputs import RequestOutput
from baton.engine.sampling_params import SamplingParams
from baton.engine.options import check_bool, check_int
from baton.engine.selection import POLICIES, SEGMENTS, resolve_budget, segment_ids, select
from baton.engine.stream_selector import DEFAULT_CHUNK, DEFAULT_HOLDBACK, ChunkCommitter, stream_select
from baton.engine.trace import StageRecord, chrome_trace

MODES = ("small", "large", "small-reason", "large-reason", "transfer", "auto")
# "entropy-stream" (engine/stream_selector.py) commits reasoning chunk by chunk while the small
# model generates, so the large model prefills them early; the others select once it stopped
SELECTORS = POLICIES + ("entropy-stream",)
ROUTERS = (None, "latency")


@dataclass
class Stage:
    name: str
    model: str  # "small" | "large"
    prompt_ids: list[int]
    images: list
    max_tokens: int
    stop: list[str] | None = None
    token_stats: bool = False  # entropy etc. of each generated token (the entropy selectors)
    # driver callbacks, each returning a Reaction or None: on_stream sees every unfinished
    # output, on_finish the finished one
    on_stream: Callable | None = None
    on_finish: Callable | None = None


@dataclass
class Reaction:
    """What a stage callback asks of the driver."""

    # side stages to start now: the pipeline waits for them too, but is not sent their outputs
    stages: list[Stage] = field(default_factory=list)
    # end the current wait now: unfinished stages the pipeline asked for are aborted and the
    # pipeline gets their outputs so far
    resolve: bool = False


@dataclass
class MultiAgentResult:
    answer: str
    mode: str  # the path actually taken, e.g. "auto:agree", "auto:transfer", "auto:large-reason"
    stages: list[StageRecord] = field(default_factory=list)
    transferred_token_ids: list[int] = field(default_factory=list)
    transferred_text: str = ""
    seconds: float = 0.0
    error: str | None = None
    # the verification outcome came from MultiAgent(agreement=...), not from comparing answers
    agreement_hook: bool = False
    # router="latency": the path chosen on a disagreement, predicted and actual seconds
    route: RouteDecision | None = None
    # early verification: the briefs were cut short once they could no longer agree;
    # saved seconds are estimated (the aborted briefs' remaining tokens at their own pace)
    verified_early: bool = False
    early_saved_seconds: float = 0.0

    def trace(self, pid: int = 0) -> list[dict]:
        """Chrome / Perfetto trace events of this request's stages."""
        return chrome_trace([self], first_pid=pid)["traceEvents"]


class MultiAgent:
    def __init__(self, small, large, *, prompts: AgentPrompts | None = None, brief_max_tokens: int = 16,
                 reason_max_tokens: int | dict = 256, selector: str = "full", budget=None, segments: str = "none",
                 kv_cache_bytes: int | None = None, exact_lengths: bool = False,
                 agreement: Callable[[str, str], bool] | None = None, router: str | None = None,
                 cost_model=None, prefill_ahead: bool = True, early_verification: bool = True,
                 stream_chunk: int = DEFAULT_CHUNK, overlap_engines: bool = False, **llm_kwargs):
        """small / large: an LLM or a checkpoint path. With paths, one KV budget
        (kv_cache_bytes) is split so both pools hold the same number of tokens.
        exact_lengths: every stage generates exactly its max tokens (no EOS or stop string),
        so benchmarks compare equal work. reason_max_tokens: one limit, or {"small": n, "large": m}.
        agreement(small_text, large_text) -> bool: decides mutual verification instead of
        comparing the normalised answers (benchmarks on random weights); off by default,
        and every result it decided has agreement_hook=True.
        router="latency": on a disagreement, run small-reason -> transfer or large-reason,
        whichever is predicted faster (cost_model: see engine/latency_router.py).
        prefill_ahead: in "transfer" mode the large model prefills [image + question] while the
        small model reasons. early_verification: stop the briefs once their (settled) answers
        disagree. stream_chunk: the entropy-stream selector's chunk size. overlap_engines: step
        the two engines in two threads, each at its own pace, instead of in turn (faster where
        cores or the GPU are to spare; the order of batching then depends on timing).
        Bad options raise InvalidRequestError naming them."""
        check_int("brief_max_tokens", brief_max_tokens)
        reason_tokens = _per_model("reason_max_tokens", reason_max_tokens)
        check_bool("exact_lengths", exact_lengths)
        check_bool("prefill_ahead", prefill_ahead)
        check_bool("early_verification", early_verification)
        check_bool("overlap_engines", overlap_engines)
        check_int("stream_chunk", stream_chunk)
        check_int("kv_cache_bytes", kv_cache_bytes, optional=True)
        if selector not in SELECTORS:
            raise InvalidRequestError(f"selector must be one of {SELECTORS}, got {selector!r}")
        if segments not in SEGMENTS:
            raise InvalidRequestError(f"segments must be one of {SEGMENTS}, got {segments!r}")
        if agreement is not None and not callable(agreement):
            raise InvalidRequestError("agreement must be a callable(small_text, large_text) -> bool or None")
        if router not in ROUTERS:
            raise InvalidRequestError(f"router must be one of {ROUTERS}, got {router!r}")
        if cost_model is not None and not (hasattr(cost_model, "prefill") and hasattr(cost_model, "decode")):
            raise InvalidRequestError("cost_model needs prefill(model, new, prefix) and decode(model, ctx, n, batch)")
        resolve_budget(budget, 1)  # raises naming budget
        if prompts is not None and not isinstance(prompts, AgentPrompts):
            raise InvalidRequestError(f"prompts must be an AgentPrompts, got {type(prompts).__name__}")
        if isinstance(small, LLM) != isinstance(large, LLM):
            raise InvalidRequestError("small and large: pass both as LLM instances or both as paths")
        if not isinstance(small, LLM):
            small, large = self._build_pair(small, large, kv_cache_bytes, llm_kwargs)
        self.engines = {"small": small, "large": large}
        self.prompts = prompts or AgentPrompts()
        self.builders = {k: PromptBuilder(e.processor, self.prompts) for k, e in self.engines.items()}
        self.brief_max_tokens = brief_max_tokens
        self.reason_max_tokens = reason_max_tokens
        self.reason_tokens = reason_tokens  # {"small": limit, "large": limit}
        self.selector, self.budget, self.segments = selector, budget, segments
        self.exact_lengths = exact_lengths
        self.agreement = agreement
        self.prefill_ahead, self.early_verification = prefill_ahead, early_verification
        self.stream_chunk = stream_chunk
        self.overlap_engines = overlap_engines
        self.router = None if router is None else LatencyRouter(
            cost_model if cost_model is not None else AnalyticCostModel(self.engines), reason_tokens,
            shared_device=small.device == large.device,
            step_tokens={m: e.scheduler.max_num_batched_tokens for m, e in self.engines.items()})
        self.shared_vocab = _same_tokenizer(small.processor.tokenizer, large.processor.tokenizer)

    @staticmethod
    def _build_pair(small_path, large_path, kv_cache_bytes, llm_kwargs):
        from baton.models.config import load_config

        if kv_cache_bytes is None:
            return LLM(small_path, **llm_kwargs), LLM(large_path, **llm_kwargs)
        # same dtype and block size for both, so KV bytes per token scale with layers * kv width
        width = [c.text.num_hidden_layers * c.text.num_key_value_heads * c.text.head_dim
                 for c in (load_config(small_path), load_config(large_path))]
        share = width[0] / sum(width)
        return (LLM(small_path, kv_cache_bytes=int(kv_cache_bytes * share), **llm_kwargs),
                LLM(large_path, kv_cache_bytes=int(kv_cache_bytes * (1 - share)), **llm_kwargs))

    # -- public API ---------------------------------------------------------------------------
    def run(self, messages, mode: str = "auto", selector: str | None = None, budget=None,
            on_output=None) -> MultiAgentResult:
        """One request; raises InvalidRequestError for a bad one."""
        res = self.run_batch([messages], mode=mode, selector=selector, budget=budget, on_output=on_output)[0]
        if res.error is not None:
            raise InvalidRequestError(res.error)
        return res

    def run_batch(self, batch: list, mode: str = "auto", selector: str | None = None,
                  budget=None, on_output=None) -> list[MultiAgentResult]:
        """Many requests through one step loop; a bad request fails alone (result.error set).
        on_output(request index, Stage, RequestOutput) sees every stage output as it streams;
        an exception it raises stops the run and aborts the stages in flight."""
        if mode not in MODES:
            raise InvalidRequestError(f"mode must be one of {MODES}, got {mode!r}")
        selector = selector or self.selector
        if selector not in SELECTORS:
            raise InvalidRequestError(f"selector must be one of {SELECTORS}, got {selector!r}")
        if selector == "entropy-stream" and self.segments != "none":
            raise InvalidRequestError("segments do not apply to the entropy-stream selector")
        budget = self.budget if budget is None else budget
        t0 = time.perf_counter()
        results = [MultiAgentResult(answer="", mode=mode) for _ in batch]
        pipelines = {i: self._pipeline(msgs, mode, selector, budget, results[i]) for i, msgs in enumerate(batch)}
        self._drive(pipelines, results, t0, on_output)
        return results

    # -- the step loop ------------------------------------------------------------------------
    def _drive(self, pipelines: dict, results: list[MultiAgentResult], t0: float, on_output=None) -> None:
        # keys are (engine, request id): each engine numbers its own requests
        stages: dict[tuple, tuple[int, Stage, float]] = {}  # in flight: key -> (request, stage, start)
        asked: dict[int, list[tuple]] = {}  # request -> keys of the stages its pipeline waits on, in order
        latest: dict[int, dict[tuple, RequestOutput]] = {}  # request -> key -> newest output
        pending: dict[int, set] = {}  # request -> keys not finished yet (asked and side stages)
        deciding: dict[int, PathShape] = {}  # request -> its paths, waiting for the router
        # this run's outputs come back to it alone; other callers of the same engines keep theirs
        owner = object()

        def close(i):
            results[i].seconds = time.perf_counter() - t0
            for d in (asked, latest, pending):
                d.pop(i, None)

        def fail(i, message):
            for key in list(pending.get(i, ())):
                if stages.pop(key, None) is not None:
                    key[0].abort(key[1])
            results[i].error, results[i].mode = message, "error"
            close(i)

        def submit(i, stage):
            engine = self.engines[stage.model]
            params = SamplingParams(temperature=0, max_tokens=stage.max_tokens,
                                    stop=None if self.exact_lengths else stage.stop,
                                    ignore_eos=self.exact_lengths, token_stats=stage.token_stats)
            try:
                rid = engine.add_request({"prompt_token_ids": stage.prompt_ids, "images": stage.images},
                                         params, owner=owner)
            except BatonError as e:
                fail(i, str(e))
                return None
            stages[(engine, rid)] = (i, stage, time.perf_counter() - t0)
            pending[i].add((engine, rid))
            return engine, rid

        def advance(i, sent):
            try:
                wanted = pipelines[i].send(sent)
            except StopIteration:
                close(i)
                if self.router is not None:
                    self.router.observe(results[i].stages)
                return
            except BatonError as e:
                fail(i, str(e))
                return
            if isinstance(wanted, _RouteQuery):
                deciding[i] = wanted.shape
                return
            asked[i], latest[i], pending[i] = [], {}, set()
            for stage in wanted:
                key = submit(i, stage)
                if key is None:
                    return
                asked[i].append(key)

        def finished(key, out):
            i, stage, start = stages.pop(key)
            results[i].stages.append(_record(stage, out, start, time.perf_counter() - t0))
            latest[i][key] = out
            pending[i].discard(key)

        def maybe_advance(i):
            if i in pending and not pending[i] and i not in deciding:
                advance(i, [latest[i][k] for k in asked[i]])

        def react(i, callback, out):
            try:
                reaction = callback(out)
            except BatonError as e:
                fail(i, str(e))
                return
            if reaction is None:
                return
            for stage in reaction.stages:
                if submit(i, stage) is None:
                    return
            if reaction.resolve:
                for key in asked[i]:
                    if key in stages:
                        cut = key[0].abort(key[1])
                        if cut is not None:  # None: it finished this step; its output is on its way
                            finished(key, cut)
                maybe_advance(i)

        def decide():
            """Routes every request that reached its decision in this step, as one group."""
            while deciding:
                group = dict(deciding)
                deciding.clear()
                for i, decision in zip(group, self.router.choose_group(list(group.values()), self._load())):
                    advance(i, decision)

        def handle(engine, outs):
            for out in outs:
                key = (engine, out.request_id)
                if key not in stages:
                    continue  # the last output of a stage this run aborted
                i, stage, _ = stages[key]
                if on_output is not None:
                    on_output(i, stage, out)
                if not out.finished:
                    latest[i][key] = out
                    if stage.on_stream is not None:
                        react(i, stage.on_stream, out)
                    continue  # a stage's result is its finished output
                finished(key, out)
                if stage.on_finish is not None:
                    react(i, stage.on_finish, out)
                maybe_advance(i)
            decide()

        engines = list({id(e): e for e in self.engines.values()}.values())  # small may be large
        pool = ThreadPoolExecutor(len(engines), thread_name_prefix="baton-agent-step") \
            if self.overlap_engines and len(engines) > 1 else None
        try:
            for i in pipelines:
                advance(i, None)
            if pool is not None:
                self._drive_overlapped(pool, engines, owner, handle, pending)
            while pending:
                for engine in engines:
                    handle(engine, engine.step(owner))
        finally:
            if pool is not None:
                pool.shutdown(wait=True)  # no step of ours still running when the owner goes
            for engine in self.engines.values():
                engine.release(owner)

    @staticmethod
    def _drive_overlapped(pool, engines, owner, handle, pending) -> None:
        """overlap_engines: each engine steps in its own thread at its own pace (torch releases
        the GIL), so the large model prefills while the small one decodes. Outputs are handled
        here, in this thread, as each step returns; an engine without work is not stepped until
        a stage reaches it."""
        steps = {}
        while pending:
            for engine in engines:
                if engine not in steps.values() and engine.has_unfinished():
                    steps[pool.submit(engine.step, owner)] = engine
            if not steps:  # nothing to compute: collect what the mailboxes hold
                for engine in engines:
                    handle(engine, engine.step(owner))
                continue
            done, _ = wait(steps, return_when=FIRST_COMPLETED)
            for future in done:
                handle(steps.pop(future), future.result())

    # -- pipelines (one generator per request) ---------------------------------------------------
    def _pipeline(self, messages, mode, selector, budget, result: MultiAgentResult):
        b = self.builders
        if mode in ("small", "large"):
            ids, images = b[mode].brief(messages)
            (out,) = yield [Stage(f"{mode}-brief", mode, ids, images, self.brief_max_tokens)]
            result.answer = out.text.strip()
            return
        if mode in ("small-reason", "large-reason"):
            model = mode.split("-")[0]
            *_, answer = yield from self._reason_then_answer(model, messages)
            result.answer = answer.text.strip()
            return
        if mode == "transfer":
            yield from self._transfer(messages, selector, budget, result, None)
            return
        # auto: mutual verification
        s_ids, s_images = b["small"].brief(messages)
        l_ids, l_images = b["large"].brief(messages)
        briefs = [Stage("small-brief", "small", s_ids, s_images, self.brief_max_tokens),
                  Stage("large-brief", "large", l_ids, l_images, self.brief_max_tokens)]
        if self.early_verification and self.agreement is None:
            _EarlyVerifier(briefs, self.brief_max_tokens, result)
        small_out, large_out = yield briefs
        if self._agree(small_out.text, large_out.text, result):
            result.answer, result.mode = large_out.text.strip(), "auto:agree"
            return
        if self.router is not None:  # the step loop decides for all that got here in one step
            result.route = yield _RouteQuery(self._path_shape(messages, s_ids, l_ids, selector, budget))
        decided = time.perf_counter()
        if result.route is None or result.route.choice == "transfer":
            result.mode = "auto:transfer"
            yield from self._transfer(messages, selector, budget, result, (l_ids, l_images))
        else:
            result.mode = "auto:large-reason"
            *_, answer = yield from self._reason_then_answer("large", messages)
            result.answer = answer.text.strip()
        if result.route is not None:
            result.route.actual_seconds = time.perf_counter() - decided

    def _agree(self, small_text: str, large_text: str, result: MultiAgentResult) -> bool:
        if self.agreement is None:
            return answers_agree(small_text, large_text)
        result.agreement_hook = True
        try:
            verdict = self.agreement(small_text, large_text)
        except Exception as e:  # noqa: BLE001 - the hook is user code: this request fails alone
            raise InvalidRequestError(f"the agreement hook raised {type(e).__name__}: {e}") from e
        if not isinstance(verdict, bool):
            raise InvalidRequestError(f"the agreement hook must return True or False, got {verdict!r}")
        return verdict

    def _load(self) -> dict[str, int]:
        """Sequences each engine holds besides this request's (finished) briefs."""
        stats = {m: e.stats() for m, e in self.engines.items()}
        return {m: st["running"] + st["waiting"] for m, st in stats.items()}

    def _path_shape(self, messages, s_brief, l_brief, selector, budget) -> PathShape:
        b = self.builders
        s_reason, _ = b["small"].reason(messages)
        l_reason, _ = b["large"].reason(messages)
        fraction, cap = 1.0, None
        if isinstance(budget, float):
            fraction = budget
        elif isinstance(budget, int) and not isinstance(budget, bool):
            cap = budget
            if selector == "entropy-stream":
                fraction = min(1.0, budget / self.reason_tokens["small"])
        return PathShape(
            small_reason_prompt=len(s_reason), small_reason_cached=common_prefix(s_reason, s_brief),
            large_reason_prompt=len(l_reason), large_reason_cached=common_prefix(l_reason, l_brief),
            transfer_prompt=len(b["large"].transfer_head(l_brief)), transfer_fraction=fraction, transfer_cap=cap,
            streamed_tokens=self.stream_chunk if selector == "entropy-stream" and self.shared_vocab else None,
            close_tokens=len(b["large"].encode_text(self.prompts.think_close)), answer_tokens=self.brief_max_tokens)

    def _reason_then_answer(self, model, messages, token_stats=False, answer=True, beside=(), on_stream=None,
                            on_finish=None):
        """Stages: reason (stopped at the end of thought; `beside` runs alongside it), then, if
        asked, a brief answer over the reasoning prompt + reasoning (a prefix-cache hit).
        Returns (reasoning output, its ids without the stop marker, reasoning prompt ids,
        answer output or None)."""
        b = self.builders[model]
        ids, images = b.reason(messages)
        stop = [self.prompts.think_close.strip()] if self.prompts.think_close.strip() else None
        reasoning, *_ = yield [Stage(f"{model}-reason", model, ids, images, self.reason_tokens[model], stop,
                                     token_stats, on_stream=on_stream, on_finish=on_finish), *beside]
        reasoning_ids = _reasoning_ids(reasoning, b, self.engines[model].eos_token_ids)
        out = None
        if answer:
            (out,) = yield [Stage(f"{model}-answer", model, b.after_reasoning(ids, reasoning_ids), images,
                                  self.brief_max_tokens)]
        return reasoning, reasoning_ids, ids, out

    def _attention_scores(self, reason_ids, reasoning_ids, answer, images) -> torch.Tensor:
        """The small model's last-layer attention from its answer tokens onto its reasoning
        tokens, over [reasoning prompt + reasoning + answer] (mostly cached by the answer stage).
        A direct call between steps: other requests in flight are left as they are."""
        answer_prompt = self.builders["small"].after_reasoning(reason_ids, reasoning_ids)
        if not answer.token_ids or not reasoning_ids:
            return torch.zeros(len(reasoning_ids))
        prompt = {"prompt_token_ids": answer_prompt + list(answer.token_ids), "images": images}
        return self.engines["small"].score(prompt, query_start=len(answer_prompt), key_start=len(reason_ids),
                                           key_end=len(reason_ids) + len(reasoning_ids))

    def _transfer(self, messages, selector, budget, result, large_brief):
        small_b, large_b = self.builders["small"], self.builders["large"]
        l_ids, l_images = large_brief if large_brief is not None else large_b.brief(messages)
        head = large_b.transfer_head(l_ids)
        streamer = None
        if selector == "entropy-stream" and self.shared_vocab:  # chunks are prefixes only in one vocabulary
            streamer = _TransferStreamer(small_b, head, l_images, budget, self.reason_tokens["small"], self.stream_chunk,
                                         holdback=0 if self.exact_lengths else DEFAULT_HOLDBACK)
        beside = []
        if large_brief is None and self.prefill_ahead:  # the brief stage did not cache the prompt
            beside.append(Stage("large-prefill", "large", head, l_images, 1,
                                on_finish=streamer.prefilled if streamer else None))
            if streamer:
                streamer.busy = True
        reasoning, reasoning_ids, reason_ids, answer = yield from self._reason_then_answer(
            "small", messages, token_stats=selector in ("entropy", "entropy-stream"), answer=selector == "attention",
            beside=beside, on_stream=streamer.on_stream if streamer else None,
            on_finish=streamer.stopped if streamer else None)
        tok = small_b.processor.tokenizer
        if selector == "entropy-stream":
            raw = _strip_stop(reasoning, small_b, self.engines["small"].eos_token_ids)
            entropy = (reasoning.token_stats or {}).get("entropy", [])
            keep = stream_select(entropy, len(raw), budget, self.reason_tokens["small"], self.stream_chunk)
            selected = small_b.clean([raw[i] for i in keep])
            result.transferred_text = "".join(tok.decode([t]) for t in selected)
        else:
            attention = None
            if selector == "attention":
                _, images = small_b.reason(messages)
                attention = self._attention_scores(reason_ids, reasoning_ids, answer, images)
            pieces = [tok.decode([t]) for t in reasoning_ids]
            keep = select(selector, len(reasoning_ids), budget, stats=reasoning.token_stats, attention=attention,
                          segments=segment_ids(pieces, self.segments))
            selected = [reasoning_ids[i] for i in keep]
            result.transferred_text = "".join(pieces[i] for i in keep)
        if self.shared_vocab:
            transferred = selected
        else:  # different vocabularies: detokenise, re-tokenise for the large model
            transferred = large_b.encode_text(result.transferred_text)
        result.transferred_token_ids = transferred
        (final,) = yield [Stage("large-final", "large", large_b.transfer(l_ids, transferred), l_images,
                                self.brief_max_tokens)]
        result.answer = final.text.strip()

    # -- traces ----------------------------------------------------------------------------------
    @staticmethod
    def export_trace(results: list[MultiAgentResult], path) -> None:
        import json

        with open(path, "w") as f:
            json.dump(chrome_trace(results), f)


@dataclass
class _RouteQuery:
    """Yielded by a pipeline at a disagreement; the step loop sends back its RouteDecision."""

    shape: PathShape


def _record(stage: Stage, out: RequestOutput, start: float, end: float) -> StageRecord:
    return StageRecord(
        name=stage.name, model=stage.model, prompt_tokens=len(out.prompt_token_ids),
        cached_tokens=out.num_cached_tokens, output_tokens=len(out.token_ids), seconds=end - start,
        vision_encoder_calls=out.num_vision_encoder_calls, start=start, end=end, text=out.text,
        ttft=out.metrics.ttft, decode_seconds=out.metrics.decode_time, prompt_token_ids=out.prompt_token_ids,
        decode_batch=out.metrics.mean_decode_batch,
    )


def _strip_stop(out: RequestOutput, builder: PromptBuilder, eos_ids: set[int]) -> list[int]:
    """Generated reasoning ids without the end-of-turn token or the stop string that ended them."""
    ids = list(out.token_ids)
    if out.finish_reason != "stop":
        return ids
    if ids and ids[-1] in eos_ids:
        return ids[:-1]
    decode = builder.processor.decode
    while ids and len(decode(ids)) > len(out.text):
        ids.pop()
    return ids if decode(ids) == out.text else builder.encode_text(out.text)


def _reasoning_ids(out: RequestOutput, builder: PromptBuilder, eos_ids: set[int]) -> list[int]:
    return builder.clean(_strip_stop(out, builder, eos_ids))


def _per_model(name: str, value) -> dict[str, int]:
    if isinstance(value, dict):
        if set(value) != {"small", "large"}:
            raise InvalidRequestError(f"{name} as a dict needs exactly the keys 'small' and 'large', got {sorted(value)}")
        for model, v in value.items():
            check_int(f"{name}[{model!r}]", v)
        return dict(value)
    check_int(name, value)
    return {"small": value, "large": value}


def _same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab()



class _TransferStreamer:
    """Streaming transfer: the committed chunks of the small model's reasoning go to the large
    model as prefill-only stages ("large-prefill", one token generated), each over
    [transfer head + selected tokens so far], so each extends the prefix the previous one left
    in the prefix cache. One is in flight at a time; none starts after the reasoning stopped
    (the final stage then prefills the rest itself)."""

    def __init__(self, builder: PromptBuilder, head: list[int], images, budget, max_tokens: int, chunk: int,
                 holdback: int):
        self.builder, self.head, self.images = builder, head, images
        # holdback only times the commits (no stop marker without stop strings): the tokens
        # transferred are stream_select's either way
        self.committer = ChunkCommitter(budget, max_tokens, chunk, holdback)
        self.busy = False
        self.done = False
        self.sent = 0  # selected tokens the large model has, or is prefilling
        self.ids: list[int] = []

    def on_stream(self, out: RequestOutput):
        self.ids = list(out.token_ids)
        if out.token_stats is not None:
            self.committer.feed(out.token_stats["entropy"])
        return self._next()

    def prefilled(self, out: RequestOutput):
        self.busy = False
        return self._next()

    def stopped(self, out: RequestOutput):
        self.done = True

    def _next(self):
        if self.busy or self.done:
            return None
        selected = self.builder.clean([self.ids[i] for i in self.committer.kept])
        if len(selected) <= self.sent:
            return None
        self.busy, self.sent = True, len(selected)
        return Reaction([Stage("large-prefill", "large", self.head + selected, self.images, 1,
                               on_finish=self.prefilled)])


class _EarlyVerifier:
    """Watches the two brief stages; once both answers are settled (engine/answers.py) and
    disagree, the briefs are cut short so the reasoning starts at once."""

    def __init__(self, briefs: list[Stage], max_tokens: int, result: MultiAgentResult):
        self.text = {st.model: "" for st in briefs}
        self.done = {st.model: False for st in briefs}
        self.pace: dict[str, float] = {}  # the unfinished briefs' estimated seconds left
        self.max_tokens, self.result = max_tokens, result
        for st in briefs:
            st.on_stream = st.on_finish = self._watcher(st.model)

    def _watcher(self, model: str):
        def see(out: RequestOutput):
            self.text[model], self.done[model] = out.text, out.finished
            n, m = len(out.token_ids), out.metrics
            if not out.finished and n > 1 and m.first_token_time is not None:
                self.pace[model] = (time.perf_counter() - m.first_token_time) / (n - 1) * (self.max_tokens - n)
            if self.result.verified_early or all(self.done.values()):
                return None
            if briefs_cannot_agree(self.text["small"], self.done["small"], self.text["large"], self.done["large"]):
                self.result.verified_early = True
                self.result.early_saved_seconds = max(
                    (s for k, s in self.pace.items() if not self.done[k]), default=0.0)
                return Reaction(resolve=True)
            return None
        return see
