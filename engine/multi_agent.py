"""MultiAgent: a small and a large VLM in one process, driven by one step loop.

Each request is a pipeline of stages (a generator that yields the stages it needs next and
receives their outputs). The driver submits every pending stage to its engine and steps
both engines in turn, so stages of different requests and of the two models interleave
instead of waiting on each other.
"""
from __future__ import annotations

import time

import torch
from dataclasses import dataclass, field

from baton.engine.agent_prompts import AgentPrompts, PromptBuilder
from baton.engine.answers import answers_agree
from baton.errors import BatonError, InvalidRequestError
from baton.engine.llm import LLM
from baton.engine.outputs import RequestOutput
from baton.engine.sampling_params import SamplingParams
from baton.engine.options import check_bool, check_int
from baton.engine.selection import POLICIES, SEGMENTS, resolve_budget, segment_ids, select
from baton.engine.trace import StageRecord, chrome_trace

MODES = ("small", "large", "small-reason", "large-reason", "transfer", "auto")


@dataclass
class Stage:
    name: str
    model: str  # "small" | "large"
    prompt_ids: list[int]
    images: list
    max_tokens: int
    stop: list[str] | None = None
    token_stats: bool = False  # entropy etc. of each generated token (the entropy selector)


@dataclass
class MultiAgentResult:
    answer: str
    mode: str  # the path actually taken, e.g. "auto:agree" or "auto:transfer"
    stages: list[StageRecord] = field(default_factory=list)
    transferred_token_ids: list[int] = field(default_factory=list)
    transferred_text: str = ""
    seconds: float = 0.0
    error: str | None = None

    def trace(self, pid: int = 0) -> list[dict]:
        """Chrome / Perfetto trace events of this request's stages."""
        return chrome_trace([self], first_pid=pid)["traceEvents"]


class MultiAgent:
    def __init__(self, small, large, *, prompts: AgentPrompts | None = None, brief_max_tokens: int = 16,
                 reason_max_tokens: int = 256, selector: str = "full", budget=None, segments: str = "none",
                 kv_cache_bytes: int | None = None, exact_lengths: bool = False, **llm_kwargs):
        """small / large: an LLM or a checkpoint path. With paths, one KV budget
        (kv_cache_bytes) is split so both pools hold the same number of tokens.
        exact_lengths: every stage generates exactly its max tokens (no EOS or stop string),
        so benchmarks compare equal work. Bad options raise InvalidRequestError naming them."""
        check_int("brief_max_tokens", brief_max_tokens)
        check_int("reason_max_tokens", reason_max_tokens)
        check_bool("exact_lengths", exact_lengths)
        check_int("kv_cache_bytes", kv_cache_bytes, optional=True)
        if selector not in POLICIES:
            raise InvalidRequestError(f"selector must be one of {POLICIES}, got {selector!r}")
        if segments not in SEGMENTS:
            raise InvalidRequestError(f"segments must be one of {SEGMENTS}, got {segments!r}")
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
        self.selector, self.budget, self.segments = selector, budget, segments
        self.exact_lengths = exact_lengths
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
        if selector not in POLICIES:
            raise InvalidRequestError(f"selector must be one of {POLICIES}, got {selector!r}")
        budget = self.budget if budget is None else budget
        t0 = time.perf_counter()
        results = [MultiAgentResult(answer="", mode=mode) for _ in batch]
        pipelines = {i: self._pipeline(msgs, mode, selector, budget, results[i]) for i, msgs in enumerate(batch)}
        self._drive(pipelines, results, t0, on_output)
        return results

    # -- the step loop ------------------------------------------------------------------------
    def _drive(self, pipelines: dict, results: list[MultiAgentResult], t0: float, on_output=None) -> None:
        # keys are (engine, request id): each engine numbers its own requests
        waiting: dict[int, dict[tuple, RequestOutput | None]] = {}  # request -> key -> output
        stages: dict[tuple, tuple[int, Stage, float]] = {}
        # this run's outputs come back to it alone; other callers of the same engines keep theirs
        owner = object()

        def advance(i, sent):
            try:
                wanted = pipelines[i].send(sent)
            except StopIteration:
                results[i].seconds = time.perf_counter() - t0
                waiting.pop(i, None)
                return
            except BatonError as e:
                results[i].error, results[i].mode = str(e), "error"
                results[i].seconds = time.perf_counter() - t0
                waiting.pop(i, None)
                return
            waiting[i] = {}
            for stage in wanted:
                engine = self.engines[stage.model]
                params = SamplingParams(temperature=0, max_tokens=stage.max_tokens,
                                        stop=None if self.exact_lengths else stage.stop,
                                        ignore_eos=self.exact_lengths, token_stats=stage.token_stats)
                try:
                    rid = engine.add_request({"prompt_token_ids": stage.prompt_ids, "images": stage.images},
                                             params, owner=owner)
                except BatonError as e:
                    for other in waiting[i]:
                        stages.pop(other)
                        other[0].abort(other[1])
                    results[i].error, results[i].mode = str(e), "error"
                    results[i].seconds = time.perf_counter() - t0
                    del waiting[i]
                    return
                waiting[i][(engine, rid)] = None
                stages[(engine, rid)] = (i, stage, time.perf_counter() - t0)

        try:
            for i in pipelines:
                advance(i, None)
            engines = list({id(e): e for e in self.engines.values()}.values())  # small may be large
            while waiting:
                for engine in engines:
                    for out in engine.step(owner):
                        if on_output is not None and (engine, out.request_id) in stages:
                            i, stage, _ = stages[(engine, out.request_id)]
                            on_output(i, stage, out)
                        if not out.finished:
                            continue  # a stage's result is its finished output
                        key = (engine, out.request_id)
                        i, stage, start = stages.pop(key)
                        results[i].stages.append(_record(stage, out, start, time.perf_counter() - t0))
                        waiting[i][key] = out
                        if all(v is not None for v in waiting[i].values()):
                            outs = list(waiting[i].values())
                            advance(i, outs)
        finally:
            for engine in self.engines.values():
                engine.release(owner)

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
        small_out, large_out = yield [
            Stage("small-brief", "small", s_ids, s_images, self.brief_max_tokens),
            Stage("large-brief", "large", l_ids, l_images, self.brief_max_tokens),
        ]
        if answers_agree(small_out.text, large_out.text):
            result.answer, result.mode = large_out.text.strip(), "auto:agree"
            return
        result.mode = "auto:transfer"
        yield from self._transfer(messages, selector, budget, result, (l_ids, l_images))

    def _reason_then_answer(self, model, messages, token_stats=False, answer=True):
        """Stages: reason (stopped at the end of thought), then, if asked, a brief answer over the
        reasoning prompt + reasoning (a prefix-cache hit). Returns (reasoning output, its ids
        without the stop marker, reasoning prompt ids, answer output or None)."""
        b = self.builders[model]
        ids, images = b.reason(messages)
        stop = [self.prompts.think_close.strip()] if self.prompts.think_close.strip() else None
        (reasoning,) = yield [Stage(f"{model}-reason", model, ids, images, self.reason_max_tokens, stop,
                                    token_stats)]
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
        reasoning, reasoning_ids, reason_ids, answer = yield from self._reason_then_answer(
            "small", messages, token_stats=selector == "entropy", answer=selector == "attention")
        attention = None
        if selector == "attention":
            _, images = small_b.reason(messages)
            attention = self._attention_scores(reason_ids, reasoning_ids, answer, images)
        tok = small_b.processor.tokenizer
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
        l_ids, l_images = large_brief if large_brief is not None else large_b.brief(messages)
        (final,) = yield [Stage("large-final", "large", large_b.transfer(l_ids, transferred), l_images,
                                self.brief_max_tokens)]
        result.answer = final.text.strip()

    # -- traces ----------------------------------------------------------------------------------
    @staticmethod
    def export_trace(results: list[MultiAgentResult], path) -> None:
        import json

        with open(path, "w") as f:
            json.dump(chrome_trace(results), f)


def _record(stage: Stage, out: RequestOutput, start: float, end: float) -> StageRecord:
    return StageRecord(
        name=stage.name, model=stage.model, prompt_tokens=len(out.prompt_token_ids),
        cached_tokens=out.num_cached_tokens, output_tokens=len(out.token_ids), seconds=end - start,
        vision_encoder_calls=out.num_vision_encoder_calls, start=start, end=end, text=out.text,
        ttft=out.metrics.ttft, decode_seconds=out.metrics.decode_time, prompt_token_ids=out.prompt_token_ids,
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


def _same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab()

