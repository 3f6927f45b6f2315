"""Response builders: SSE chunks, non-streamed bodies, usage, and OpenAI-style error bodies.

Pure functions of a finished (or finishing) :class:`~service.job.Job`: the route decides when
to send, these decide what. SSE events are encoded to bytes here, once per event, because the
streaming path runs once per token.
"""

from __future__ import annotations

from typing import Final

import msgspec

from service import schemas
from service.errors import (
    APIError,
    DrainingError,
    ErrorCode,
    RequestTimeoutError,
    ServerError,
)
from service.job import Finished, Job, Outcome

__all__ = [
    "CLIENT_CLOSED_STATUS",
    "DONE_EVENT",
    "SSE_HEADERS",
    "StreamChunks",
    "completion_response",
    "error_body",
    "error_json",
    "failure",
    "finish_reason",
    "status_of",
    "usage",
]

CLIENT_CLOSED_STATUS: Final = 499
"""Status logged for a request whose client went away (nginx's "client closed request")."""
DONE_EVENT: Final = b"data: [DONE]\n\n"
"""The SSE event that ends every OpenAI stream."""
SSE_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Headers of every streamed response: no caching, no proxy buffering."""


def _event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def usage(job: Job) -> schemas.Usage:
    """The real token counts of ``job``."""
    return schemas.Usage(
        prompt_tokens=job.prompt_len,
        completion_tokens=job.completion_tokens,
        total_tokens=job.prompt_len + job.completion_tokens,
    )


def finish_reason(outcome: Outcome) -> schemas.FinishReason:
    """OpenAI's ``finish_reason`` of a request that ended naturally."""
    return "length" if outcome is Outcome.LENGTH else "stop"


def failure(fin: Finished) -> APIError:
    """The API error a request that ended in ``fin`` (not a stop or the length) answers with."""
    detail = fin.detail or fin.outcome.value
    if fin.outcome is Outcome.TIMEOUT:
        return RequestTimeoutError(detail, code=fin.error_type)
    if fin.outcome is Outcome.ABORTED:
        # A disconnected client never reads this; a shutdown is a real 503 for the caller.
        return DrainingError(detail, code=fin.error_type)
    return ServerError(detail, code=fin.error_type)


def status_of(fin: Finished) -> int:
    """The HTTP status a request that ended in ``fin`` is logged with."""
    if fin.outcome.succeeded:
        return 200
    if fin.error_type is ErrorCode.CLIENT_DISCONNECTED:
        return CLIENT_CLOSED_STATUS
    return failure(fin).status_code


def error_body(exc: APIError) -> bytes:
    """``{"error": {message, type, param, code}}`` of ``exc``, JSON-encoded."""
    return error_json(exc.detail, exc.error_type, exc.param, exc.code)


def error_json(message: str, error_type: str, param: str | None, code: str | None) -> bytes:
    """An OpenAI error envelope from its four fields, JSON-encoded."""
    body = schemas.ErrorBody(message=message, type=error_type, param=param, code=code)
    return msgspec.json.encode(schemas.ErrorResponse(error=body))


class StreamChunks:
    """The SSE events of one streamed completion or chat completion."""

    __slots__ = ("chat", "created", "model", "rid")

    def __init__(self, rid: str, created: int, model: str, *, chat: bool) -> None:
        self.rid = rid
        self.created = created
        self.model = model
        self.chat = chat

    def role(self) -> bytes:
        """The opening chat chunk: OpenAI sends the role before any content."""
        return self._chunk("", None, first=True)

    def text(self, text: str, *, first: bool) -> bytes:
        """One chunk of generated text (``first`` carries the role on chat streams)."""
        return self._chunk(text, None, first=first)

    def closing(self, job: Job, fin: Finished, *, include_usage: bool, first: bool) -> bytes:
        """Everything after the last text, ``[DONE]`` included, as one write.

        One write: the client learns the stream ended (and sends its next request) one round
        of writes sooner.
        """
        if not fin.outcome.succeeded:
            return _event(error_body(failure(fin))) + DONE_EVENT
        tail = self._chunk(None if self.chat else "", finish_reason(fin.outcome), first=first)
        if include_usage:
            tail += self._usage(job)
        return tail + DONE_EVENT

    def _usage(self, job: Job) -> bytes:
        obj: schemas.ChatCompletionChunk | schemas.CompletionChunk
        if self.chat:
            obj = schemas.ChatCompletionChunk(
                id=self.rid, created=self.created, model=self.model, choices=[], usage=usage(job)
            )
        else:
            obj = schemas.CompletionChunk(
                id=self.rid, created=self.created, model=self.model, choices=[], usage=usage(job)
            )
        return _event(msgspec.json.encode(obj))

    def _chunk(
        self, text: str | None, finish: schemas.FinishReason | None, *, first: bool
    ) -> bytes:
        obj: schemas.ChatCompletionChunk | schemas.CompletionChunk
        if self.chat:
            delta = schemas.DeltaMessage(role="assistant" if first else None, content=text)
            choice = schemas.ChatCompletionChunkChoice(index=0, delta=delta, finish_reason=finish)
            obj = schemas.ChatCompletionChunk(
                id=self.rid, created=self.created, model=self.model, choices=[choice]
            )
        else:
            completion = schemas.CompletionChoice(index=0, text=text or "", finish_reason=finish)
            obj = schemas.CompletionChunk(
                id=self.rid, created=self.created, model=self.model, choices=[completion]
            )
        return _event(msgspec.json.encode(obj))


def completion_response(
    rid: str, created: int, model: str, job: Job, fin: Finished, *, chat: bool
) -> schemas.ChatCompletionResponse | schemas.CompletionResponse:
    """The non-streamed body of a request that ended naturally."""
    reason = finish_reason(fin.outcome)
    if chat:
        message = schemas.ChatMessage(role="assistant", content=job.text)
        return schemas.ChatCompletionResponse(
            id=rid,
            created=created,
            model=model,
            choices=[schemas.ChatCompletionChoice(index=0, message=message, finish_reason=reason)],
            usage=usage(job),
        )
    return schemas.CompletionResponse(
        id=rid,
        created=created,
        model=model,
        choices=[schemas.CompletionChoice(index=0, text=job.text, finish_reason=reason)],
        usage=usage(job),
    )
