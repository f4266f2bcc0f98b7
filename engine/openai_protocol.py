"""The OpenAI wire format of `baton serve`: request bodies checked into Baton terms
(SamplingParams, prompts) and the response, chunk, usage, logprob and error bodies. No web
framework here: the server module does the HTTP.

Accepted: temperature, top_p, top_k (extension), max_tokens / max_completion_tokens, stop,
seed, logprobs / top_logprobs, stream, stream_options.include_usage, n (1 only), ignore_eos
(extension), multi_agent {"selector", "budget"} (extension, multi-agent models only).
Fields Baton cannot honour (n > 1, non-zero penalties, logit_bias, tools, JSON response
formats, echo, suffix, best_of > 1) are refused with 400 rather than ignored. Unknown fields
are ignored, as OpenAI-compatible servers usually do.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

MAX_TOP_LOGPROBS = 20


class ApiError(Exception):
    """An error with its HTTP status and OpenAI error type / code."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def error_body(message: str, type: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


# -- field checks ------------------------------------------------------------------------------

def _number(body: dict, key: str, default):
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise bad(f"'{key}' must be a finite number, got {value!r}", key)
    return value


def _integer(body: dict, key: str, default, minimum: int | None = None, maximum: int | None = None):
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad(f"'{key}' must be an integer, got {value!r}", key)
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        span = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise bad(f"'{key}' must be {span}, got {value}", key)
    return value


def _boolean(body: dict, key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"'{key}' must be true or false, got {value!r}", key)
    return value


def _refuse_unsupported(body: dict) -> None:
    n = _integer(body, "n", 1, 1)
    if n != 1:
        raise bad("'n' > 1 is not supported; send n separate requests", "n", "unsupported_value")
    for key in ("presence_penalty", "frequency_penalty"):
        if _number(body, key, 0) != 0:
            raise bad(f"'{key}' is not supported (only 0)", key, "unsupported_value")
    if body.get("logit_bias"):
        raise bad("'logit_bias' is not supported", "logit_bias", "unsupported_value")
    for key in ("tools", "functions"):
        if body.get(key):
            raise bad(f"'{key}' (tool calling) is not supported", key, "unsupported_value")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise bad("'response_format' other than {'type': 'text'} is not supported", "response_format",
                  "unsupported_value")


def _stop(body: dict):
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return stop or None
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s] or None
    raise bad(f"'stop' must be a string or a list of strings, got {stop!r}", "stop")


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
    if not isinstance(options, dict):
        raise bad("'stream_options' must be an object", "stream_options")
    return stream, _boolean(options, "include_usage", False)


def _model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("'model' is required (a string); GET /v1/models lists the served models", "model")
    return model


# -- requests ----------------------------------------------------------------------------------

@dataclass
class GenerationRequest:
    """A chat or completion request in Baton terms. sampling: SamplingParams keyword
    arguments without max_tokens when the client gave none (the server's default applies)."""

    model: str
    stream: bool
    include_usage: bool
    sampling: dict
    top_logprobs: int | None = None  # chat: logprobs asked (how many alternatives); None: no logprobs
    messages: list | None = None  # chat
    prompt: str | list[int] | None = None  # completions
    multi_agent: dict = field(default_factory=dict)

    def sampling_params(self, default_max_tokens: int):
        from baton.engine.sampling_params import SamplingParams

        kwargs = dict(self.sampling)
        kwargs.setdefault("max_tokens", default_max_tokens)
        return SamplingParams(**kwargs)  # InvalidRequestError names a bad value


def _sampling(body: dict, max_tokens_keys: tuple[str, ...], logprobs: int | None) -> dict:
    kwargs = {
        "temperature": _number(body, "temperature", 1.0),
        "top_p": _number(body, "top_p", 1.0),
        "top_k": _integer(body, "top_k", -1),
        "stop": _stop(body),
        "seed": _integer(body, "seed", None),
        "ignore_eos": _boolean(body, "ignore_eos", False),
        "logprobs": logprobs,
    }
    for key in max_tokens_keys:  # the later key wins (max_completion_tokens over max_tokens)
        value = _integer(body, key, None, 1)
        if value is not None:
            kwargs["max_tokens"] = value
    return kwargs


def parse_chat(body) -> GenerationRequest:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list", "messages")
    _refuse_unsupported(body)
    stream, include_usage = _stream_flags(body)
    want_logprobs = _boolean(body, "logprobs", False)
    top = _integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
    if top is not None and not want_logprobs:
        raise bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    top = (top or 0) if want_logprobs else None
    ma = body.get("multi_agent") or {}
    if not isinstance(ma, dict) or set(ma) - {"selector", "budget"}:
        raise bad("'multi_agent' must be an object with optional 'selector' and 'budget'", "multi_agent")
    return GenerationRequest(model=model, stream=stream, include_usage=include_usage, messages=messages,
                             sampling=_sampling(body, ("max_tokens", "max_completion_tokens"), top),
                             top_logprobs=top, multi_agent=ma)


def parse_completion(body) -> GenerationRequest:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    model = _model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise bad("'prompt' must be a string or a list of token ids (one prompt per request)", "prompt")
    elif not isinstance(prompt, str) or not prompt:
        raise bad("'prompt' must be a non-empty string or a list of token ids (one prompt per request)", "prompt")
    _refuse_unsupported(body)
    if _boolean(body, "echo", False):
        raise bad("'echo' is not supported", "echo", "unsupported_value")
    if body.get("suffix"):
        raise bad("'suffix' is not supported", "suffix", "unsupported_value")
    if _integer(body, "best_of", 1, 1) != 1:
        raise bad("'best_of' > 1 is not supported", "best_of", "unsupported_value")
    stream, include_usage = _stream_flags(body)
    top = _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    sampling = _sampling(body, ("max_tokens",), top)
    sampling.setdefault("max_tokens", 16)  # the completions API's default
    return GenerationRequest(model=model, stream=stream, include_usage=include_usage, prompt=prompt,
                             sampling=sampling, top_logprobs=top)


def completion_prompt(prompt) -> str | dict:
    """What LLM.add_request takes for a completions prompt."""
    return prompt if isinstance(prompt, str) else {"prompt_token_ids": list(prompt)}


def multi_agent_options(req: GenerationRequest) -> dict:
    selector, budget = req.multi_agent.get("selector"), req.multi_agent.get("budget")
    if selector is not None and not isinstance(selector, str):
        raise bad("'multi_agent.selector' must be a string", "multi_agent.selector")
    if budget is not None and (not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget <= 0):
        raise bad("'multi_agent.budget' must be a positive number (tokens, or a fraction below 1)",
                  "multi_agent.budget")
    return {"selector": selector, "budget": budget}


# -- responses ---------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def finish_reason(reason: str | None) -> str | None:
    return {"stop": "stop", "length": "length"}.get(reason, reason)


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def output_usage(out) -> dict:
    return usage(len(out.prompt_token_ids), len(out.token_ids), out.num_cached_tokens)


def _ranked(entry: dict, k: int) -> list[tuple[int, float]]:
    return sorted(entry.items(), key=lambda kv: -kv[1])[:k]


def chat_logprobs(token_ids, logprobs, decode, top: int) -> dict:
    """{"content": [...]} for generated tokens, each with its top `top` alternatives."""
    content = []
    for tid, entry in zip(token_ids, logprobs):
        text = decode([tid])
        content.append({
            "token": text, "logprob": entry.get(tid, -math.inf), "bytes": list(text.encode("utf-8")),
            "top_logprobs": [{"token": (t := decode([i])), "logprob": lp, "bytes": list(t.encode("utf-8"))}
                             for i, lp in _ranked(entry, top)],
        })
    return {"content": content}


def completion_logprobs(token_ids, logprobs, decode, top: int, offset: int = 0) -> dict:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, token_lps, tops, offsets = [], [], [], []
    for tid, entry in zip(token_ids, logprobs):
        text = decode([tid])
        tokens.append(text)
        token_lps.append(entry.get(tid, -math.inf))
        tops.append({decode([i]): lp for i, lp in _ranked(entry, top)})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def chat_response(rid: str, model: str, created: int, text: str, reason: str | None, usage_: dict,
                  logprobs: dict | None = None, **extra) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": logprobs, "finish_reason": finish_reason(reason)}],
            "usage": usage_, **extra}


def chat_chunk(rid: str, model: str, created: int, delta: dict, reason: str | None = None,
               logprobs: dict | None = None, include_usage: bool = False, **extra) -> dict:
    chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason(reason)}],
             **extra}
    if include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(rid: str, model: str, created: int, obj: str, usage_: dict) -> dict:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage_}


def completion_response(rid: str, model: str, created: int, text: str, reason: str | None, usage_: dict,
                        logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(reason)}],
            "usage": usage_}


def completion_chunk(rid: str, model: str, created: int, text: str, reason: str | None = None,
                     logprobs: dict | None = None, include_usage: bool = False) -> dict:
    chunk = {"id": rid, "object": "text_completion", "created": created, "model": model,
             "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(reason)}]}
    if include_usage:
        chunk["usage"] = None
    return chunk


def multi_agent_extension(res) -> dict:
    """The `baton` extension field of a multi-agent response: the path taken and the stages."""
    return {"path": res.mode, "seconds": round(res.seconds, 6),
            "transferred_tokens": len(res.transferred_token_ids),
            "stages": [{"name": s.name, "model": s.model, "prompt_tokens": s.prompt_tokens,
                        "cached_tokens": s.cached_tokens, "output_tokens": s.output_tokens,
                        "seconds": round(s.seconds, 6), "vision_encoder_calls": s.vision_encoder_calls}
                       for s in res.stages]}


def multi_agent_usage(res) -> dict:
    """Summed over the stages: every stage's prompt (cached part included) and output tokens."""
    return usage(sum(s.prompt_tokens for s in res.stages), sum(s.output_tokens for s in res.stages),
                 sum(s.cached_tokens for s in res.stages))

