"""``POST /v1/completions`` and ``POST /v1/chat/completions``: validate -> submit -> respond.

Bodies are decoded here (not by Litestar's signature model) so that every bad input maps to an
OpenAI-shaped error naming the offending field: a body not declared ``application/json`` ->
415, malformed, too deeply nested JSON or bad UTF-8 -> 400, wrong types -> 422, values out of
range, unsupported parameters and other semantic problems -> 400, unknown model -> 404,
oversized body -> 413. Every request, refused or served, is recorded once through
:mod:`service.observe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.exceptions.http_exceptions import InternalServerException, RequestEntityTooLarge

from service import responses, schemas
from service.batcher import Batcher
from service.connections import ConnectionState, connection_state
from service.engine import Engine, SamplingOptions
from service.errors import (
    APIError,
    BodyTimeoutError,
    DrainingError,
    ErrorCode,
    InvalidRequestError,
    ModelBuildError,
    ModelNotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    from_validation_error,
)
from service.job import Finished, Job, TextDelta
from service.observe import RequestObservation
from service.routes.openapi import body_operation
from service.routes.sse import EventStream
from service.settings import ServiceSettings
from service.state import Phase, ServiceState
from telemetry import names

__all__ = ["chat_completions", "completions"]

_Body = schemas.CompletionRequest | schemas.ChatCompletionRequest


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """What differs between the two generation routes."""

    route: str
    operation: str
    id_prefix: str
    body: type[schemas.CompletionRequest] | type[schemas.ChatCompletionRequest]

    @property
    def chat(self) -> bool:
        return self.operation == names.OPERATION_CHAT


_COMPLETIONS: Final = _Endpoint(
    "/v1/completions", names.OPERATION_TEXT_COMPLETION, "cmpl-", schemas.CompletionRequest
)
_CHAT: Final = _Endpoint(
    "/v1/chat/completions", names.OPERATION_CHAT, "chatcmpl-", schemas.ChatCompletionRequest
)


@dataclass(frozen=True, slots=True)
class _Plan:
    """A validated request: what to generate, not yet tokenized."""

    model: str
    options: SamplingOptions
    max_tokens: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    prompt: str = ""  # completions
    messages: tuple[dict[str, str], ...] = ()  # chat, roles already mapped for the template

    @property
    def param(self) -> str:
        """The field a problem with the prompt is reported against."""
        return "messages" if self.messages else "prompt"


async def _handle(
    request: Request[Any, Any, Any], st: ServiceState, endpoint: _Endpoint
) -> Response[Any] | EventStream:
    obs = RequestObservation(st, endpoint.route, request.headers)
    headers = {"X-Request-ID": obs.request_id}
    with obs.bound():
        try:
            engine, batcher = _ready(st, obs.arrival)
            _require_json(request)
            body = await _body(request, st.settings.body_timeout_s)
            plan = _validate(body, endpoint.body, engine, st.settings)
            job = await _submit(st, engine, batcher, obs, endpoint, plan)
        except APIError as exc:
            obs.reject(exc)
            exc.headers = {**exc.headers, **headers}
            raise
        except _ClientGone:
            obs.cancelled()
            return Response(b"", status_code=responses.CLIENT_CLOSED_STATUS)  # nobody is listening
        except asyncio.CancelledError:
            obs.cancelled()  # cancelled (shutdown) before its job was queued
            raise
        except Exception as exc:
            obs.fail(exc)
            raise
    return await _respond(request, batcher, obs, endpoint, plan, job, headers)


# ----------------------------------------------------------------------------------- validate
def _ready(st: ServiceState, arrival: float) -> tuple[Engine, Batcher]:
    if st.phase is Phase.DRAINING:
        # A request already arriving when the drain began (its body still coming) is in
        # flight, and runs; a new one goes elsewhere.
        started = st.drain_started_at
        if started is None or arrival >= started or st.batcher is None or st.engine is None:
            raise DrainingError(headers={"Connection": "close"})
        return st.engine, st.batcher
    if st.phase is not Phase.READY or st.batcher is None or st.engine is None:
        raise DrainingError(f"model is not ready ({st.phase.value})", code=ErrorCode.NOT_READY)
    return st.engine, st.batcher


def _require_json(request: Request[Any, Any, Any]) -> None:
    # Checked before the body is read: a browser may send text/plain cross-origin without a
    # CORS preflight, application/json only after one.
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        shown = media_type or "none"
        raise UnsupportedMediaTypeError(f"Content-Type must be application/json, not {shown}")


class _ClientGone(Exception):
    """The client hung up while its body was still arriving."""


async def _body(request: Request[Any, Any, Any], timeout_s: float) -> bytes:
    try:
        async with asyncio.timeout(timeout_s):
            return await request.body()
    except TimeoutError as exc:
        # The client may still be sending: close the connection after the answer.
        raise BodyTimeoutError(
            f"request body not received within {timeout_s:g} s", headers={"Connection": "close"}
        ) from exc
    except RequestEntityTooLarge as exc:
        raise PayloadTooLargeError() from exc
    except InternalServerException as exc:
        # Litestar's only 500 from reading the body: http.disconnect before its end.
        raise _ClientGone() from exc


def _decode(body: bytes, typ: type[_Body]) -> _Body:
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        raise from_validation_error(exc) from exc
    except RecursionError as exc:
        raise InvalidRequestError(
            "request body is nested too deeply to decode", code=ErrorCode.INVALID_JSON
        ) from exc
    except msgspec.DecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError(
                "request body is not valid UTF-8", code=ErrorCode.INVALID_UTF8
            ) from exc
        raise InvalidRequestError(
            f"request body is not valid JSON: {exc}", code=ErrorCode.INVALID_JSON
        ) from exc


def _validate(body: bytes, typ: type[_Body], engine: Engine, settings: ServiceSettings) -> _Plan:
    """Decode and check everything that needs no tokenizer; raise the API error otherwise."""
    req = _decode(body, typ)
    served = engine.info.model_name
    if req.model != served:
        raise ModelNotFoundError(
            f"model {req.model!r} is not served here; available: [{served!r}]", param="model"
        )
    if req.n != 1:
        raise InvalidRequestError("only n=1 is supported", param="n", code=ErrorCode.UNSUPPORTED_N)
    _refuse_unsupported(req)
    vocab = engine.info.vocab_size
    if req.top_k is not None and vocab > 0 and req.top_k > vocab:
        raise InvalidRequestError(
            f"top_k must be <= {vocab}, the model's vocabulary size", param="top_k"
        )
    if req.ignore_eos and not settings.allow_ignore_eos:
        raise InvalidRequestError("ignore_eos is disabled on this server", param="ignore_eos")
    if isinstance(req, schemas.ChatCompletionRequest):
        if len(req.messages) > settings.max_messages:
            raise InvalidRequestError(
                f"messages has {len(req.messages)} items; this server accepts at most "
                f"{settings.max_messages}",
                param="messages",
                code=ErrorCode.TOO_MANY_MESSAGES,
            )
        prompt, messages = "", _chat_messages(req.messages)
    elif req.echo:
        raise InvalidRequestError(
            "echo is not supported", param="echo", code=ErrorCode.UNSUPPORTED_ECHO
        )
    else:
        prompt, messages = (req.prompt[0] if isinstance(req.prompt, list) else req.prompt), ()
    return _Plan(
        model=served,
        options=_options(req),
        max_tokens=_max_tokens(req, settings),
        stop=_stop(req.stop),
        stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        prompt=prompt,
        messages=messages,
    )


def _refuse_unsupported(req: _Body) -> None:
    for name, defaults in schemas.UNSUPPORTED_PARAMETERS.items():
        value = getattr(req, name)
        # By JSON type as well as value: in Python 0 == False and 1 == True.
        if value is None or any(type(value) is type(d) and value == d for d in defaults):
            continue
        raise InvalidRequestError(
            f"unsupported parameter: {name}", param=name, code=ErrorCode.UNSUPPORTED_PARAMETER
        )


def _max_tokens(req: _Body, settings: ServiceSettings) -> int:
    param = "max_tokens" if req.max_completion_tokens is None else "max_completion_tokens"
    value = req.max_tokens if req.max_completion_tokens is None else req.max_completion_tokens
    if value is None:
        return settings.default_max_tokens
    if value > settings.max_tokens_cap:
        raise InvalidRequestError(
            f"{param}={value} exceeds this server's cap of {settings.max_tokens_cap}",
            param=param,
            code=ErrorCode.MAX_TOKENS_TOO_LARGE,
        )
    return value


def _options(req: _Body) -> SamplingOptions:
    temperature = 1.0 if req.temperature is None else req.temperature
    if temperature == 0.0:
        # Greedy: one bucket for every greedy request, whatever else it asked for.
        return SamplingOptions(temperature=0.0, top_k=1, top_p=1.0, ignore_eos=req.ignore_eos)
    return SamplingOptions(
        temperature=temperature,
        top_k=0 if req.top_k is None or req.top_k == -1 else req.top_k,
        top_p=1.0 if req.top_p is None else req.top_p,
        seed=req.seed,
        ignore_eos=req.ignore_eos,
    )


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    return tuple(s for s in stop if s)


def _chat_messages(messages: list[schemas.ChatMessage]) -> tuple[dict[str, str], ...]:
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if m.content is None:
            content = ""
        elif isinstance(m.content, str):
            content = m.content
        else:
            if any(part.get("type") != "text" or "text" not in part for part in m.content):
                raise InvalidRequestError(
                    "only text content parts are supported", param=f"messages[{i}].content"
                )
            content = "".join(part["text"] for part in m.content)
        out.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    if not any(m["content"].strip() for m in out):
        raise InvalidRequestError("messages contain no text", param="messages")
    return tuple(out)


# ------------------------------------------------------------------------------------- submit
async def _submit(
    st: ServiceState,
    engine: Engine,
    batcher: Batcher,
    obs: RequestObservation,
    endpoint: _Endpoint,
    plan: _Plan,
) -> Job:
    """Tokenize inside a reserved queue slot, off the event loop; check the context; queue it."""
    with batcher.admission(in_flight_at_drain=obs.arrival < (st.drain_started_at or obs.arrival)):
        ctx_len = engine.info.context_length
        _check_length_bound(engine, plan, ctx_len)
        loop = asyncio.get_running_loop()
        # Template rendering and tokenization take ~0.4 s per MiB: on the loop they would stall
        # every stream and health probe of this replica for that long.
        prompt, tokens = await loop.run_in_executor(st.tokenize_pool, _tokenize, engine, plan)
        if not tokens:
            raise InvalidRequestError("prompt has no tokens", param=plan.param)
        # 0 means the model did not declare its context; CTranslate2 then enforces it.
        if ctx_len > 0 and len(tokens) + plan.max_tokens > ctx_len:
            raise _too_long(f"prompt ({len(tokens)} tokens)", plan, ctx_len)
        obs.describe(
            operation=endpoint.operation,
            model=plan.model,
            max_tokens=plan.max_tokens,
            temperature=plan.options.temperature,
            prompt_tokens=len(tokens),
            prompt=prompt,
        )
        return batcher.submit(
            Job(
                request_id=obs.request_id,
                prompt_tokens=tokens,
                options=plan.options,
                max_tokens=plan.max_tokens,
                stop=plan.stop,
                arrival=obs.arrival,
                span_context=obs.span_context,
                trace_id=obs.trace_id,
            )
        )


def _check_length_bound(engine: Engine, plan: _Plan, ctx_len: int) -> None:
    """Reject a prompt that cannot fit without tokenizing it (a lower bound on its tokens)."""
    per_token = engine.codec.max_token_chars
    if ctx_len <= 0 or per_token <= 0:
        return
    chars = len(plan.prompt) + sum(len(m["content"]) for m in plan.messages)
    at_least = chars // per_token
    if at_least + plan.max_tokens > ctx_len:
        raise _too_long(f"prompt ({chars} characters, at least {at_least} tokens)", plan, ctx_len)


def _too_long(what: str, plan: _Plan, ctx_len: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"{what} plus max_tokens ({plan.max_tokens}) exceeds the model context of {ctx_len} tokens",
        param=plan.param,
        code=ErrorCode.CONTEXT_LENGTH_EXCEEDED,
    )


_PREFIX_CHARS_PER_TOKEN: Final = 16
"""A completion prompt longer than this many characters per context token is first checked
by tokenizing only that much of it: ordinary text runs 3-6 characters per token."""
_PREFIX_SLACK_TOKENS: Final = 16
"""Tokens the cut at the prefix's end may account for (the last word, split differently)."""


def _tokenize(engine: Engine, plan: _Plan) -> tuple[str, list[str]]:
    """Render the chat template (chat) and tokenize: on a worker thread.

    A huge completion prompt is refused from a prefix when that alone cannot fit, so an
    abusive client costs one context's worth of tokenization, not its whole body's.
    """
    codec = engine.codec
    ctx_len = engine.info.context_length
    head_chars = _PREFIX_CHARS_PER_TOKEN * (ctx_len + 1)
    if not plan.messages and ctx_len > 0 and len(plan.prompt) > head_chars:
        cut = plan.prompt.rfind(" ", 0, head_chars)
        head = codec.encode(plan.prompt[: cut if cut > 0 else head_chars])
        at_least = len(head) - _PREFIX_SLACK_TOKENS
        if at_least + plan.max_tokens > ctx_len:
            raise _too_long(
                f"prompt ({len(plan.prompt)} characters, at least {at_least} tokens)",
                plan,
                ctx_len,
            )
    if plan.messages:
        try:
            prompt = codec.render_chat(list(plan.messages))
        except ModelBuildError as exc:
            # The model's template rejected these messages (e.g. role order).
            raise InvalidRequestError(
                f"messages do not fit the model's chat template: {exc.detail}",
                param="messages",
            ) from exc
    else:
        prompt = plan.prompt
    return prompt, codec.encode(prompt)


# ------------------------------------------------------------------------------------ respond
async def _respond(
    request: Request[Any, Any, Any],
    batcher: Batcher,
    obs: RequestObservation,
    endpoint: _Endpoint,
    plan: _Plan,
    job: Job,
    headers: dict[str, str],
) -> Response[Any] | EventStream:
    rid = f"{endpoint.id_prefix}{random.getrandbits(128):032x}"
    if plan.stream:
        chunks = responses.StreamChunks(rid, int(time.time()), plan.model, chat=endpoint.chat)
        connection = connection_state(request.scope)
        return EventStream(
            _stream(batcher, obs, job, chunks, connection, include_usage=plan.include_usage),
            media_type="text/event-stream",
            headers={**headers, **responses.SSE_HEADERS},
        )
    return await _complete(request, batcher, obs, job, rid, plan.model, endpoint.chat, headers)


async def _stream(
    batcher: Batcher,
    obs: RequestObservation,
    job: Job,
    chunks: responses.StreamChunks,
    connection: ConnectionState | None,
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """Yield OpenAI SSE chunks; a client disconnect cancels this generator and aborts the job.

    The request is recorded when the stream ends: a success only once its last chunk went
    out on a live connection, so a stream its client never read to the end is not counted as
    one (``client_disconnected``, or ``write_timeout`` when the client stopped reading).
    """
    status = 200
    first = True
    started = False
    delivered = False
    try:
        if chunks.chat:
            yield chunks.role()
            first = False
        async for ev in job.events():
            if isinstance(ev, TextDelta):
                if not started:
                    obs.stream_started()
                    started = True
                if ev.text:
                    yield chunks.text(ev.text, first=first)
                    first = False
                continue
            status = responses.status_of(ev)
            yield chunks.closing(job, ev, include_usage=include_usage, first=first)
            # Resumed: the closing write was handed to the transport (a dead connection would
            # have swallowed it silently); delivered once the transport handed it to the
            # kernel, which a client that stopped reading prevents until the write timeout.
            delivered = connection is None or await connection.drained()
    finally:
        cut = (
            ErrorCode.WRITE_TIMEOUT
            if connection is not None and connection.write_timed_out
            else ErrorCode.CLIENT_DISCONNECTED
        )
        if job.result is None:
            batcher.abort(job, cut)
        if not delivered:
            status = responses.CLIENT_CLOSED_STATUS
        obs.finish(job, status, cut=None if delivered else cut, ended_at=time.perf_counter())


async def _abort_on_disconnect(request: Request[Any, Any, Any], batcher: Batcher, job: Job) -> None:
    """Non-streamed requests: free the job's slot as soon as the client hangs up."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            batcher.abort(job)
            return


async def _complete(
    request: Request[Any, Any, Any],
    batcher: Batcher,
    obs: RequestObservation,
    job: Job,
    rid: str,
    model: str,
    chat: bool,
    headers: dict[str, str],
) -> Response[Any]:
    watcher = asyncio.create_task(_abort_on_disconnect(request, batcher, job))
    status = 200
    try:
        fin: Finished | None = None
        async for ev in job.events():
            if isinstance(ev, Finished):
                fin = ev
        assert fin is not None
        status = responses.status_of(fin)
        if not fin.outcome.succeeded:
            exc = responses.failure(fin)
            exc.headers = {**exc.headers, **headers}
            raise exc
        body = responses.completion_response(rid, int(time.time()), model, job, fin, chat=chat)
        return Response(body, headers=headers, status_code=200)
    except asyncio.CancelledError:
        status = responses.CLIENT_CLOSED_STATUS
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        if job.result is None:
            batcher.abort(job)
            status = responses.CLIENT_CLOSED_STATUS
        obs.finish(job, status)


@post(
    _COMPLETIONS.route,
    operation_class=body_operation(schemas.CompletionRequest),
    summary="Create a text completion (OpenAI-compatible)",
    tags=["openai"],
    status_code=200,
)
async def completions(
    request: Request[Any, Any, Any], svc: NamedDependency[ServiceState]
) -> Response[Any] | EventStream:
    """Generate text for one prompt, streamed as SSE when ``stream`` is true."""
    return await _handle(request, svc, _COMPLETIONS)


@post(
    _CHAT.route,
    operation_class=body_operation(schemas.ChatCompletionRequest),
    summary="Create a chat completion (OpenAI-compatible)",
    tags=["openai"],
    status_code=200,
)
async def chat_completions(
    request: Request[Any, Any, Any], svc: NamedDependency[ServiceState]
) -> Response[Any] | EventStream:
    """Apply the model's chat template and generate the assistant's reply."""
    return await _handle(request, svc, _CHAT)
