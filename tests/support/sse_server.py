"""A tiny HTTP/1.1 server that streams scripted SSE bytes, to test the load generator's client.

A response is a :class:`Script`: writes, each after a pause, each sent as one HTTP chunk with
Nagle off, so a test knows which bytes each read of the client brings and when. What the server
does with the connection around a response is a separate :class:`Conn` choice: keep it alive,
close it after saying so, close it silently, or close it without a byte of response when the
next request arrives on it (the race a client loses against a server that closes idle keep-alive
connections). The request path picks both: ``/{case}/{script}/{conn}/v1/...``; the server logs
what it did per case. Loopback only, and every connection has a read timeout.

The chunk shapes follow what the servers stream (sources named beside each builder).
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, Final

__all__ = [
    "DROP_DELAY_S",
    "FIRST_S",
    "GAP_S",
    "SCRIPTS",
    "THINK_S",
    "Conn",
    "SSEServer",
    "Script",
    "Write",
]

FIRST_S: Final = 0.05
"""Pause between the role chunk and the first generated token of a timed script."""
GAP_S: Final = 0.2
"""Pause between two generated tokens of a timed script."""
THINK_S: Final = 0.3
"""Pause between the last reasoning token and the first content token of ``reasoning``."""
DROP_DELAY_S: Final = 0.3
"""How long a request the server drops waits before its connection closes."""
USAGE: Final = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


@dataclass(frozen=True)
class Write:
    """Bytes the server writes as one HTTP chunk, after a pause."""

    data: bytes
    pause_s: float = 0.0


Script = tuple[Write, ...]


class Conn(StrEnum):
    """What the server does with a connection around a response."""

    KEEP = "keep"  # keep-alive, as HTTP/1.1 means by default
    CLOSE = "close"  # answer with "Connection: close", then close
    CLOSE_SILENT = "close-silent"  # close after the response without saying so
    DROP_REUSED = "drop-reused"  # answer a connection's first request; at its next, close (FIN)
    RESET_REUSED = "reset-reused"  # the same, closing with a reset (RST)
    ANSWER_ONCE = "answer-once"  # answer the case's first request; close at every later one
    DROP_ALL = "drop-all"  # close at every request without a byte of response


# ------------------------------------------------------------------------------ chunk shapes


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    """A chat completion chunk as vLLM streams it (``usage: null`` on every chunk)."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1730000000,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


def usage_chunk(completion_tokens: int = 3) -> dict[str, Any]:
    """vLLM's last chunk with ``stream_options.include_usage``: usage and no choices."""
    usage = {**USAGE, "completion_tokens": completion_tokens}
    usage["total_tokens"] = usage["prompt_tokens"] + completion_tokens
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage}


def text_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    """A /v1/completions chunk (vLLM: ``text`` choices with ``stop_reason``)."""
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "choices": [{**choice, "stop_reason": None}],
    }


def tool_call(function: dict[str, str], *, first: bool = False) -> dict[str, Any]:
    """A ``delta.tool_calls`` entry as vLLM's tool parsers stream it.

    The first piece of a call carries ``id``, ``type`` and the function's name (vLLM dumps it
    with ``exclude_none``, so no ``arguments`` key); later pieces carry argument fragments
    (vllm-project/vllm ``vllm/entrypoints/openai/tool_parsers/``, e.g. the Hermes parser).
    """
    call: dict[str, Any] = {"index": 0, "function": function}
    if first:
        call.update(id="chatcmpl-tool-1", type="function")
    return call


# ------------------------------------------------------------------------------ scripts


def _data(payload: dict[str, Any] | str, eol: bytes) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return b"data: " + text.encode() + eol + eol


def _timed(events: Iterable[tuple[dict[str, Any] | str, float]], eol: bytes = b"\n") -> Script:
    return tuple(Write(_data(p, eol), pause) for p, pause in events)


# role-only first chunk, three tokens, finish_reason on a chunk of its own, usage-only last.
_CHAT: Final[tuple[tuple[dict[str, Any] | str, float], ...]] = (
    (chat_chunk({"role": "assistant", "content": ""}), 0.0),
    (chat_chunk({"content": "Hel"}), FIRST_S),
    (chat_chunk({"content": "lo"}), GAP_S),
    (chat_chunk({"content": "!"}), GAP_S),
    (chat_chunk({}, "stop"), 0.0),
    (usage_chunk(), 0.0),
    ("[DONE]", 0.0),
)


def _crlf_split() -> Script:
    """CRLF line ends, each read ending in the CR of an event's blank line, the LF next."""
    writes = _timed(_CHAT, b"\r\n")
    out = [
        Write(w.data[:-1] if i == 0 else b"\n" + w.data[:-1], w.pause_s)
        for i, w in enumerate(writes)
    ]
    return (*out, Write(b"\n"))


def _comments() -> Script:
    """Keep-alive comments before the first token and between tokens, event/id/retry fields.

    Comment lines are the spec's keep-alive; ``: keepalive`` during a long prefill is what was
    proposed for llama.cpp's server (ggml-org/llama.cpp pull 23994, ``--sse-keepalive-interval``).
    """
    out: list[Write] = [Write(b": keepalive\n\n"), Write(b"retry: 3000\n\n")]
    for i, w in enumerate(_timed(_CHAT)):
        out.append(
            Write(
                b"event: message\nid: "
                + str(i).encode()
                + b"\n: a comment inside an event\n"
                + w.data,
                w.pause_s,
            )
        )
        out.append(Write(b":\n\n"))
    return tuple(out)


def _multiline() -> Script:
    """Each JSON payload spread over several ``data:`` lines, each event split mid-line."""
    out: list[Write] = []
    for payload, pause in _CHAT:
        text = payload if isinstance(payload, str) else json.dumps(payload, indent=1)
        data = b"".join(b"data: " + line.encode() + b"\n" for line in text.split("\n")) + b"\n"
        half = len(data) // 2
        out += [Write(data[:half], pause), Write(data[half:])]
    return tuple(out)


def _reasoning() -> Script:
    """Two reasoning tokens, THINK_S of silence, two content tokens (SGLang's delta shape)."""

    def delta(content: str | None, reasoning: str | None) -> dict[str, Any]:
        d = {"role": None, "content": content, "reasoning_content": reasoning, "tool_calls": None}
        return chat_chunk(d)

    return _timed(
        (
            (chat_chunk({"role": "assistant", "content": None, "reasoning_content": None}), 0.0),
            (delta(None, "Let"), FIRST_S),
            (delta(None, " me"), 0.0),
            (delta("Yes", None), THINK_S),
            (delta(".", None), 0.0),
            (chat_chunk({"role": None, "content": None, "reasoning_content": None}, "stop"), 0.0),
            (usage_chunk(4), 0.0),
            ("[DONE]", 0.0),
        )
    )


def _tools() -> Script:
    """A tool call: the name, three argument fragments, ``finish_reason: tool_calls``."""
    args = ('{"city": "', "Paris", '"}')
    return _timed(
        (
            (chat_chunk({"role": "assistant", "content": ""}), 0.0),
            (chat_chunk({"tool_calls": [tool_call({"name": "get_weather"}, first=True)]}), FIRST_S),
            *((chat_chunk({"tool_calls": [tool_call({"arguments": a})]}), GAP_S) for a in args),
            (chat_chunk({"tool_calls": [tool_call({"arguments": ""})]}), 0.0),
            (chat_chunk({}, "tool_calls"), 0.0),
            (usage_chunk(4), 0.0),
            ("[DONE]", 0.0),
        )
    )


SCRIPTS: Final[dict[str, Script]] = {
    "lf": _timed(_CHAT),
    "crlf": _timed(_CHAT, b"\r\n"),
    "cr": _timed(_CHAT, b"\r"),
    "crlf-split": _crlf_split(),
    "bom": (Write(b"\xef\xbb\xbf"), *_timed(_CHAT)),
    "comments": _comments(),
    "multiline": _multiline(),
    "reasoning": _reasoning(),
    "tools": _tools(),
    "completions": _timed(
        (
            (text_chunk(" Par"), FIRST_S),
            (text_chunk("is"), GAP_S),
            (text_chunk("."), GAP_S),
            (text_chunk("", "length"), 0.0),
            ({"id": "cmpl-1", "object": "text_completion", "choices": [], "usage": USAGE}, 0.0),
            ("[DONE]", 0.0),
        )
    ),
    # An OpenAI-style error object after the first token (vLLM and tokenbooth send this shape).
    "error": _timed(
        (
            (chat_chunk({"role": "assistant", "content": ""}), 0.0),
            (chat_chunk({"content": "a"}), 0.0),
            (
                {"error": {"message": "engine died", "type": "InternalServerError", "code": 500}},
                0.0,
            ),
            ("[DONE]", 0.0),
        )
    ),
    "quick": tuple(Write(w.data) for w in _timed(_CHAT)),
}
"""Every script by name; the timed ones pace tokens with FIRST_S and GAP_S."""


# ------------------------------------------------------------------------------ server


class _Handler(BaseHTTPRequestHandler):
    """One connection: answers POSTs by the script and connection choice in the path."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 10.0  # a client that goes quiet does not hold the thread
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.conn_id = self.server.new_connection()
        self.answered_here = 0

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the server's log instead."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        case, script_name, conn_name = self.path.strip("/").split("/")[:3]
        conn = Conn(conn_name)
        if self._drops(case, conn):
            self.server.record(case, self.conn_id, "dropped")
            time.sleep(DROP_DELAY_S)
            self._close(reset=conn is Conn.RESET_REUSED)
            return
        head = [
            "HTTP/1.1 200 OK",
            "Content-Type: text/event-stream",
            "Cache-Control: no-cache",
            "Transfer-Encoding: chunked",
        ]
        if conn is Conn.CLOSE:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode())
        for write in SCRIPTS[script_name]:
            if write.pause_s:
                time.sleep(write.pause_s)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(write.data), write.data))
        self.wfile.write(b"0\r\n\r\n")
        self.answered_here += 1
        self.server.record(case, self.conn_id, "answered")
        if conn in (Conn.CLOSE, Conn.CLOSE_SILENT):
            self.close_connection = True

    def _drops(self, case: str, conn: Conn) -> bool:
        if conn is Conn.DROP_ALL:
            return True
        if conn in (Conn.DROP_REUSED, Conn.RESET_REUSED):
            return self.answered_here > 0
        if conn is Conn.ANSWER_ONCE:
            return self.server.answered(case) > 0
        return False

    def _close(self, *, reset: bool) -> None:
        """Close without a byte of response: FIN, or RST when ``reset``."""
        self.close_connection = True
        if reset:
            # Linger 0: close() discards the socket at once and the peer reads a reset.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Every case connects at once: socketserver's backlog of 5 would drop SYNs, and a client
    # retransmits one after a second (or is reset), which would show as TTFT.
    request_queue_size = 128

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._lock = threading.Lock()
        self._connections = 0
        self.log: dict[str, list[tuple[int, str]]] = {}

    def new_connection(self) -> int:
        with self._lock:
            self._connections += 1
            return self._connections - 1

    def record(self, case: str, conn_id: int, outcome: str) -> None:
        with self._lock:
            self.log.setdefault(case, []).append((conn_id, outcome))

    def answered(self, case: str) -> int:
        with self._lock:
            return sum(outcome == "answered" for _, outcome in self.log.get(case, []))


class SSEServer:
    """The scripted server on a free loopback port, in a background thread."""

    def __init__(self) -> None:
        self._server = _Server()
        host, port = self._server.server_address[:2]
        self.base_url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, case: str, script: str, conn: Conn = Conn.KEEP) -> str:
        """The base URL a client appends ``/v1/chat/completions`` (or completions) to."""
        if script not in SCRIPTS:
            raise KeyError(f"no script {script!r}")
        return f"{self.base_url}/{case}/{script}/{conn.value}"

    def log(self, case: str) -> list[tuple[int, str]]:
        """What the server did for ``case``: (connection number, "answered" or "dropped")."""
        with self._server._lock:
            entries = list(self._server.log.get(case, []))
        first: dict[int, int] = {}
        # Connection numbers relative to the case, in the order the case first used them.
        return [(first.setdefault(c, len(first)), outcome) for c, outcome in entries]

    def __enter__(self) -> SSEServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
