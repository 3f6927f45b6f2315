"""The harness's HTTP/1.1 transport: streamed POSTs over keep-alive connections (geventhttpclient).

Why not requests (through Locust's ``HttpSession``): preparing a request there (URL parsing,
cookies, proxy lookup in the environment, hooks, adapters, urllib3's pool) cost about 1 ms of
CPU per request, four fifths of the harness's whole per-request cost, and capped one process
near 750 requests/s against a server that costs nothing (``tokenbooth bench loadgen``).
geventhttpclient (a Locust dependency; the client under Locust's ``FastHttpUser``) parses with
llhttp in C and keeps a plain socket pool. What this module adds on top:

- the body is handed over as it arrives (:meth:`_StreamResponse.read_some`), not in fixed-size
  reads that would hold a token until more bytes came;
- the send is stamped right before the request's bytes are written, so the client's own
  preparation is never charged to the server;
- a POST on a reused keep-alive connection that the server had already closed (it fails before
  any response byte) is sent again, once, on a fresh connection, and counted: servers close
  idle connections on their own schedule (llama.cpp after 5 s), and the pool's liveness check
  cannot see a close that races the send. A fresh connection's failure is never repeated: the
  server may have read that request.

It speaks to any OpenAI-compatible server: ``http`` and ``https`` (verified against the
system's CA bundle), a base path in the target URL, ``Content-Length`` bodies.
``Accept-Encoding: identity`` is sent: a token stream must not wait in a compressor. Proxy
variables in the environment are not honoured: a load generator measures the server it names.
No Locust import here; :mod:`loadgen.users` fires Locust's request events.
"""

from __future__ import annotations

import socket
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import gevent.socket
from geventhttpclient.connectionpool import ConnectionPool, SSLConnectionPool
from geventhttpclient.response import HTTPConnectionClosed, HTTPResponse, HTTPSocketPoolResponse

__all__ = ["DEFAULT_CONNECTIONS", "NO_RESPONSE", "Exchange", "StreamClient", "TransportError"]

DEFAULT_CONNECTIONS: Final = 1024
"""Connections one client keeps open per origin at most; a send beyond them waits for one."""
_BLOCK: Final = 64 * 1024  # bytes per socket read
_ERROR_BODY_LIMIT: Final = 64 * 1024  # bytes of a non-200 body kept for its error message
_USER_AGENT: Final = "tokenbooth-loadgen"
_FRAMING_HEADERS: Final = frozenset({"content-length", "transfer-encoding"})
NO_RESPONSE: Final = "the server closed the connection without a response"
"""How :attr:`Exchange.error` begins when the connection closed before any response byte."""

# How the write of a send on a pooled connection the server had already closed fails: a reset
# or a broken pipe. Reading the reply, the response raises HTTPConnectionClosed for a FIN or an
# RST that came before any response byte (and only then).
_STALE: Final = (
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


class TransportError(ValueError):
    """A request this transport cannot send as asked (bad URL scheme, a header with a newline)."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """How one request went on the wire.

    ``status`` is 0 when no response came; ``sent_at`` the ``time.perf_counter`` of the send
    that got the response (the resend, when there was one; ``None`` when nothing was written);
    ``retries`` 0 or 1; ``error`` the transport failure, before or during the body (``""``:
    none); ``body`` a non-200 response's body (its first 64 KiB), empty otherwise;
    ``received`` body bytes read.
    """

    status: int
    sent_at: float | None
    retries: int
    error: str
    body: bytes
    received: int


class _StreamResponse(HTTPSocketPoolResponse):
    """A pooled response whose body can be read as it arrives."""

    def _on_message_complete(self) -> None:
        # The library hands the socket back at every message's end, an interim 1xx's too: the
        # final response would then be read from a pooled socket another request may take,
        # and its body would read as empty. Only the final response's end releases it here.
        HTTPResponse._on_message_complete(self)
        if self.get_code() >= 200:
            self.release()

    def read_some(self) -> bytes:
        """The body bytes that have arrived: what is parsed already, else one socket read's
        worth; ``b""`` at the end of the body. A connection that closes mid-body raises."""
        buf = self._body_buffer
        while not buf:
            sock = self._sock
            if self.message_complete or sock is None:
                return b""
            try:
                data = sock.recv(self.block_size)
                self.feed(data)  # b"" tells the parser the connection closed
            except BaseException:
                self.release()
                raise
            if not data and not self.message_complete:
                self.release()
                raise HTTPConnectionClosed("connection closed before the end of the body")
        out = bytes(buf)
        del buf[:]
        return out


class _Pool(ConnectionPool):
    """geventhttpclient's pool with Nagle off: a request is one write, its reply many small."""

    def after_connect(self, sock: gevent.socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _TLSPool(SSLConnectionPool):
    """:class:`_Pool` over TLS."""

    def after_connect(self, sock: gevent.socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(frozen=True, slots=True)
class _Origin:
    pool: ConnectionPool
    host_header: str
    base_path: str


class StreamClient:
    """Keep-alive HTTP/1.1 client for streamed POSTs: one connection pool per target origin.

    ``connections`` bounds the open connections per origin (a send beyond them waits for a
    free one, which shows as schedule lag in open loop). Not thread-safe; greenlet-safe.
    """

    def __init__(self, connections: int = DEFAULT_CONNECTIONS) -> None:
        self.connections = connections
        self._origins: dict[str, _Origin] = {}
        # Sockets that have carried a request: only those can be stale when taken again.
        self._carried: weakref.WeakSet[gevent.socket.socket] = weakref.WeakSet()

    def close(self) -> None:
        """Close every pooled connection."""
        for origin in self._origins.values():
            origin.pool.close()
        self._origins.clear()

    def _origin(self, url: str, timeout_s: float) -> _Origin:
        got = self._origins.get(url)
        if got is not None:
            return got
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname
        default_port = port == (443 if tls else 80)
        shown = f"[{host}]" if ":" in host else host
        kw: dict[str, Any] = {
            "size": self.connections,
            "connection_timeout": timeout_s,
            "network_timeout": timeout_s,
        }
        pool: ConnectionPool = (
            _TLSPool(host, port, host, port, **kw) if tls else _Pool(host, port, host, port, **kw)
        )
        got = _Origin(pool, shown if default_port else f"{shown}:{port}", parts.path.rstrip("/"))
        self._origins[url] = got
        return got

    def post(
        self,
        url: str,
        path: str,
        payload: bytes,
        headers: Mapping[str, str],
        *,
        timeout_s: float,
        on_data: Callable[[bytes, float], None],
    ) -> Exchange:
        """POST ``payload`` to ``url`` + ``path``; a 200's body goes to ``on_data`` as it arrives.

        ``on_data`` gets each piece of the body with the ``time.perf_counter`` it was read at.
        ``timeout_s`` bounds the connect and each wait for bytes (like requests' timeout), not
        the whole stream. Failures come back in the :class:`Exchange`, never as exceptions,
        except a :class:`TransportError` for a request that cannot be sent at all.
        """
        origin = self._origin(url, timeout_s)
        head = _request_head(origin, path, len(payload), headers)
        retries = 0
        sent: float | None = None
        while True:
            try:
                sock = origin.pool.get_socket()
            except Exception as exc:  # refused, unreachable, connect timeout, TLS failure
                return Exchange(0, sent, retries, _describe(exc), b"", 0)
            reused = sock in self._carried
            sock.settimeout(timeout_s)
            sent = time.perf_counter()
            try:
                sock.sendall(head + payload)
            except _STALE as exc:
                origin.pool.release_socket(sock)
                if reused and not retries:
                    retries = 1
                    continue
                return Exchange(0, sent, retries, _closed(exc), b"", 0)
            except BaseException as exc:
                origin.pool.release_socket(sock)  # a socket kept past here is a slot lost for good
                if not isinstance(exc, Exception):
                    raise  # the greenlet was killed (a point's end) or a gevent.Timeout fired
                return Exchange(0, sent, retries, _describe(exc), b"", 0)
            self._carried.add(sock)
            try:
                # Reads the status line and headers; on failure it releases the socket itself.
                resp = _StreamResponse(sock, origin.pool, block_size=_BLOCK, method="POST")
            except HTTPConnectionClosed as exc:
                # Raised only when the FIN or RST came before any response byte; a reset after
                # some (a plain ConnectionResetError) means the server read the request: no resend.
                if reused and not retries:
                    retries = 1
                    continue
                return Exchange(0, sent, retries, _closed(exc), b"", 0)
            except Exception as exc:  # a timeout, a malformed status line or headers
                return Exchange(0, sent, retries, _describe(exc), b"", 0)
            return _read_body(resp, sent, retries, on_data)


def _read_body(
    resp: _StreamResponse, sent: float, retries: int, on_data: Callable[[bytes, float], None]
) -> Exchange:
    status = resp.status_code
    kept = bytearray()
    received = 0
    error = ""
    try:
        while data := resp.read_some():
            received += len(data)
            if status == 200:
                on_data(data, time.perf_counter())
            elif len(kept) < _ERROR_BODY_LIMIT:
                kept += data[: _ERROR_BODY_LIMIT - len(kept)]
    except Exception as exc:  # the connection broke or timed out mid-body
        error = _describe(exc)
    finally:
        resp.release()  # back to the pool when complete and keep-alive, else closed
    return Exchange(status, sent, retries, error, bytes(kept), received)


def _request_head(origin: _Origin, path: str, length: int, headers: Mapping[str, str]) -> bytes:
    """The request line and headers. A caller's Host, User-Agent or Accept-Encoding replaces
    the transport's own (a Host for virtual hosting behind an address, say); the body's framing
    is the transport's alone."""
    given = {name.lower() for name in headers}
    framing = given & _FRAMING_HEADERS
    if framing:
        raise TransportError(f"the transport sets {sorted(framing)} itself; drop the header")
    lines = [f"POST {origin.base_path}{path} HTTP/1.1"]
    for name, value in (
        ("Host", origin.host_header),
        ("User-Agent", _USER_AGENT),
        ("Accept-Encoding", "identity"),
    ):
        if name.lower() not in given:
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {length}")
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise TransportError(f"header {name!r} holds a line break or a colon in its name")
        lines.append(f"{name}: {value}")
    lines += ("", "")
    try:
        return "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise TransportError(f"the request line or a header is not latin-1: {exc}") from None


def _closed(exc: BaseException) -> str:
    return f"{NO_RESPONSE} ({_describe(exc)})"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
