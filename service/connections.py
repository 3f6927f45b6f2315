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
    connection.
    """

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    observer: ClassVar[ConnectionObserver | None] = None
    registry: ClassVar[_Registry] = _Registry()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes received while the head is incomplete
        self._head_size = 0  # URL and header bytes of the head being parsed
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
            self._close(names.CONNECTION_CLOSE_OVER_LIMIT, _TOO_MANY)
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_write_timer()
        super().connection_lost(exc)
        if self.observer is not None:
            self.observer.closed(self._close_reason or names.CONNECTION_CLOSE_NORMAL)

    def _close(self, reason: str, response: bytes | None = None) -> None:
        if self._close_reason is None:
            self._close_reason = reason
        if self.transport.is_closing():
            return
        if response is not None:
            self.transport.write(response)
        self.transport.close()

    def _evict_one(self) -> bool:
        """Close the oldest connection still waiting for its request head, if any."""
        for victim in self.registry.waiting:
            if victim is not self:
                victim._stop_head_timer()
                victim._close(names.CONNECTION_CLOSE_EVICTED)
                return True
        return False

    # --------------------------------------------------------------- request head
    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_bytes = 0
        self._head_size = 0
        self.registry.waiting[self] = None
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_expired)

    def _stop_head_timer(self) -> None:
        self.registry.waiting.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        self.registry.waiting.pop(self, None)
        # A connection that never sent a byte gets no response, as nginx does.
        response = _HEAD_TIMEOUT if self._head_bytes else None
        self._close(names.CONNECTION_CLOSE_HEADER_TIMEOUT, response)

    def data_received(self, data: bytes) -> None:
        waiting = self._head_timer is not None
        super().data_received(data)
        # Still waiting after parsing: every byte so far belonged to the head (a chunk that
        # completed the head stopped the timer, whatever body bytes came with it).
        if waiting and self._head_timer is not None:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._stop_head_timer()
                self._close(names.CONNECTION_CLOSE_HEADER_TOO_LARGE, _HEAD_TOO_LARGE)

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        extensions = self.scope.setdefault("extensions", {})
        # ASGI extension values are dicts.
        extensions[SCOPE_EXTENSION] = {"state": self}
        if self._head_size <= self.limits.max_header_bytes:
            super().on_headers_complete()
            return
        # A head that arrived whole: uvicorn runs this request with an app that answers 431,
        # as it does for its own concurrency limit, so the parser's state stays consistent.
        app, self.app = self.app, _head_too_large_app
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        # No pipelined request already parsed: the next request's head is due in time.
        if not pipelined and not self.transport.is_closing():
            self._await_head()

    def timeout_keep_alive_handler(self) -> None:
        self._stop_head_timer()
        if self._close_reason is None:
            self._close_reason = names.CONNECTION_CLOSE_IDLE
        super().timeout_keep_alive_handler()

    # --------------------------------------------------------------- writes
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(
                self.limits.write_timeout_s, self._write_expired
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_write_timer()

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_expired(self) -> None:
        self._write_timer = None
        self._write_timed_out = True
        if self._close_reason is None:
            self._close_reason = names.CONNECTION_CLOSE_WRITE_TIMEOUT
        # abort() with SO_LINGER 0: a reset, so neither this process nor the kernel keeps the
        # megabytes the client never read (a plain close leaves them queued behind its FIN).
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


def guarded_protocol(
    limits: ConnectionLimits, observer: ConnectionObserver | None = None
) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` class for one server (uvicorn's ``Config(http=...)``)."""
    return type(
        "GuardedProtocol",
        (GuardedProtocol,),
        {"limits": limits, "observer": observer, "registry": _Registry()},
    )
