"""``POST /v1/completions`` and ``POST /v1/chat/completions``: validate -> submit -> stream.

Bodies are decoded here (not by Litestar's signature model) so that every bad input maps to an
OpenAI-shaped error naming the offending field: malformed JSON or UTF-8 -> 400, wrong types ->
422, semantic problems -> 400, unknown model -> 404, oversized body -> 413.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from opentelemetry import trace
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from service import schemas
from service.batcher import Finished, Job, Outcome, TextDelta
from service.engine import SamplingOptions
from service.errors import (
    APIError,
    DrainingError,
    InvalidRequestError,
    ModelBuildError,
    ModelNotFoundError,
    RequestTimeoutError,
    UnprocessableError,
)
from service.routes.openapi import body_operation
from service.routes.sse import EventStream
from service.state import Phase, ServiceState
from telemetry import names
from telemetry.logging import bind_request, log_event, new_request_id
from telemetry.tracing import extract_context, trace_id_hex

__all__ = ["chat_completions", "completions"]

logger = logging.getLogger("tokenbooth.access")

_T = TypeVar("_T", schemas.CompletionRequest, schemas.ChatCompletionRequest)
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_ERROR_STATUS = {
    Outcome.TIMEOUT: 504,
    Outcome.ERROR: 500,
    Outcome.ABORTED: 499,
}


def _decode(body: bytes, typ: type[_T]) -> _T:
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        param = msg.rsplit("`$.", 1)[1].rstrip("`") if "`$." in msg else None
        raise UnprocessableError(f"invalid request body: {msg}", param=param) from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequestError("request body is not valid UTF-8", code="invalid_utf8") from exc
    except msgspec.DecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError(
                "request body is not valid UTF-8", code="invalid_utf8"
            ) from exc
        raise InvalidRequestError(
            f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc


def _sampling(
    req: schemas.CompletionRequest | schemas.ChatCompletionRequest, st: ServiceState
) -> tuple[SamplingOptions, int, tuple[str, ...]]:
    s = st.settings
    if req.n != 1:
        raise InvalidRequestError("only n=1 is supported", param="n", code="unsupported_n")
    max_tokens = (
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    )
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if max_tokens is None:
        max_tokens = s.default_max_tokens
    if max_tokens < 1:
        raise InvalidRequestError(f"{param} must be at least 1", param=param)
    if max_tokens > s.max_tokens_cap:
        raise InvalidRequestError(
            f"{param}={max_tokens} exceeds this server's cap of {s.max_tokens_cap}",
            param=param,
            code="max_tokens_too_large",
        )
    temperature = 1.0 if req.temperature is None else req.temperature
    if not 0.0 <= temperature <= 2.0:
        raise InvalidRequestError("temperature must be between 0 and 2", param="temperature")
    top_p = 1.0 if req.top_p is None else req.top_p
    if not 0.0 < top_p <= 1.0:
        raise InvalidRequestError("top_p must be in (0, 1]", param="top_p")
    top_k = 0 if req.top_k is None or req.top_k == -1 else req.top_k
    if top_k < 0:
        raise InvalidRequestError("top_k must be >= 0 (or -1 for no limit)", param="top_k")
    stop: tuple[str, ...]
    if req.stop is None:
        stop = ()
    elif isinstance(req.stop, str):
        stop = (req.stop,) if req.stop else ()
    else:
        if len(req.stop) > 4:
            raise InvalidRequestError("at most 4 stop sequences are allowed", param="stop")
        stop = tuple(x for x in req.stop if x)
    if req.seed is not None and not 0 <= req.seed < 2**32:
        raise InvalidRequestError("seed must be in [0, 2**32)", param="seed")
    if req.ignore_eos and not s.allow_ignore_eos:
        raise InvalidRequestError("ignore_eos is disabled on this server", param="ignore_eos")
    greedy = temperature == 0.0
    options = SamplingOptions(
        temperature=0.0 if greedy else temperature,
        top_k=1 if greedy else top_k,
        top_p=1.0 if greedy else top_p,
        seed=None if greedy else req.seed,
        ignore_eos=req.ignore_eos,
    )
    return options, max_tokens, stop


def _chat_text(messages: list[schemas.ChatMessage]) -> list[dict[str, str]]:
    if not messages:
        raise InvalidRequestError("messages must not be empty", param="messages")
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if m.role not in ("system", "user", "assistant", "developer", "tool"):
            raise InvalidRequestError(f"unknown role {m.role!r}", param=f"messages[{i}].role")
        if m.content is None:
            content = ""
        elif isinstance(m.content, str):
            content = m.content
        else:
            parts = []
            for part in m.content:
                if part.get("type") != "text" or "text" not in part:
                    raise InvalidRequestError(
                        "only text content parts are supported", param=f"messages[{i}].content"
                    )
                parts.append(part["text"])
            content = "".join(parts)
        out.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    if not any(m["content"].strip() for m in out):
        raise InvalidRequestError("messages contain no text", param="messages")
    return out


def _ready(st: ServiceState) -> None:
    if st.phase is Phase.DRAINING:
        if st.metrics is not None:
            st.metrics.observe_rejected("draining")
        raise DrainingError("server is draining; retry on another replica")
    if st.phase is not Phase.READY or st.batcher is None or st.engine is None:
        raise DrainingError(f"model is not ready ({st.phase.value})", code="not_ready")


def _request_span(st: ServiceState, route: str, headers: Mapping[str, str]) -> trace.Span:
    """The request's server span, continuing an incoming ``traceparent``.

    When no processor exports spans, only the trace id matters (log lines, exemplars, the
    client's rows); a non-recording span carries it without the SDK's per-span cost.
    """
    # Most clients send no traceparent; skip the propagator's parsing for them.
    parent = extract_context(dict(headers)) if "traceparent" in headers else None
    if st.export_spans:
        return st.tracer.start_span(f"POST {route}", context=parent, kind=SpanKind.SERVER)
    parent_ctx = trace.get_current_span(parent).get_span_context()
    if parent_ctx.is_valid:
        trace_id, flags = parent_ctx.trace_id, parent_ctx.trace_flags
    else:
        # Ids, not secrets: the same non-cryptographic source the OTel SDK's id generator uses.
        trace_id, flags = random.getrandbits(128) or 1, TraceFlags(TraceFlags.SAMPLED)
    span_id = random.getrandbits(64) or 1
    return trace.NonRecordingSpan(SpanContext(trace_id, span_id, False, flags))


async def _handle(
    request: Request[Any, Any, Any], st: ServiceState, chat: bool
) -> Response[Any] | EventStream:
    arrival = time.perf_counter()
    request_id = request.headers.get("x-request-id") or new_request_id()
    route = "/v1/chat/completions" if chat else "/v1/completions"
    span = _request_span(st, route, request.headers)
    trace_id = trace_id_hex(span)
    headers = {"X-Request-ID": request_id}
    with bind_request(request_id, trace_id):
        try:
            _ready(st)
            assert st.batcher is not None and st.engine is not None
            body = await request.body()
            req: schemas.ChatCompletionRequest | schemas.CompletionRequest
            if chat:
                req = _decode(body, schemas.ChatCompletionRequest)
            else:
                req = _decode(body, schemas.CompletionRequest)
            served = st.engine.info.model_name
            if req.model != served:
                raise ModelNotFoundError(
                    f"model {req.model!r} is not served here; available: [{served!r}]",
                    param="model",
                )
            options, max_tokens, stop = _sampling(req, st)
            with st.batcher.admission():
                codec = st.engine.codec
                if isinstance(req, schemas.ChatCompletionRequest):
                    try:
                        prompt = codec.render_chat(_chat_text(req.messages))
                    except ModelBuildError as exc:
                        # The model's template rejected these messages (e.g. role order).
                        raise InvalidRequestError(
                            f"messages do not fit the model's chat template: {exc.detail}",
                            param="messages",
                        ) from exc
                    param = "messages"
                else:
                    if isinstance(req.prompt, list):
                        if len(req.prompt) != 1:
                            raise InvalidRequestError(
                                "exactly one prompt per request is supported", param="prompt"
                            )
                        prompt = req.prompt[0]
                    else:
                        prompt = req.prompt
                    if not prompt:
                        raise InvalidRequestError("prompt must not be empty", param="prompt")
                    if req.echo:
                        raise InvalidRequestError(
                            "echo is not supported", param="echo", code="unsupported_echo"
                        )
                    param = "prompt"
                tokens = codec.encode(prompt)
                if not tokens:
                    raise InvalidRequestError("prompt has no tokens", param=param)
                ctx_len = st.engine.info.context_length
                # 0 means the model did not declare its context; CTranslate2 then enforces it.
                if ctx_len > 0 and len(tokens) + max_tokens > ctx_len:
                    raise InvalidRequestError(
                        f"prompt ({len(tokens)} tokens) plus max_tokens ({max_tokens}) exceeds "
                        f"the model context of {ctx_len} tokens",
                        param=param,
                        code="context_length_exceeded",
                    )
                span.set_attributes(
                    {
                        names.ATTR_OPERATION_NAME: "chat" if chat else "text_completion",
                        names.ATTR_REQUEST_MODEL: served,
                        names.ATTR_REQUEST_MAX_TOKENS: max_tokens,
                        names.ATTR_REQUEST_TEMPERATURE: options.temperature,
                        names.ATTR_USAGE_INPUT_TOKENS: len(tokens),
                    }
                )
                if st.settings.trace_prompts:
                    span.set_attribute("gen_ai.prompt", prompt)
                job = st.batcher.submit(
                    Job(
                        request_id=request_id,
                        prompt_tokens=tokens,
                        options=options,
                        max_tokens=max_tokens,
                        stop=stop,
                        arrival=arrival,
                        span_context=span.get_span_context(),
                        trace_id=trace_id,
                    )
                )
        except APIError as exc:
            if exc.status_code in (400, 404, 413, 422):
                span.set_attribute(names.ATTR_ERROR_TYPE, exc.code)
            span.set_status(Status(StatusCode.ERROR, exc.detail))
            span.end()
            log_event(
                logger,
                "request",
                request_id=request_id,
                route=route,
                status=exc.status_code,
                outcome="rejected" if exc.status_code in (429, 503) else "invalid",
                error_type=exc.code,
                duration_s=round(time.perf_counter() - arrival, 6),
            )
            exc.headers = {**exc.headers, **headers}
            raise
    rid = ("chatcmpl-" if chat else "cmpl-") + f"{random.getrandbits(128):032x}"
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        gen = _sse(st, job, span, rid, served, chat, include_usage, route)
        return EventStream(gen, media_type="text/event-stream", headers={**headers, **_SSE_HEADERS})
    return await _complete(request, st, job, span, rid, served, chat, route, headers)


def _usage(job: Job) -> schemas.Usage:
    return schemas.Usage(
        prompt_tokens=job.prompt_len,
        completion_tokens=job.completion_tokens,
        total_tokens=job.prompt_len + job.completion_tokens,
    )


def _finish_reason(fin: Finished) -> schemas.FinishReason:
    return "length" if fin.outcome is Outcome.LENGTH else "stop"


def _end_span(span: trace.Span, job: Job) -> None:
    fin = job.result
    span.set_attribute(names.ATTR_USAGE_OUTPUT_TOKENS, job.completion_tokens)
    if job.ttft_s is not None:
        span.set_attribute(names.ATTR_TTFT_SECONDS, job.ttft_s)
    if job.queue_wait_s is not None:
        span.set_attribute(names.ATTR_QUEUE_WAIT_SECONDS, job.queue_wait_s)
    span.set_attribute(names.ATTR_BATCH_SIZE, job.batch_size)
    if fin is not None:
        if fin.outcome in (Outcome.STOP, Outcome.LENGTH):
            span.set_attribute(names.ATTR_RESPONSE_FINISH_REASONS, [_finish_reason(fin)])
        else:
            span.set_attribute(names.ATTR_ERROR_TYPE, fin.error_type or fin.outcome.value)
            span.set_status(Status(StatusCode.ERROR, fin.detail))
    span.end()


def _log_job(job: Job, route: str, status: int) -> None:
    fin = job.result
    # Runs after _handle's bind_request block has exited (streaming and response phases), so
    # the request's ids are bound again here or the line would lack its trace_id.
    with bind_request(job.request_id, job.trace_id):
        log_event(
            logger,
            "request",
            request_id=job.request_id,
            route=route,
            status=status,
            outcome=fin.outcome.value if fin else "unknown",
            error_type=fin.error_type if fin else "",
            prompt_tokens=job.prompt_len,
            completion_tokens=job.completion_tokens,
            ttft_s=None if job.ttft_s is None else round(job.ttft_s, 6),
            duration_s=round((job.finished_at or time.perf_counter()) - job.arrival, 6),
            queue_wait_s=None if job.queue_wait_s is None else round(job.queue_wait_s, 6),
            batch_size=job.batch_size,
        )


def _chunk(
    rid: str,
    created: int,
    model: str,
    chat: bool,
    text: str | None,
    finish: schemas.FinishReason | None,
    first: bool,
) -> bytes:
    obj: schemas.ChatCompletionChunk | schemas.CompletionChunk
    if chat:
        delta = schemas.DeltaMessage(role="assistant" if first else None, content=text)
        obj = schemas.ChatCompletionChunk(
            id=rid,
            created=created,
            model=model,
            choices=[schemas.ChatCompletionChunkChoice(index=0, delta=delta, finish_reason=finish)],
        )
    else:
        obj = schemas.CompletionChunk(
            id=rid,
            created=created,
            model=model,
            choices=[schemas.CompletionChoice(index=0, text=text or "", finish_reason=finish)],
        )
    return b"data: " + msgspec.json.encode(obj) + b"\n\n"


async def _sse(
    st: ServiceState,
    job: Job,
    span: trace.Span,
    rid: str,
    model: str,
    chat: bool,
    include_usage: bool,
    route: str,
) -> AsyncIterator[bytes]:
    """Yield OpenAI SSE chunks; a client disconnect cancels this generator and aborts the job."""
    assert st.batcher is not None
    created = int(time.time())
    stream_span: trace.Span | None = None
    status = 200
    first = True
    try:
        if chat:
            # OpenAI sends the role first, before any content.
            yield _chunk(rid, created, model, chat, "", None, True)
            first = False
        async for ev in job.events():
            if isinstance(ev, TextDelta):
                if stream_span is None and st.export_spans:
                    ctx = trace.set_span_in_context(span)
                    stream_span = st.tracer.start_span(names.SPAN_STREAM, context=ctx)
                if ev.text:
                    yield _chunk(rid, created, model, chat, ev.text, None, first)
                    first = False
                continue
            # The closing events go out in one write: the client learns the stream ended (and
            # sends its next request) one round of writes sooner.
            tail = b""
            if ev.outcome in (Outcome.STOP, Outcome.LENGTH):
                tail = _chunk(
                    rid, created, model, chat, None if chat else "", _finish_reason(ev), first
                )
                if include_usage:
                    usage_obj: schemas.ChatCompletionChunk | schemas.CompletionChunk
                    if chat:
                        usage_obj = schemas.ChatCompletionChunk(
                            id=rid, created=created, model=model, choices=[], usage=_usage(job)
                        )
                    else:
                        usage_obj = schemas.CompletionChunk(
                            id=rid, created=created, model=model, choices=[], usage=_usage(job)
                        )
                    tail += b"data: " + msgspec.json.encode(usage_obj) + b"\n\n"
            else:
                status = _ERROR_STATUS.get(ev.outcome, 500)
                err = schemas.ErrorResponse(
                    error=schemas.ErrorBody(
                        message=ev.detail or ev.outcome.value,
                        type="timeout_error" if ev.outcome is Outcome.TIMEOUT else "server_error",
                        param=None,
                        code=ev.error_type or ev.outcome.value,
                    )
                )
                tail = b"data: " + msgspec.json.encode(err) + b"\n\n"
            yield tail + b"data: [DONE]\n\n"
    finally:
        if job.result is None:
            st.batcher.abort(job)
            status = 499
        if stream_span is not None:
            stream_span.end()
        _end_span(span, job)
        _log_job(job, route, status)


async def _abort_on_disconnect(request: Request[Any, Any, Any], st: ServiceState, job: Job) -> None:
    """Non-streamed requests: free the job's slot as soon as the client hangs up."""
    assert st.batcher is not None
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            st.batcher.abort(job)
            return


async def _complete(
    request: Request[Any, Any, Any],
    st: ServiceState,
    job: Job,
    span: trace.Span,
    rid: str,
    model: str,
    chat: bool,
    route: str,
    headers: dict[str, str],
) -> Response[Any]:
    assert st.batcher is not None
    watcher = asyncio.create_task(_abort_on_disconnect(request, st, job))
    status = 200
    try:
        fin: Finished | None = None
        async for ev in job.events():
            if isinstance(ev, Finished):
                fin = ev
        assert fin is not None
        if fin.outcome is Outcome.TIMEOUT:
            status = 504
            raise RequestTimeoutError(fin.detail, headers=headers)
        if fin.outcome is Outcome.ERROR:
            status = 500
            raise APIError(fin.detail, code=fin.error_type or "engine_error", headers=headers)
        if fin.outcome is Outcome.ABORTED:
            # A disconnected client never reads this; "shutdown" is a real 503 for the caller.
            status = 503 if fin.error_type == "shutdown" else 499
            raise DrainingError(fin.detail, code=fin.error_type, headers=headers)
        created = int(time.time())
        body: schemas.ChatCompletionResponse | schemas.CompletionResponse
        if chat:
            body = schemas.ChatCompletionResponse(
                id=rid,
                created=created,
                model=model,
                choices=[
                    schemas.ChatCompletionChoice(
                        index=0,
                        message=schemas.ChatMessage(role="assistant", content=job.text),
                        finish_reason=_finish_reason(fin),
                    )
                ],
                usage=_usage(job),
            )
        else:
            body = schemas.CompletionResponse(
                id=rid,
                created=created,
                model=model,
                choices=[
                    schemas.CompletionChoice(
                        index=0, text=job.text, finish_reason=_finish_reason(fin)
                    )
                ],
                usage=_usage(job),
            )
        return Response(body, headers=headers, status_code=200)
    except asyncio.CancelledError:
        status = 499
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        if job.result is None:
            st.batcher.abort(job)
            status = 499
        _end_span(span, job)
        _log_job(job, route, status)


@post(
    "/v1/completions",
    operation_class=body_operation(schemas.CompletionRequest),
    summary="Create a text completion (OpenAI-compatible)",
    tags=["openai"],
    status_code=200,
)
async def completions(
    request: Request[Any, Any, Any], svc: NamedDependency[ServiceState]
) -> Response[Any] | EventStream:
    """Generate text for one prompt, streamed as SSE when ``stream`` is true."""
    return await _handle(request, svc, chat=False)


@post(
    "/v1/chat/completions",
    operation_class=body_operation(schemas.ChatCompletionRequest),
    summary="Create a chat completion (OpenAI-compatible)",
    tags=["openai"],
    status_code=200,
)
async def chat_completions(
    request: Request[Any, Any, Any], svc: NamedDependency[ServiceState]
) -> Response[Any] | EventStream:
    """Apply the model's chat template and generate the assistant's reply."""
    return await _handle(request, svc, chat=True)
