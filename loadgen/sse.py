"""Tolerant reading of OpenAI-compatible token streams: SSE framing, typed chunks, one tally.

The harness measures other servers too (vLLM, llama.cpp, TGI, SGLang), so this reads a subset
of the OpenAI chunk shape and tolerates what those servers do differently: extra fields
(ignored), ``null`` content, role-only first chunks, ``usage: null`` or no ``usage`` key, usage
in a final chunk with no choices, ``delta.reasoning_content`` or ``delta.reasoning``, ``data:``
without the space, CRLF line ends, ``:`` keep-alive comments, and errors as ``{"error": {...}}``,
``{"error": "..."}`` (TGI), ``{"message": ...}`` or an ``error:`` SSE field (llama.cpp). It is
not :mod:`service.schemas`: those types say what tokenbooth sends, these what a client accepts.

No Locust import: the sweep's users (:mod:`loadgen.users`) feed the bytes, tests feed samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import msgspec

__all__ = [
    "ChunkChoice",
    "Delta",
    "ErrorBody",
    "ErrorDetail",
    "SSEParser",
    "StreamChunk",
    "StreamTally",
    "Usage",
    "error_message",
]

# gc=False: these structs never form reference cycles, and one is made per streamed token.


class Delta(msgspec.Struct, gc=False):
    """The chat ``delta`` of a chunk: text, reasoning text, role.

    Reasoning text comes as ``reasoning_content`` (SGLang, llama.cpp, vLLM before early 2026)
    or ``reasoning`` (newer vLLM).
    """

    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    role: str | None = None


class ChunkChoice(msgspec.Struct, gc=False):
    """One choice of a chunk: ``delta`` for chat, ``text`` for completions."""

    delta: Delta | None = None
    text: str | None = None
    finish_reason: str | None = None


class Usage(msgspec.Struct, gc=False):
    """Token counts as the server reports them; a missing or ``null`` count reads as 0."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ErrorDetail(msgspec.Struct, gc=False):
    """An OpenAI-style error object."""

    message: str | None = None
    type: str | None = None


class ErrorBody(msgspec.Struct, gc=False):
    """An error body: ``{"error": {...}}``, ``{"error": "..."}`` or a bare ``{"message": ...}``."""

    error: ErrorDetail | str | None = None
    message: str | None = None

    def describe(self) -> str | None:
        """The error's message, or None when the body carries none."""
        if isinstance(self.error, str):
            return self.error
        if self.error is not None:
            return self.error.message or self.error.type or self.message
        return self.message


class StreamChunk(msgspec.Struct, gc=False):
    """One ``data:`` payload of a stream: choices, usage, or an error."""

    choices: list[ChunkChoice] | None = None
    usage: Usage | None = None
    error: ErrorDetail | str | None = None

    def text(self, chat: bool) -> str | None:
        """The generated text this chunk carries, reasoning text included, or None."""
        if not self.choices:
            return None
        choice = self.choices[0]
        if not chat:
            return choice.text
        delta = choice.delta
        if delta is None:
            return None
        # Reasoning tokens are generated tokens: the server counts them in usage, and each one
        # arrives after a decode step like any other, so they are timed like content.
        return delta.content or delta.reasoning_content or delta.reasoning


# Built once: a typed decoder is as cheap per chunk as decoding into a dict, or cheaper.
# strict=False: token counts sent as 5.0 or "5" still read as numbers.
_chunk_decoder: Final = msgspec.json.Decoder(StreamChunk, strict=False)
_error_decoder: Final = msgspec.json.Decoder(ErrorBody)

_DONE: Final = b"[DONE]"


def error_message(body: bytes) -> str | None:
    """The message of a JSON error body, or None when it is not one this can read."""
    try:
        return _error_decoder.decode(body).describe()
    except msgspec.DecodeError:
        return None


class SSEParser:
    """Incremental Server-Sent Events framing: bytes as they arrive in, complete events out.

    Follows the WHATWG event-stream rules that matter for token streams: LF, CRLF or CR line
    ends, ``field:value`` with an optional space, multi-line ``data``, ``:`` comments, an event
    dispatched at a blank line and an unterminated last event dropped.
    """

    __slots__ = ("_data", "_event", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._event = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        """Consume ``chunk`` and return the events it completed as ``(event name, data)``."""
        buf = self._pending + chunk
        if b"\r" in buf:
            # A CR at the end may be the first half of a CRLF split across reads.
            held = b"\r" if buf.endswith(b"\r") else b""
            buf = buf[: len(buf) - len(held)].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            held = b""
        lines = buf.split(b"\n")
        self._pending = lines.pop() + held
        events: list[tuple[bytes, bytes]] = []
        for line in lines:
            if not line:
                if self._data:
                    data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                    events.append((self._event or b"message", data))
                self._event = b""
                self._data = []
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value
            elif name == b"error":
                # llama.cpp sends a failure as an `error: {...}` field rather than as an event.
                self._event = b"error"
                self._data.append(value)
            # Empty names are comments (keep-alives); id, retry and unknown fields do not matter.
        return events


@dataclass
class StreamTally:
    """What one streamed response said: when each token arrived, how it ended, its usage.

    ``feed`` takes bytes as they arrive with the time they arrived; a token is a chunk with
    non-empty text. The last ``usage`` with a count wins (servers that report usage on every
    chunk send the running total), and so does the last ``finish_reason``.
    """

    chat: bool
    token_times: list[float] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str = ""
    error: str = ""
    _parser: SSEParser = field(default_factory=SSEParser, repr=False)

    def feed(self, data: bytes, now: float) -> None:
        """Account for the bytes ``data``, read at ``now`` (``time.perf_counter``)."""
        for event, payload in self._parser.feed(data):
            if payload == _DONE:
                continue
            if event == b"error":
                self.error = error_message(payload) or payload.decode(errors="replace")[:300]
                continue
            try:
                chunk = _chunk_decoder.decode(payload)
            except msgspec.DecodeError as exc:  # ValidationError too: a shape we cannot read
                self.error = f"malformed stream chunk: {exc}: {payload[:200]!r}"
                continue
            self._chunk(chunk, now)

    def _chunk(self, chunk: StreamChunk, now: float) -> None:
        if chunk.error is not None:
            self.error = ErrorBody(error=chunk.error).describe() or "error chunk without a message"
            return
        if chunk.text(self.chat):
            self.token_times.append(now)
        if chunk.choices and chunk.choices[0].finish_reason:
            self.finish_reason = chunk.choices[0].finish_reason
        usage = chunk.usage
        # `{}` is no report; zeros are.
        if usage is not None and (usage.prompt_tokens, usage.completion_tokens) != (None, None):
            self.usage = usage
