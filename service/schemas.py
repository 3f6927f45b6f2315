"""OpenAI wire types (msgspec Structs): the ONE source of request and response shapes.

``loadgen`` imports these to build requests and parse responses, so a field renamed here is
renamed everywhere.

Request fields fall in three groups. Implemented: the typed fields below, plus the vLLM
extensions ``top_k`` and ``ignore_eos``. Known to OpenAI but not implemented
(:data:`UNSUPPORTED_PARAMETERS`: logprobs, tools, penalties, ...): declared so the OpenAPI schema
shows them, and answered with 400 ``unsupported parameter: <name>`` unless absent, ``null`` or
the OpenAI default (``logprobs: false``, ``presence_penalty: 0``, ``tools: []``, ...), which
asks for nothing we do not do. Anything else (``metadata``, ``store``, ``service_tier``,
``parallel_tool_calls``, other servers' extensions) changes nothing we return and is ignored.

Range and set checks live on the fields as ``msgspec.Meta`` constraints (and so in the OpenAPI
schema); decoding enforces them, and :func:`service.errors.from_validation_error` words the
failures for clients. Checks that depend on the server's settings or the model (the
``max_tokens`` cap, the context length, ``ignore_eos``) stay in the route.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

import msgspec

__all__ = [
    "TOP_P_MIN",
    "UNSUPPORTED_PARAMETERS",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionChunkChoice",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
    "ChatRole",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionRequest",
    "CompletionResponse",
    "DeltaMessage",
    "ErrorBody",
    "ErrorResponse",
    "FinishReason",
    "HealthStatus",
    "ModelCard",
    "ModelList",
    "StreamOptions",
    "Usage",
]

FinishReason = Literal["stop", "length"]
ChatRole = Literal["system", "user", "assistant", "developer", "tool"]

_TokenCount = Annotated[int, msgspec.Meta(ge=1)]
_NonEmptyText = Annotated[str, msgspec.Meta(min_length=1)]

# The top token always has probability >= 1/vocab, so any top_p at or below that keeps the top
# token alone: 1e-6 loses nothing for vocabularies under a million, and keeps far from float32
# underflow (1e-60 is 0 as float32, which CTranslate2 refuses, failing the whole batch).
TOP_P_MIN: Final = 1e-6

# OpenAI parameters that are not implemented, with the values that ask for nothing (the OpenAI
# defaults); ``null`` is accepted too. Values compare by JSON type: ``logprobs: 0`` is not false.
UNSUPPORTED_PARAMETERS: Final[Mapping[str, tuple[object, ...]]] = MappingProxyType(
    {
        "logprobs": (False,),
        "top_logprobs": (0,),
        "best_of": (1,),
        "suffix": ("",),
        "presence_penalty": (0, 0.0),
        "frequency_penalty": (0, 0.0),
        "logit_bias": ({},),
        "response_format": ({"type": "text"},),
        "tools": ([],),
        "tool_choice": ("none",),
        "functions": ([],),
        "function_call": ("none",),
    }
)


_Unsupported = Annotated[
    Any, msgspec.Meta(description="not supported: 400 unless null or the OpenAI default")
]


class StreamOptions(msgspec.Struct, kw_only=True):
    """``stream_options``: ask for a final chunk carrying ``usage``."""

    include_usage: bool = False


class _SamplingFields(msgspec.Struct, kw_only=True):
    """Fields shared by completions and chat completions."""

    model: str
    max_tokens: _TokenCount | None = None
    # Newer OpenAI clients send max_completion_tokens for chat; accept both.
    max_completion_tokens: _TokenCount | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=TOP_P_MIN, le=1.0)] | None = None
    # The upper bound is the model's vocabulary size, checked by the route.
    top_k: (
        Annotated[
            int, msgspec.Meta(ge=-1, description="0 or -1: no limit; at most the vocabulary size")
        ]
        | None
    ) = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, lt=2**32)] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM extension: keep generating past EOS (fixed-length benchmarks); needs the server setting.
    ignore_eos: bool = False
    # UNSUPPORTED_PARAMETERS, declared for the schema; the route refuses any other value.
    logprobs: _Unsupported = None
    top_logprobs: _Unsupported = None
    best_of: _Unsupported = None
    suffix: _Unsupported = None
    presence_penalty: _Unsupported = None
    frequency_penalty: _Unsupported = None
    logit_bias: _Unsupported = None
    response_format: _Unsupported = None
    tools: _Unsupported = None
    tool_choice: _Unsupported = None
    functions: _Unsupported = None
    function_call: _Unsupported = None


class CompletionRequest(_SamplingFields, kw_only=True):
    """``POST /v1/completions`` body; a list prompt must hold exactly one prompt."""

    prompt: _NonEmptyText | Annotated[list[_NonEmptyText], msgspec.Meta(min_length=1, max_length=1)]
    echo: bool = False


class ChatMessage(msgspec.Struct, kw_only=True):
    """One chat message; ``content`` may be a string or OpenAI's list of text parts."""

    role: ChatRole
    content: str | list[dict[str, str]] | None = None
    name: str | None = None


class ChatCompletionRequest(_SamplingFields, kw_only=True):
    """``POST /v1/chat/completions`` body."""

    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]


class Usage(msgspec.Struct, kw_only=True):
    """Real token counts of a request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(msgspec.Struct, kw_only=True):
    """One choice of a non-streamed or streamed text completion."""

    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class CompletionResponse(msgspec.Struct, kw_only=True):
    """Non-streamed text completion."""

    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    object: str = "text_completion"
    system_fingerprint: str | None = None


class CompletionChunk(msgspec.Struct, kw_only=True):
    """One SSE chunk of a streamed text completion."""

    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    object: str = "text_completion"


class DeltaMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Incremental chat message content."""

    role: str | None = None
    content: str | None = None


class ChatCompletionChoice(msgspec.Struct, kw_only=True):
    """One choice of a non-streamed chat completion."""

    index: int
    message: ChatMessage
    finish_reason: FinishReason | None
    logprobs: None = None


class ChatCompletionResponse(msgspec.Struct, kw_only=True):
    """Non-streamed chat completion."""

    id: str
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    object: str = "chat.completion"
    system_fingerprint: str | None = None


class ChatCompletionChunkChoice(msgspec.Struct, kw_only=True):
    """One choice of a streamed chat completion chunk."""

    index: int
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    """One SSE chunk of a streamed chat completion."""

    id: str
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: Usage | None = None
    object: str = "chat.completion.chunk"


class ModelCard(msgspec.Struct, kw_only=True):
    """A served model in ``GET /v1/models``, with tokenbooth's serving metadata."""

    id: str
    created: int
    owned_by: str = "tokenbooth"
    object: str = "model"
    root: str | None = None
    max_model_len: int | None = None
    # tokenbooth extensions: where and how the model runs.
    revision: str | None = None
    quantization: str | None = None
    device: str | None = None
    compute_type: str | None = None
    engine: str | None = None


class ModelList(msgspec.Struct, kw_only=True):
    """``GET /v1/models`` response."""

    data: list[ModelCard]
    object: str = "list"


class ErrorBody(msgspec.Struct, kw_only=True):
    """OpenAI error object."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(msgspec.Struct, kw_only=True):
    """OpenAI error envelope ``{"error": {...}}``."""

    error: ErrorBody


class HealthStatus(msgspec.Struct, kw_only=True):
    """Body of the health endpoints."""

    status: Literal["ok", "loading", "draining", "failed"]
    detail: str | None = None
