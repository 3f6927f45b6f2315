"""Bounds on every phase of an HTTP connection, below the ASGI app: uvicorn's protocol, guarded.

uvicorn bounds only the idle keep-alive phase. A client that connects and sends nothing, or
trickles its request headers one byte at a time, holds its socket (and a file descriptor)
forever, before the app or its API key check ever sees it; a client that stops reading a
stream holds the response's task. :class:`GuardedProtocol` adds, per connection:

- a request-head deadline (``header_timeout_s``, from the connection's start or the end of the
  previous response until the request's headers are complete) and a head size cap
  (``max_header_bytes``): past either, a 408/431 and the connection is closed;
- a write deadline (``write_timeout_s``): a response whose writes stay paused (the client's
  receive window is full) that long is aborted, and the app sees a disconnect;
- a cap on open connections (``max_connections``): a new connection past it first evicts the
  oldest one still waiting for its request head, and is refused with a 503 only when every
  open connection has a request in progress.

The body phase is bounded by the app (``body_timeout_s``, a 408 in the OpenAI error shape).
Each close is counted by reason through a :class:`ConnectionObserver`, and the app reads a
connection's state (:class:`ConnectionState`) from the ASGI scope's extensions.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import ErrorCode
from service.responses import error_json
from telemetry import names

__all__ = [
    "LINGER_S",
    "SCOPE_EXTENSION",
    "ConnectionLimits",
    "ConnectionObserver",
    "ConnectionState",
    "GuardedProtocol",
    "connection_state",
    "guarded_protocol",
]

SCOPE_EXTENSION: Final = "tokenbooth.connection"
"""Key in ``scope["extensions"]`` under which the app finds the request's connection."""
LINGER_S: Final = 2.0
"""How long a connection answered early (408, 431, 503, a 4xx before its body ended) keeps
reading and dropping input, so the client reads the answer instead of a reset (nginx's
lingering close); short, because a slowloris holds its socket that much longer."""
_FLUSH_POLL_S: Final = 0.01


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How long and how large each phase of a connection may be (from ServiceSettings)."""

    header_timeout_s: float = 10.0
    write_timeout_s: float = 10.0
    max_connections: int = 1024
    max_header_bytes: int = 65_536
    send_buffer_bytes: int = 0  # SO_SNDBUF; 0 leaves the kernel's autotuning


class ConnectionObserver(Protocol):
    """Where connection counts go (the service's connection metrics)."""

    def opened(self) -> None:
        """A connection was accepted."""
        ...

    def closed(self, reason: str) -> None:
        """A connection ended; ``reason`` is one of ``names.CONNECTION_CLOSE_REASONS``."""
        ...


class ConnectionState(Protocol):
    """What a request's handler may ask about its connection."""

    @property
    def write_timed_out(self) -> bool:
        """The server aborted the connection because the client stopped reading."""
        ...

    @property
    def open(self) -> bool:
        """The connection can still carry bytes to the client."""
        ...

    async def drained(self) -> bool:
        """Wait until what was written is handed to the kernel; False if it never is."""
        ...


def connection_state(scope: Mapping[str, Any]) -> ConnectionState | None:
    """The connection of an ASGI ``scope`` when it came through :class:`GuardedProtocol`."""
    extension = (scope.get("extensions") or {}).get(SCOPE_EXTENSION)
    return None if extension is None else extension.get("state")


def _error_response(status: int, reason: str, message: str, code: ErrorCode) -> bytes:
    error_type = "invalid_request_error" if status < 500 else "server_error"
    body = error_json(message, error_type, None, code)
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n"
    )
    if status == 503:
        head += "retry-after: 1\r\n"
    return (head + "\r\n").encode("ascii") + body


_HEAD_TIMEOUT = _error_response(
    408, "Request Timeout", "request headers not received in time", ErrorCode.HEADER_TIMEOUT
)
_HEAD_TOO_LARGE = _error_response(
    431, "Request Header Fields Too Large", "request headers too large", ErrorCode.HEADER_TOO_LARGE
)
_TOO_MANY = _error_response(
    503,
    "Service Unavailable",
    "too many open connections; retry later",
    ErrorCode.TOO_MANY_CONNECTIONS,
)


async def _head_too_large_app(scope: Any, receive: Any, send: Any) -> None:
    head, _, body = _HEAD_TOO_LARGE.partition(b"\r\n\r\n")
    headers = [tuple(h.split(b": ", 1)) for h in head.split(b"\r\n")[1:]]
    await send({"type": "http.response.start", "status": 431, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Registry:
    """Connections of one server still waiting for a request head, oldest first."""

    def __init__(self) -> None:
        self.waiting: dict[GuardedProtocol, None] = {}  # insertion-ordered set


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head, write and connection-count bounds.

    Build the class for one server with :func:`guarded_protocol`; uvicorn instantiates it per
    connection. Phases: a request head is being received from the connection's start (or the
    first byte after the previous request's body) until its headers are complete; its body
    until the parser saw its end; the response may finish before the body did (an early
    error), and then the rest of the body is read and discarded for at most :data:`LINGER_S`.
    """

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    observer: ClassVar[ConnectionObserver | None] = None
    registry: ClassVar[_Registry] = _Registry()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # a request head is (or is about to be) arriving
        self._in_body = False  # headers complete, the parser has not seen the body's end
        self._head_raw = 0  # bytes of chunks that fell wholly inside the current head
        self._head_size = 0  # URL and header bytes of the current head (parser callbacks)
        self._head_started = False  # a byte of the current head has arrived
        self._lingering = False  # answered and closing: input is read and dropped
        self._served = False  # a response has completed on this connection
        self._heads_completed = 0  # request heads parsed on this connection
        self._close_reason: str | None = None
        self._write_timed_out = False

    # --------------------------------------------------------------- ConnectionState
    @property
    def write_timed_out(self) -> bool:
        """The server aborted the connection because the client stopped reading."""
        return self._write_timed_out

    @property
    def open(self) -> bool:
        """The connection can still carry bytes to the client."""
        return self.transport is not None and not self.transport.is_closing()

    async def drained(self) -> bool:
        """Wait until everything written so far is in the kernel; False if it never gets there.

        No progress for ``write_timeout_s`` aborts the connection as a write timeout.
        """
        last = self.transport.get_write_buffer_size()
        progress_at = self.loop.time()
        while self.open:
            size = self.transport.get_write_buffer_size()
            if size == 0:
                return True
            if size < last:
                last, progress_at = size, self.loop.time()
            elif self.loop.time() - progress_at >= self.limits.write_timeout_s:
                self._write_expired()
                break
            await asyncio.sleep(_FLUSH_POLL_S)
        return False

    # --------------------------------------------------------------- connection life
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.limits.send_buffer_bytes:
            # Up to tcp_wmem's maximum (4 MiB) of a stream can sit in the kernel unread before
            # the write timeout can see a stalled client; a smaller buffer bounds that.
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.send_buffer_bytes
                    )
        if self.observer is not None:
            self.observer.opened()
        if len(self.connections) > self.limits.max_connections and not self._evict_one():
            # No lingering: under a flood of new connections each would hold its fd longer.
            self._reason(names.CONNECTION_CLOSE_OVER_LIMIT)
            transport.write(_TOO_MANY)
            self._close(names.CONNECTION_CLOSE_OVER_LIMIT)
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_write_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)
        if self.observer is not None:
            self.observer.closed(self._close_reason or names.CONNECTION_CLOSE_NORMAL)

    def eof_received(self) -> None:
        # The client finished sending: a lingering close may end now (and uvicorn's own
        # answer to a half-close, returning None, lets asyncio close the transport).
        super().eof_received()

    def _reason(self, reason: str) -> None:
        if self._close_reason is None:
            self._close_reason = reason

    def _close(self, reason: str) -> None:
        """Close once what was written is flushed (bounded by the write timeout)."""
        self._reason(reason)
        if self.transport.is_closing():
            return
        self.transport.close()
        self._watch_flush()

    def _linger_close(self, reason: str, response: bytes | None) -> None:
        """Answer, stop sending, read and drop what the client still sends, then close.

        Closing a socket with unread input makes the kernel send a reset, which can destroy
        the answer before the client reads it; nginx's lingering close avoids that the same way.
        """
        self._reason(reason)
        self._stop_head_timer()
        if self.transport.is_closing() or self._lingering:
            return
        self._lingering = True
        if response is not None:
            self.transport.write(response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._watch_flush()
            self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self._close(reason)

    def _abort(self, reason: str) -> None:
        """Reset the connection now, dropping anything unsent (SO_LINGER 0)."""
        self._reason(reason)
        # A reset, so neither this process nor the kernel keeps the megabytes the client never
        # read (a plain close leaves them queued behind its FIN).
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _evict_one(self) -> bool:
        """Close the oldest connection still waiting for its request head, if any."""
        for victim in self.registry.waiting:
            if victim is not self:
                victim._stop_head_timer()
                victim._close(names.CONNECTION_CLOSE_EVICTED)
                return True
        return False

    def _request_in_progress(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    # --------------------------------------------------------------- request head
    def _await_head(self) -> None:
        """The connection is idle: the next request's head is due within the deadline."""
        self._stop_head_timer()
        self.registry.waiting[self] = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._head_expired
            )

    def _stop_head_timer(self) -> None:
        self.registry.waiting.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        self.registry.waiting.pop(self, None)
        if self._request_in_progress():
            # A pipelined head trickling in behind a running request.
            self._abort(names.CONNECTION_CLOSE_HEADER_TIMEOUT)
            return
        if not self._head_started:
            # Silent: no response, as nginx does; after a response it was merely idle.
            reason = (
                names.CONNECTION_CLOSE_IDLE
                if self._served
                else names.CONNECTION_CLOSE_HEADER_TIMEOUT
            )
            self._close(reason)
            return
        self._linger_close(names.CONNECTION_CLOSE_HEADER_TIMEOUT, _HEAD_TIMEOUT)

    def _head_too_large(self) -> None:
        if self._request_in_progress():
            self._abort(names.CONNECTION_CLOSE_HEADER_TOO_LARGE)
        else:
            self._linger_close(names.CONNECTION_CLOSE_HEADER_TOO_LARGE, _HEAD_TOO_LARGE)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # answered and closing: drop what the client still sends
        if self._in_head:
            self._head_started = True
        heads_before = self._heads_completed if self._in_head else -1
        super().data_received(data)
        # Still inside the same head after parsing: the whole chunk belonged to it (the
        # parser buffers a header line until it ends, so this counts what it holds).
        if self._in_head and self._heads_completed == heads_before:
            self._head_raw += len(data)
        if self._in_head and self._over_head_limit():
            self._head_too_large()

    def _over_head_limit(self) -> bool:
        return max(self._head_raw, self._head_size) > self.limits.max_header_bytes

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_started = True, True
        self._head_raw = self._head_size = 0
        if self._request_in_progress():
            # A pipelined head arriving during another request: bounded in time too.
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        if self._head_size > self.limits.max_header_bytes and self._request_in_progress():
            self._abort(names.CONNECTION_CLOSE_HEADER_TOO_LARGE)
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        self._heads_completed += 1
        self._in_head, self._in_body = False, True
        self._head_started = False
        extensions = self.scope.setdefault("extensions", {})
        # ASGI extension values are dicts.
        extensions[SCOPE_EXTENSION] = {"state": self}
        if not self._over_head_limit():
            super().on_headers_complete()
            return
        # A head that arrived whole: uvicorn runs this request with an app that answers 431,
        # as it does for its own concurrency limit, so the parser's state stays consistent.
        self._reason(names.CONNECTION_CLOSE_HEADER_TOO_LARGE)
        app, self.app = self.app, _head_too_large_app
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        self._in_head = True  # what comes next is the next request's head
        self._head_raw = self._head_size = 0
        if self._linger_timer is not None and not self._lingering:
            # The rest of an early-answered body has arrived: back to keep-alive.
            self._linger_timer.cancel()
            self._linger_timer = None
            if not self.transport.is_closing():
                self._await_head()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        self._served = True
        super().on_response_complete()
        if self.transport.is_closing():
            self._watch_flush()
            return
        if self.transport.get_write_buffer_size():
            self._watch_flush()
        if self._in_body:
            # Answered before its body ended (an early 4xx): read and drop the rest, for a
            # while, before the next head is due; this is not a slow head.
            self._linger_timer = self.loop.call_later(LINGER_S, self._close_unfinished_body)
        elif not pipelined:
            self._await_head()

    def _close_unfinished_body(self) -> None:
        self._linger_timer = None
        self._close(names.CONNECTION_CLOSE_NORMAL)

    def timeout_keep_alive_handler(self) -> None:
        self._stop_head_timer()
        self._reason(names.CONNECTION_CLOSE_IDLE)
        super().timeout_keep_alive_handler()

    # --------------------------------------------------------------- writes
    def pause_writing(self) -> None:
        super().pause_writing()
        # Paused: the buffer is above its high-water mark and nothing drains it.
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(
                self.limits.write_timeout_s, self._write_expired
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_write_timer()

    def _watch_flush(self) -> None:
        """After the last write (response end, close): the buffer must drain, or time out."""
        if self._write_timer is None and self.transport.get_write_buffer_size():
            self._write_timer = self.loop.call_later(
                self.limits.write_timeout_s, self._flush_expired
            )

    def _flush_expired(self) -> None:
        self._write_timer = None
        if self.transport.get_write_buffer_size():
            self._write_expired()

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_expired(self) -> None:
        self._stop_write_timer()
        self._write_timed_out = True
        self._abort(names.CONNECTION_CLOSE_WRITE_TIMEOUT)


def guarded_protocol(
    limits: ConnectionLimits, observer: ConnectionObserver | None = None
) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` class for one server (uvicorn's ``Config(http=...)``)."""
    return type(
        "GuardedProtocol",
        (GuardedProtocol,),
        {"limits": limits, "observer": observer, "registry": _Registry()},
    )
