"""OpenAI wire types (msgspec Structs): the ONE source of request and response shapes.

``loadgen`` imports these to build requests and parse responses, so a field renamed here is
renamed everywhere. Unknown request fields are ignored, as OpenAI's own API does.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionChunkChoice",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
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


class StreamOptions(msgspec.Struct, kw_only=True):
    """``stream_options``: ask for a final chunk carrying ``usage``."""

    include_usage: bool = False


class _SamplingFields(msgspec.Struct, kw_only=True):
    """Fields shared by completions and chat completions."""

    model: str
    max_tokens: int | None = None
    # Newer OpenAI clients send max_completion_tokens for chat; accept both.
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM extension: keep generating past EOS (fixed-length benchmarks); needs the server setting.
    ignore_eos: bool = False


class CompletionRequest(_SamplingFields, kw_only=True):
    """``POST /v1/completions`` body."""

    prompt: str | list[str]
    echo: bool = False


class ChatMessage(msgspec.Struct, kw_only=True):
    """One chat message; ``content`` may be a string or OpenAI's list of text parts."""

    role: str
    content: str | list[dict[str, str]] | None = None
    name: str | None = None


class ChatCompletionRequest(_SamplingFields, kw_only=True):
    """``POST /v1/chat/completions`` body."""

    messages: list[ChatMessage]


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
