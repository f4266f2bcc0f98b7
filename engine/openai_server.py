"""`baton serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over an AsyncEngine.

    POST /v1/chat/completions   stream (SSE, `data: {chunk}` ... `data: [DONE]`) or not
    POST /v1/completions        a text prompt or a list of token ids
    GET  /v1/models             the served models, plus `baton-<mode>` for each multi-agent mode
    GET  /health, GET /metrics  liveness; Prometheus text format

Errors have OpenAI's shape {"error": {"message", "type", "code", "param"}}: 400 bad request,
401 missing or wrong API key (on /v1/*), 404 unknown model or route, 413 body too large,
503 queue full (Retry-After), 500 a failed engine step. A multi-agent model name
(`baton-auto`, `baton-transfer`, ...) runs that mode; the response's `baton` field holds the
path taken and the per-stage table, and streaming sends the final answer's text.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from baton.engine import openai_protocol as proto
from baton.engine.async_engine import AsyncEngine
from baton.engine.media_policy import MediaPolicy
from baton.engine.metrics import ServerMetrics
from baton.engine.openai_protocol import ApiError
from baton.errors import InvalidRequestError, QueueFullError

logger = logging.getLogger("baton")

MULTI_AGENT_PREFIX = "baton-"
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                 405: "invalid_request_error", 413: "invalid_request_error", 503: "overloaded_error"}


def _error(status: int, message: str, type: str | None = None, code: str | None = None, param=None,
           headers=None) -> JSONResponse:
    return JSONResponse(proto.error_body(message, type or _STATUS_TYPES.get(status, "server_error"), code, param),
                        status_code=status, headers=headers)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


class _ClientGone(Exception):
    pass


class _Guard:
    """Pure ASGI middleware (streaming and disconnects pass straight through): the API key on
    /v1/*, and HTTP requests counted by endpoint and status."""

    def __init__(self, app, api_key: str | None, metrics: ServerMetrics):
        self.app, self.api_key, self.metrics = app, api_key, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"

        async def counted_send(message):
            if message["type"] == "http.response.start":
                self.metrics.observe_http(endpoint, message["status"])
            await send(message)

        if self.api_key is not None and path.startswith("/v1"):
            headers = dict(scope["headers"])
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                response = _error(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                                  code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, counted_send)
        await self.app(scope, receive, counted_send)


def create_app(engine: AsyncEngine, *, api_key: str | None = None, media: MediaPolicy | None = None,
               max_body_bytes: int = 64 << 20, disconnect_poll_s: float = 0.5) -> FastAPI:
    """The app over a running AsyncEngine. Plain model names are the engine's; with a team,
    `baton-<mode>` names select the multi-agent modes. The caller shuts the engine down."""
    from baton.engine.multi_agent import MODES

    media = media or MediaPolicy()
    metrics = ServerMetrics(engine)
    team_models = {f"{MULTI_AGENT_PREFIX}{m}": m for m in MODES} if engine.team is not None else {}
    app = FastAPI(title="Baton", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.metrics = engine, metrics

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error(exc.status, exc.message, exc.type, exc.code, exc.param)

    @app.exception_handler(InvalidRequestError)
    async def _invalid(request, exc):
        return _error(400, str(exc), code="invalid_request")

    @app.exception_handler(QueueFullError)
    async def _full(request, exc):
        return _error(503, str(exc), code="queue_full", headers={"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        return _error(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _internal(request, exc):
        logger.exception("unhandled error serving %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    async def read_json(request: Request):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_body_bytes:
            raise ApiError(413, f"request body above {max_body_bytes} bytes", code="body_too_large")
        raw = await request.body()
        if len(raw) > max_body_bytes:
            raise ApiError(413, f"request body above {max_body_bytes} bytes", code="body_too_large")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise proto.bad(f"the request body is not valid JSON: {e}", code="invalid_json") from None

    def engine_for(model: str):
        if model not in engine.engines:
            served = ", ".join([*engine.engines, *team_models])
            raise ApiError(404, f"the model {model!r} does not exist; served: {served}", code="model_not_found",
                           param="model")
        return engine.engines[model]

    async def resolve(messages):
        if media.allow_remote:  # may fetch: keep the event loop free
            return await run_in_threadpool(media.resolve_messages, messages)
        return media.resolve_messages(messages)

    async def until_done(request: Request, awaitable):
        """Awaits a non-streaming result, cancelling it if the client disconnects."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=disconnect_poll_s)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    raise _ClientGone()
        finally:
            if not task.done():
                task.cancel()

    # -- routes --------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics_route():
        body, content_type = await run_in_threadpool(metrics.render)
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models():
        created = proto.now()
        names = [*engine.engines, *team_models]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "baton"}
                                           for n in names]}

    async def final_output(request: Request, stream):
        """A non-streamed request's last output; None when the client left (it is aborted)."""
        try:
            return await until_done(request, last_output(stream))
        except _ClientGone:
            return None
        finally:
            stream.abort()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = proto.parse_chat(await read_json(request))
        if req.model in team_models:
            return await multi_agent_chat(request, req, team_models[req.model])
        llm = engine_for(req.model)
        params = req.sampling_params(llm.max_seq_len)
        stream = await engine.add_chat(await resolve(req.messages), params, model=req.model)
        rid, created = proto.new_id("chatcmpl"), proto.now()
        if req.stream:
            return _streaming(chat_events(stream, req, llm, rid, created))
        out = await final_output(request, stream)
        if out is None:
            return Response(status_code=499)
        logprobs = None
        if req.top_logprobs is not None:
            logprobs = proto.chat_logprobs(out.token_ids, out.logprobs, llm.processor.decode, req.top_logprobs)
        return proto.chat_response(rid, req.model, created, out.text, out.finish_reason, proto.output_usage(out),
                                   logprobs)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = proto.parse_completion(await read_json(request))
        if req.model in team_models:
            raise proto.bad("multi-agent models serve /v1/chat/completions only", "model")
        llm = engine_for(req.model)
        params = req.sampling_params(llm.max_seq_len)
        stream = await engine.add_request(proto.completion_prompt(req.prompt), params, model=req.model)
        rid, created = proto.new_id("cmpl"), proto.now()
        if req.stream:
            return _streaming(completion_events(stream, req, llm, rid, created))
        out = await final_output(request, stream)
        if out is None:
            return Response(status_code=499)
        logprobs = None
        if req.top_logprobs is not None:
            logprobs = proto.completion_logprobs(out.token_ids, out.logprobs, llm.processor.decode, req.top_logprobs)
        return proto.completion_response(rid, req.model, created, out.text, out.finish_reason,
                                         proto.output_usage(out), logprobs)

    def count_path(res) -> None:
        metrics.multi_agent.labels(res.mode).inc()

    async def multi_agent_chat(request: Request, req, mode: str):
        options = proto.multi_agent_options(req)
        stream = engine.start_multi_agent(await resolve(req.messages), mode, **options)
        rid, created = proto.new_id("chatcmpl"), proto.now()
        try:
            if req.stream:
                first = await stream.__anext__()  # bad messages raise here, before any byte is sent
                return _streaming(multi_agent_events(first, stream, req, rid, created, count_path))
            res = await until_done(request, last_event(stream))
            count_path(res)
        except _ClientGone:
            stream.abort()
            return Response(status_code=499)
        except BaseException:
            stream.abort()
            raise
        return proto.chat_response(rid, req.model, created, res.answer, "stop", proto.multi_agent_usage(res),
                                   baton=proto.multi_agent_extension(res))

    app.add_middleware(_Guard, api_key=api_key, metrics=metrics)
    return app


def _streaming(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def last_output(stream):
    out = None
    async for out in stream:
        pass
    if out.finish_reason == "error":
        raise ApiError(500, out.error or "engine step failed", "server_error", "engine_error")
    if out.finish_reason == "abort":
        raise ApiError(503, "the request was aborted (server shutting down)", "server_error", "aborted")
    return out


async def last_event(stream):
    async for event in stream:
        if event.kind == "result":
            return event.result
    raise ApiError(500, "multi-agent run ended without a result", "server_error")  # pragma: no cover


def _error_event(out) -> str:
    return _sse(proto.error_body(out.error or f"request ended: {out.finish_reason}", "server_error", "engine_error"))


async def chat_events(stream, req, llm, rid: str, created: int):
    """Chunks: the first carries role "assistant"; content deltas; the last with choices
    carries finish_reason; then usage when asked; then [DONE]."""
    sent, first = 0, True
    try:
        async for out in stream:
            if out.finish_reason in ("error", "abort"):
                yield _error_event(out)
                break
            logprobs = None
            if req.top_logprobs is not None and len(out.token_ids) > sent:
                logprobs = proto.chat_logprobs(out.token_ids[sent:], out.logprobs[sent:], llm.processor.decode,
                                               req.top_logprobs)
                sent = len(out.token_ids)
            if first or out.delta or logprobs:
                delta = {"role": "assistant", "content": out.delta} if first else {"content": out.delta}
                yield _sse(proto.chat_chunk(rid, req.model, created, delta, None, logprobs, req.include_usage))
                first = False
            if out.finished:
                yield _sse(proto.chat_chunk(rid, req.model, created, {}, out.finish_reason, None, req.include_usage))
                if req.include_usage:
                    yield _sse(proto.usage_chunk(rid, req.model, created, "chat.completion.chunk",
                                                 proto.output_usage(out)))
        yield "data: [DONE]\n\n"
    finally:
        stream.abort()  # a client that vanished mid-stream: the request stops, its blocks are freed


async def completion_events(stream, req, llm, rid: str, created: int):
    sent, offset = 0, 0
    try:
        async for out in stream:
            if out.finish_reason in ("error", "abort"):
                yield _error_event(out)
                break
            logprobs = None
            if req.top_logprobs is not None and len(out.token_ids) > sent:
                logprobs = proto.completion_logprobs(out.token_ids[sent:], out.logprobs[sent:], llm.processor.decode,
                                                     req.top_logprobs, offset)
                sent = len(out.token_ids)
            offset += len(out.delta)
            if out.delta or logprobs:
                yield _sse(proto.completion_chunk(rid, req.model, created, out.delta, None, logprobs,
                                                  req.include_usage))
            if out.finished:
                yield _sse(proto.completion_chunk(rid, req.model, created, "", out.finish_reason, None,
                                                  req.include_usage))
                if req.include_usage:
                    yield _sse(proto.usage_chunk(rid, req.model, created, "text_completion", proto.output_usage(out)))
        yield "data: [DONE]\n\n"
    finally:
        stream.abort()


async def multi_agent_events(first, stream, req, rid: str, created: int, on_result):
    """The final answer's text as chat chunks; the finishing chunk carries the `baton` field."""
    role_sent = False

    def chunk(delta, reason=None, **extra):
        return _sse(proto.chat_chunk(rid, req.model, created, delta, reason, None, req.include_usage, **extra))

    async def events():
        yield first
        async for event in stream:
            yield event

    try:
        async for event in events():
            if event.kind == "delta" or (event.kind == "result" and not role_sent):
                delta = {"content": event.text}
                if not role_sent:
                    delta["role"] = "assistant"
                    role_sent = True
                yield chunk(delta)
            if event.kind == "result":
                res = event.result
                on_result(res)
                yield chunk({}, "stop", baton=proto.multi_agent_extension(res))
                if req.include_usage:
                    yield _sse(proto.usage_chunk(rid, req.model, created, "chat.completion.chunk",
                                                 proto.multi_agent_usage(res)))
        yield "data: [DONE]\n\n"
    except Exception as e:  # noqa: BLE001 - headers are sent: report in the stream
        yield _sse(proto.error_body(str(e), "invalid_request_error" if isinstance(e, InvalidRequestError)
                                    else "server_error", None))
        yield "data: [DONE]\n\n"
    finally:
        stream.abort()


def run_server(engine: AsyncEngine, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
               **app_kwargs) -> None:
    """Serves until interrupted, then shuts the engine down."""
    import uvicorn

    app = create_app(engine, **app_kwargs)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    finally:
        engine.shutdown()
