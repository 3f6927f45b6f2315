"""Tolerant reading of OpenAI-compatible token streams: SSE framing, typed chunks, one tally.

The harness measures other servers too (vLLM, llama.cpp, TGI, SGLang), so this reads a subset
of the OpenAI chunk shape and tolerates what those servers do differently: extra fields
(ignored), ``null`` content, role-only first chunks, ``usage: null`` or no ``usage`` key, usage
in a final chunk with no choices, ``delta.reasoning_content`` or ``delta.reasoning``,
``delta.tool_calls``, ``finish_reason`` on a chunk of its own, ``data:`` without the space, LF,
CRLF or CR line ends, ``:`` keep-alive comments, and errors as ``{"error": {...}}``,
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
    "FunctionDelta",
    "SSEParser",
    "StreamChunk",
    "StreamTally",
    "ToolCallDelta",
    "Usage",
    "error_message",
]

# The cost per chunk matters: one chunk arrives per generated token, and time a load generator
# spends on each is time its own CPU adds to every measured gap. So: one typed decode per event,
# no dict walking. gc=False: these structs never form reference cycles, and one is made per
# streamed token.


class FunctionDelta(msgspec.Struct, gc=False):
    """A piece of a streamed function call: its name (first piece) or a fragment of arguments."""

    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct, gc=False):
    """One entry of ``delta.tool_calls``; ``id``, ``type`` and ``index`` do not matter here."""

    function: FunctionDelta | None = None


class Delta(msgspec.Struct, gc=False):
    """The chat ``delta`` of a chunk: text, reasoning text, tool calls, role.

    Reasoning text comes as ``reasoning_content`` (SGLang, llama.cpp, vLLM before early 2026)
    or ``reasoning`` (newer vLLM).
    """

    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    role: str | None = None

    def generates(self) -> bool:
        """Whether this delta carries generated tokens other than content.

        Reasoning text and tool calls are generated tokens: the server counts them in usage,
        and each arrives after a decode step like content does, so they are timed like it. A
        tool call's name and its argument fragments both come out of the model.
        """
        if self.reasoning_content or self.reasoning:
            return True
        if self.tool_calls:
            for call in self.tool_calls:
                fn = call.function
                if fn is not None and (fn.arguments or fn.name):
                    return True
        return False


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


# Built once: a typed decoder is as cheap per chunk as decoding into a dict, or cheaper.
# strict=False: token counts sent as 5.0 or "5" still read as numbers.
_chunk_decoder: Final = msgspec.json.Decoder(StreamChunk, strict=False)
_error_decoder: Final = msgspec.json.Decoder(ErrorBody)

_DONE: Final = b"[DONE]"
_BOM: Final = b"\xef\xbb\xbf"


def error_message(body: bytes) -> str | None:
    """The message of a JSON error body, or None when it is not one this can read."""
    try:
        return _error_decoder.decode(body).describe()
    except msgspec.DecodeError:
        return None


class SSEParser:
    """Incremental Server-Sent Events framing: bytes as they arrive in, complete events out.

    Follows the WHATWG event-stream rules (HTML Living Standard, "Interpreting an event
    stream"): one leading UTF-8 BOM dropped; LF, CRLF or CR line ends; ``field:value`` with one
    optional space after the colon, a line without a colon a field with an empty value; lines
    starting with ``:`` are comments (keep-alives); ``data`` lines joined with LF; an event
    dispatched at a blank line when it has data, its type ``message`` unless ``event`` named
    one; an unterminated last event dropped. ``id`` and ``retry`` only matter to a client that
    reconnects, and a load generator never does (a resumed stream would be another request), so
    they are read and ignored. ``error`` is llama.cpp's field for a failure, read as an event.

    A CR ending a read is taken as a line end at once, so an event whose blank line is a
    CRLF split across reads is dispatched with the read that brought it, not one read late; an
    LF opening the next read is then the rest of that CRLF and skipped.
    """

    __slots__ = ("_after_cr", "_data", "_event", "_head", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._event = b""
        self._data: list[bytes] = []
        self._after_cr = False
        # The stream's first bytes while they may still be a BOM; None once past the start.
        self._head: bytes | None = b""

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        """Consume ``chunk`` and return the events it completed as ``(event name, data)``."""
        if not chunk:
            return []  # and a CR that ended the last read still waits for its LF
        if self._head is not None:
            chunk = self._head + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._head = chunk
                return []
            self._head = None
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if self._after_cr:
            self._after_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._after_cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        # _pending never holds a CR: line ends are normalised before text waits there.
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        events: list[tuple[bytes, bytes]] = []
        for line in lines:
            if not line:
                if self._data:
                    data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                    events.append((self._event or b"message", data))
                    self._data = []
                self._event = b""
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value
            elif name == b"error":
                self._event = b"error"
                self._data.append(value)
            # An empty name is a comment; id, retry and unknown fields do not matter here.
        return events


@dataclass
class StreamTally:
    """What one streamed response said: when each token arrived, how it ended, its usage.

    ``feed`` takes bytes as they arrive with the time they arrived. ``token_times`` holds one
    time per chunk that carried generated tokens of any kind (content, reasoning text, tool
    calls), ``first_content_at`` the time of the first that carried content (completion text
    for the completions API). The last ``usage`` with a count wins (servers that report usage
    on every chunk send the running total), and so does the last ``finish_reason``. With
    ``keep_text`` it also keeps the content text (a session's next turn sends the reply back).
    """

    chat: bool
    token_times: list[float] = field(default_factory=list)
    first_content_at: float | None = None
    usage: Usage | None = None
    finish_reason: str = ""
    error: str = ""
    keep_text: bool = False
    _parser: SSEParser = field(default_factory=SSEParser, repr=False)
    _text: list[str] = field(default_factory=list, repr=False)

    @property
    def text(self) -> str:
        """The content text streamed so far (empty unless ``keep_text``)."""
        return "".join(self._text)

    def feed(self, data: bytes, now: float) -> None:
        """Account for the bytes ``data``, read at ``now`` (``time.perf_counter``)."""
        for event, payload in self._parser.feed(data):
            if payload == _DONE:
                continue
            if event == b"error":
                self.error = error_message(payload) or payload.decode(errors="replace")[:300]
                continue
            if not payload or payload.isspace():
                continue  # an empty data event: a keep-alive, nothing to decode
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
        if chunk.choices:
            choice = chunk.choices[0]
            if self.chat:
                delta = choice.delta
                if delta is not None:
                    if delta.content:
                        self._content(now)
                        if self.keep_text:
                            self._text.append(delta.content)
                    elif delta.generates():
                        self.token_times.append(now)
            elif choice.text:
                self._content(now)
                if self.keep_text:
                    self._text.append(choice.text)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        usage = chunk.usage
        # `{}` is no report; zeros are.
        if usage is not None and (usage.prompt_tokens, usage.completion_tokens) != (None, None):
            self.usage = usage

    def _content(self, now: float) -> None:
        self.token_times.append(now)
        if self.first_content_at is None:
            self.first_content_at = now
