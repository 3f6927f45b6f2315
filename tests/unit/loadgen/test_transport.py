"""The harness's HTTP transport (:mod:`loadgen.transport`) against raw loopback servers.

Each server is a plain thread speaking HTTP/1.1 by hand on a real socket, so a test controls
every byte and pause: how a body is framed, when it stops, how a connection ends. The client
runs in the test process on gevent sockets without monkey-patching (a blocking gevent call runs
the hub, the server thread runs meanwhile); every call is bounded by a ``gevent.Timeout`` so a
hang fails the test instead of stalling the suite. What goes through :mod:`loadgen.users`
(which imports Locust) runs in a child process; what the users' whole request path does against
a scripted SSE server is tested in ``test_users.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import gevent
import pytest

from loadgen import transport
from loadgen.transport import NO_RESPONSE, Exchange, StreamClient, TransportError

ROOT = Path(__file__).resolve().parents[3]
PATH = "/v1/chat/completions"
GUARD_S = 5.0  # no single call here should come near it
PAUSE_S = 0.1  # a server's pause between two writes in the timing tests
ERROR_BODY_LIMIT = 64 * 1024  # what the transport documents it keeps of a non-200 body


# ---------------------------------------------------------------------------- a raw server


@dataclass(frozen=True)
class Request:
    """One request as the server read it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int  # index of the connection it came on, in accept order

    def header(self, name: str) -> list[str]:
        """Every value sent for ``name`` (case-insensitive)."""
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Peer:
    """One accepted connection, as a handler drives it."""

    def __init__(self, sock: socket.socket, index: int, server: RawServer) -> None:
        self.sock = sock
        self.index = index
        self.server = server
        self._buf = b""

    def request(self) -> Request | None:
        """The next request on this connection; ``None`` when the client closed it."""
        while b"\r\n\r\n" not in self._buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self._buf += data
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        line, *fields = head.decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ", 2)
        headers = [(k, v.strip()) for k, v in (f.split(":", 1) for f in fields)]
        length = sum(int(v) for k, v in headers if k.lower() == "content-length")
        while len(self._buf) < length:
            data = self.sock.recv(65536)
            if not data:
                return None
            self._buf += data
        body, self._buf = self._buf[:length], self._buf[length:]
        req = Request(method, target, headers, body, self.index)
        self.server.requests.append(req)
        return req

    def send(self, data: bytes) -> None:
        """Write ``data`` now (Nagle is off: one write, one segment)."""
        self.sock.sendall(data)

    def stall(self) -> None:
        """Send nothing more until the client closes the connection (or the guard passes)."""
        while self.sock.recv(65536):
            pass

    def reset(self) -> None:
        """Close with a reset (RST) instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


Handler = Callable[[Peer], None]


@dataclass
class RawServer:
    """A loopback TCP server: each connection gets a thread that runs ``handler`` on it."""

    handler: Handler
    host: str = "127.0.0.1"
    tls: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)
    connections: int = 0  # accepted so far
    peak: int = 0  # most connections open at once
    _open: int = 0
    closing: threading.Event = field(default_factory=threading.Event)  # set as the test ends
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _socks: list[socket.socket] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((self.host, 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]

    def url(self, path: str = "") -> str:
        """The server's base URL, with ``path`` appended."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{shown}:{self.port}{path}"

    def __enter__(self) -> RawServer:
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.closing.set()
        with contextlib.suppress(OSError):  # wakes the accept (a close alone does not)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self._threads:
            t.join(timeout=5)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            sock.settimeout(GUARD_S)  # a client gone quiet never holds a thread for long
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                index = self.connections
                self.connections += 1
                self._open += 1
                self.peak = max(self.peak, self._open)
                self._socks.append(sock)
            t = threading.Thread(target=self._serve, args=(sock, index), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, raw: socket.socket, index: int) -> None:
        sock = raw
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(raw, server_side=True)
            self.handler(Peer(sock, index, self))
        except (OSError, ssl.SSLError):
            pass  # the client went away, or the test closed the server
        finally:
            sock.close()
            with self._lock:
                self._open -= 1


# ---------------------------------------------------------------------------- responses


def response(
    status: int = 200,
    body: bytes = b"",
    *,
    headers: tuple[str, ...] = (),
    length: bool = True,
    version: str = "HTTP/1.1",
) -> bytes:
    """A whole response: ``Content-Length`` framed unless ``length`` is false (then no framing
    at all: the body ends when the connection does)."""
    lines = [f"{version} {status} X", *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``b""`` gives the last chunk)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
EVENTS = [f"data: {i}\n\n".encode() for i in range(4)]


def keep_alive(answer: Callable[[Peer, Request], None]) -> Handler:
    """A handler that answers every request on a connection until the client closes it."""

    def handle(peer: Peer) -> None:
        while (req := peer.request()) is not None:
            answer(peer, req)

    return handle


def ok(body: bytes = b"data: [DONE]\n\n") -> Handler:
    """Answer every request with a 200 and ``body`` (``Content-Length``), keep-alive."""
    return keep_alive(lambda peer, _req: peer.send(response(200, body)))


# ---------------------------------------------------------------------------- the client side


@dataclass
class Got:
    """What one post gave: the exchange and every ``on_data`` call, with its stamp."""

    ex: Exchange
    pieces: list[tuple[bytes, float]]
    elapsed_s: float

    @property
    def body(self) -> bytes:
        return b"".join(p for p, _ in self.pieces)


def post(
    client: StreamClient,
    url: str,
    *,
    path: str = PATH,
    payload: bytes = b'{"stream": true}',
    headers: dict[str, str] | None = None,
    timeout_s: float = 2.0,
) -> Got:
    """One ``client.post``, its body collected; a call that hangs fails the test."""
    pieces: list[tuple[bytes, float]] = []
    t0 = time.perf_counter()
    guard = gevent.Timeout(GUARD_S)  # a BaseException: the transport does not swallow it
    try:
        with guard:
            ex = client.post(
                url,
                path,
                payload,
                headers or {},
                timeout_s=timeout_s,
                on_data=lambda data, at: pieces.append((data, at)),
            )
    except gevent.Timeout as exc:
        if exc is not guard:
            raise
        raise AssertionError(f"the post hung for {GUARD_S} s") from None
    return Got(ex, pieces, time.perf_counter() - t0)


@pytest.fixture
def client() -> Iterator[StreamClient]:
    """A client with the default pool, closed after the test."""
    c = StreamClient()
    yield c
    c.close()


@pytest.fixture
def one() -> Iterator[StreamClient]:
    """A client with one connection per origin: a slot lost for good hangs its next post."""
    c = StreamClient(connections=1)
    yield c
    c.close()


def assert_clean(got: Got, body: bytes) -> None:
    """A 200 that ended cleanly and brought exactly ``body``."""
    assert (got.ex.status, got.ex.error, got.ex.retries) == (200, "", 0)
    assert got.body == body
    assert got.ex.received == len(body)
    assert got.ex.body == b""  # a 200's body goes to on_data only


# ---------------------------------------------------------------------------- what is sent


def test_the_request_goes_to_the_base_path_with_host_length_identity_and_user_headers(
    client: StreamClient,
) -> None:
    payload = json.dumps({"messages": [{"role": "user", "content": "héllo"}]}).encode()
    with RawServer(ok()) as srv:
        got = post(
            client,
            srv.url("/prefix/"),
            payload=payload,
            headers={"Authorization": "Bearer k", "X-Request-ID": "lg-1"},
        )
    assert_clean(got, b"data: [DONE]\n\n")
    (req,) = srv.requests
    assert (req.method, req.target) == ("POST", "/prefix/v1/chat/completions")
    assert req.header("Host") == [f"127.0.0.1:{srv.port}"]
    assert req.header("Content-Length") == [str(len(payload))]
    assert req.body == payload
    assert req.header("Accept-Encoding") == ["identity"]
    assert req.header("Authorization") == ["Bearer k"]
    assert req.header("X-Request-ID") == ["lg-1"]


def test_an_ipv6_target_is_reached_and_named_in_brackets_in_the_host_header(
    client: StreamClient,
) -> None:
    try:
        srv = RawServer(ok(), host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with srv:
        got = post(client, srv.url())
    assert_clean(got, b"data: [DONE]\n\n")
    (req,) = srv.requests
    assert req.header("Host") == [f"[::1]:{srv.port}"]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Evil": "a\r\nX-Injected: 1"},
        {"X-Evil": "a\nb"},
        {"X-Evil\r\nX-Injected": "1"},
        {"X-Evil: 1\r\nY": "1"},
        {"X-Key": "snowman \u2603"},  # not latin-1: no way to put it on the wire as asked
    ],
)
def test_a_header_that_cannot_go_on_the_wire_raises_and_costs_no_connection(
    one: StreamClient, headers: dict[str, str]
) -> None:
    with RawServer(ok()) as srv:
        with pytest.raises(TransportError):
            post(one, srv.url(), headers=headers)
        assert_clean(post(one, srv.url()), b"data: [DONE]\n\n")  # the only slot is still free
    assert len(srv.requests) == 1
    assert all(not r.header("X-Injected") for r in srv.requests)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1/", "127.0.0.1:8000", "http:///v1"])
def test_a_url_that_is_not_http_raises(client: StreamClient, url: str) -> None:
    with pytest.raises(TransportError):
        post(client, url)


# ---------------------------------------------------------------------------- framings


def close_delimited(peer: Peer) -> None:
    """An HTTP/1.0 style answer: no length, no chunking, the close ends the body."""
    if peer.request() is None:
        return
    peer.send(response(200, b"", length=False, version="HTTP/1.0"))
    for event in EVENTS:
        peer.send(event)
        time.sleep(0.01)


def chunked(peer: Peer) -> None:
    """A chunked stream with a chunk per event, keep-alive."""
    while peer.request() is not None:
        peer.send(CHUNKED_HEAD)
        for event in EVENTS:
            peer.send(chunk(event))
        peer.send(chunk(b""))


def content_length_in_pieces(peer: Peer) -> None:
    """A ``Content-Length`` body written an event at a time, keep-alive."""
    body = b"".join(EVENTS)
    while peer.request() is not None:
        peer.send(response(200, b"", headers=(f"Content-Length: {len(body)}",), length=False))
        for event in EVENTS:
            peer.send(event)


@pytest.mark.parametrize("handler", [chunked, content_length_in_pieces, close_delimited])
def test_every_body_framing_ends_cleanly_with_every_byte(
    one: StreamClient, handler: Handler
) -> None:
    with RawServer(handler) as srv:
        first = post(one, srv.url())
        second = post(one, srv.url())  # after a close-delimited body: a new connection
    for got in (first, second):
        assert_clean(got, b"".join(EVENTS))
    # A framed body keeps its connection; a close-delimited one cannot.
    assert srv.connections == (2 if handler is close_delimited else 1)


def test_a_body_written_in_pauses_is_handed_over_at_each_write_not_held_for_a_block(
    client: StreamClient,
) -> None:
    def slow(peer: Peer) -> None:
        while peer.request() is not None:
            peer.send(CHUNKED_HEAD)
            for event in EVENTS:
                peer.send(chunk(event))
                time.sleep(PAUSE_S)
            peer.send(chunk(b""))

    with RawServer(slow) as srv:
        got = post(client, srv.url())
    assert_clean(got, b"".join(EVENTS))
    assert [p for p, _ in got.pieces] == EVENTS  # one on_data per write, nothing merged
    stamps = [at for _, at in got.pieces]
    assert got.ex.sent_at is not None
    assert stamps[0] - got.ex.sent_at < PAUSE_S / 2  # the first write came right away
    for a, b in itertools.pairwise(stamps):
        assert 0.7 * PAUSE_S <= b - a < 3 * PAUSE_S


def test_a_content_length_body_in_pauses_is_handed_over_at_each_write_too(
    client: StreamClient,
) -> None:
    body = b"".join(EVENTS)

    def slow(peer: Peer) -> None:
        if peer.request() is None:
            return
        peer.send(response(200, b"", headers=(f"Content-Length: {len(body)}",), length=False))
        for event in EVENTS:
            peer.send(event)
            time.sleep(PAUSE_S)

    with RawServer(slow) as srv:
        got = post(client, srv.url())
    assert_clean(got, body)
    assert [p for p, _ in got.pieces] == EVENTS
    stamps = [at for _, at in got.pieces]
    for a, b in itertools.pairwise(stamps):
        assert 0.7 * PAUSE_S <= b - a < 3 * PAUSE_S


@pytest.mark.parametrize("interim", [b"100 Continue", b"103 Early Hints\r\nLink: </a>; rel=x"])
def test_an_interim_1xx_response_is_skipped_and_the_final_stream_read_to_its_end(
    one: StreamClient, interim: bytes
) -> None:
    def hints_then_stream(peer: Peer) -> None:
        while peer.request() is not None:
            peer.send(b"HTTP/1.1 " + interim + b"\r\n\r\n")
            time.sleep(0.02)
            peer.send(CHUNKED_HEAD)
            for event in EVENTS:
                time.sleep(0.02)
                peer.send(chunk(event))
            peer.send(chunk(b""))

    with RawServer(hints_then_stream) as srv:
        first = post(one, srv.url())
        second = post(one, srv.url())
    for got in (first, second):
        assert_clean(got, b"".join(EVENTS))
        assert [p for p, _ in got.pieces] == EVENTS
    # The connection went back to the pool once, after the final response, not after the 1xx.
    assert srv.connections == 1


# ---------------------------------------------------------------------------- non-200s


def test_a_non_200_gives_its_status_and_body_and_feeds_nothing(one: StreamClient) -> None:
    error = json.dumps({"error": {"message": "bad model", "type": "invalid_request"}}).encode()
    with RawServer(
        keep_alive(lambda peer, _req: peer.send(response(400, error, headers=("X-A: b",))))
    ) as srv:
        got = post(one, srv.url())
        again = post(one, srv.url())
    for g in (got, again):
        assert (g.ex.status, g.ex.error, g.ex.body, g.ex.received) == (400, "", error, len(error))
        assert g.pieces == []
    assert srv.connections == 1  # a fully read error keeps its connection


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_huge_non_200_body_is_kept_to_64_kib_read_to_its_end_and_the_connection_reused(
    one: StreamClient, framing: str
) -> None:
    big = bytes(range(256)) * (4 * ERROR_BODY_LIMIT // 256)  # 256 KiB

    def answer(peer: Peer, req: Request) -> None:
        if req.target.endswith("/big"):
            if framing == "length":
                peer.send(response(503, big))
            else:
                peer.send(b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n")
                for i in range(0, len(big), 10_000):
                    peer.send(chunk(big[i : i + 10_000]))
                peer.send(chunk(b""))
        else:
            peer.send(response(200, b"data: [DONE]\n\n"))

    with RawServer(keep_alive(answer)) as srv:
        got = post(one, srv.url(), path="/big")
        after = post(one, srv.url())
    assert (got.ex.status, got.ex.error) == (503, "")
    assert got.ex.body == big[:ERROR_BODY_LIMIT]
    assert got.ex.received == len(big)
    # The next request on the same connection reads its own response, not the error's tail.
    assert_clean(after, b"data: [DONE]\n\n")
    assert srv.connections == 1


def test_connection_close_is_honoured_and_the_next_post_opens_a_new_connection(
    one: StreamClient,
) -> None:
    def closing(peer: Peer) -> None:
        if peer.request() is not None:
            peer.send(response(200, b"data: x\n\n", headers=("Connection: close",)))
            # The connection stays open a while: only the header says it is done.
            time.sleep(0.3)

    with RawServer(closing) as srv:
        first = post(one, srv.url())
        second = post(one, srv.url())
    for got in (first, second):
        assert_clean(got, b"data: x\n\n")
    assert srv.connections == 2


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_connection_that_closes_mid_body_is_a_200_with_an_error(
    one: StreamClient, framing: str
) -> None:
    def cut(peer: Peer) -> None:
        if peer.request() is None:
            return
        if framing == "length":
            peer.send(response(200, b"", headers=("Content-Length: 1000",), length=False))
            peer.send(EVENTS[0])
        else:
            peer.send(CHUNKED_HEAD + chunk(EVENTS[0]))
        time.sleep(0.05)

    with RawServer(cut) as srv, RawServer(ok()) as other:
        got = post(one, srv.url())
        assert_clean(post(one, other.url()), b"data: [DONE]\n\n")
    assert got.ex.status == 200
    assert got.ex.error
    assert got.body == EVENTS[0]
    assert got.ex.retries == 0
    assert len(srv.requests) == 1


def test_a_server_that_stalls_before_answering_times_out_in_about_timeout_s(
    one: StreamClient,
) -> None:
    def stall(peer: Peer) -> None:
        if peer.request() is not None:
            peer.stall()

    with RawServer(stall) as srv:
        got = post(one, srv.url(), timeout_s=0.3)
    assert (got.ex.status, got.ex.retries, got.ex.received) == (0, 0, 0)
    assert "timed out" in got.ex.error.lower()
    assert 0.25 <= got.elapsed_s < 0.9
    assert len(srv.requests) == 1  # a timeout is never resent


def test_a_stream_that_stalls_mid_body_times_out_as_a_200_with_an_error(
    one: StreamClient,
) -> None:
    def stall(peer: Peer) -> None:
        if peer.request() is not None:
            peer.send(CHUNKED_HEAD + chunk(EVENTS[0]))
            peer.stall()

    with RawServer(stall) as srv:
        got = post(one, srv.url(), timeout_s=0.3)
    assert (got.ex.status, got.body) == (200, EVENTS[0])
    assert "timed out" in got.ex.error.lower()
    assert 0.25 <= got.elapsed_s < 0.9


def test_timeout_bounds_each_wait_not_the_whole_stream(client: StreamClient) -> None:
    def steady(peer: Peer) -> None:
        if peer.request() is not None:
            peer.send(CHUNKED_HEAD)
            for event in EVENTS * 2:
                time.sleep(0.1)
                peer.send(chunk(event))
            peer.send(chunk(b""))

    with RawServer(steady) as srv:
        got = post(client, srv.url(), timeout_s=0.3)  # the stream takes 0.8 s in all
    assert_clean(got, b"".join(EVENTS * 2))


def test_a_refused_connection_is_status_0_with_an_error_and_no_send(one: StreamClient) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    got = post(one, f"http://127.0.0.1:{port}")
    assert (got.ex.status, got.ex.sent_at, got.ex.retries, got.ex.received) == (0, None, 0, 0)
    assert "refused" in got.ex.error.lower()
    again = post(one, f"http://127.0.0.1:{port}")  # the failed connect gave its slot back
    assert again.ex.status == 0


def test_a_reset_after_part_of_the_status_line_is_an_error_and_never_resent(
    one: StreamClient,
) -> None:
    # A reused connection, so a failure before any response byte would be resent: here the
    # server had already sent a byte of its answer, so it read the request, and a resend
    # would send the same request twice.
    def answer(peer: Peer, req: Request) -> None:
        if req.target.endswith("/cut"):
            peer.send(b"HTTP/1.1 2")
            time.sleep(0.1)  # the client reads those bytes before the reset comes
            peer.reset()
        else:
            peer.send(response(200, b"data: x\n\n"))

    with RawServer(keep_alive(answer)) as srv:
        assert_clean(post(one, srv.url()), b"data: x\n\n")
        got = post(one, srv.url(), path="/cut")
    assert (got.ex.status, got.ex.retries) == (0, 0)
    assert got.ex.error
    assert [r.target for r in srv.requests] == [PATH, "/cut"]


def test_a_reused_connection_closed_before_any_answer_is_resent_once_on_a_new_one(
    one: StreamClient,
) -> None:
    def once_per_connection(peer: Peer) -> None:
        if peer.request() is not None:
            peer.send(response(200, b"data: x\n\n"))
        peer.request()  # the next request on this connection is read, then dropped

    with RawServer(once_per_connection) as srv:
        assert_clean(post(one, srv.url()), b"data: x\n\n")
        time.sleep(0.05)  # not yet closed when the pool checks it: the close races the send
        got = post(one, srv.url())
    assert (got.ex.status, got.ex.retries, got.ex.error) == (200, 1, "")
    assert got.body == b"data: x\n\n"
    assert srv.connections == 2


def test_a_fresh_connection_closed_before_any_answer_is_not_resent(one: StreamClient) -> None:
    def drop(peer: Peer) -> None:
        peer.request()

    with RawServer(drop) as srv:
        got = post(one, srv.url())
    assert (got.ex.status, got.ex.retries) == (0, 0)
    assert got.ex.error.startswith(NO_RESPONSE)
    assert len(srv.requests) == 1


# ---------------------------------------------------------------------------- the pool's slots


def test_the_pool_opens_at_most_connections_and_queues_the_rest() -> None:
    bounded = StreamClient(connections=2)

    def slow(peer: Peer, _req: Request) -> None:
        time.sleep(0.1)
        peer.send(response(200, b"data: x\n\n"))

    try:
        with RawServer(keep_alive(slow)) as srv, gevent.Timeout(GUARD_S, AssertionError("hung")):
            jobs = [gevent.spawn(post, bounded, srv.url()) for _ in range(6)]
            gevent.joinall(jobs, raise_error=True)
    finally:
        bounded.close()
    for job in jobs:
        assert_clean(job.value, b"data: x\n\n")
    assert (srv.connections, srv.peak, len(srv.requests)) == (2, 2, 6)


def test_on_data_raising_ends_the_request_with_an_error_and_frees_the_slot(
    one: StreamClient,
) -> None:
    def stream(peer: Peer, _req: Request) -> None:
        peer.send(CHUNKED_HEAD + chunk(EVENTS[0]))
        time.sleep(0.05)
        for event in EVENTS[1:]:
            peer.send(chunk(event))
        peer.send(chunk(b""))

    def explode(_data: bytes, _at: float) -> None:
        raise KeyError("parser bug")

    with RawServer(keep_alive(stream)) as srv:
        with gevent.Timeout(GUARD_S, AssertionError("the post hung")):
            ex = one.post(srv.url(), PATH, b"{}", {}, timeout_s=2.0, on_data=explode)
        assert (ex.status, ex.retries) == (200, 0)
        assert "parser bug" in ex.error
        after = post(one, srv.url())
    assert_clean(after, b"".join(EVENTS))
    # The half-read connection was closed, not handed to the next request with a tail in it.
    assert srv.connections == 2


def test_a_greenlet_killed_mid_stream_frees_its_slot(one: StreamClient) -> None:
    def answer(peer: Peer, req: Request) -> None:
        if req.target.endswith("/stall"):
            peer.send(CHUNKED_HEAD + chunk(EVENTS[0]))
            peer.stall()
        else:
            peer.send(response(200, b"data: x\n\n"))

    with RawServer(keep_alive(answer)) as srv:
        job = gevent.spawn(post, one, srv.url(), path="/stall")
        gevent.sleep(0.2)  # it is waiting for the stream's next byte
        job.kill(block=True, timeout=1)
        assert job.dead
        after = post(one, srv.url())
    assert_clean(after, b"data: x\n\n")
    assert srv.connections == 2  # the killed stream's connection was closed, not reused


def test_a_greenlet_killed_while_its_send_blocks_frees_its_slot(one: StreamClient) -> None:
    # A payload far over the socket buffers, to a server that does not read it: the send
    # blocks until the greenlet is killed (as at a point's end).
    payload = bytes(64 * 1024 * 1024)

    def answer(peer: Peer) -> None:
        if peer.index == 0:
            peer.server.closing.wait(GUARD_S)  # never reads
            return
        ok()(peer)

    with RawServer(answer) as srv:
        job = gevent.spawn(post, one, srv.url(), payload=payload)
        gevent.sleep(0.2)
        assert not job.dead  # still sending
        job.kill(block=True, timeout=1)
        assert job.dead
        after = post(one, srv.url())
    assert_clean(after, b"data: [DONE]\n\n")


# ---------------------------------------------------------------------------- https


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make a certificate with")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def test_https_to_a_self_signed_server_fails_verification_with_a_clear_error(
    one: StreamClient, self_signed: ssl.SSLContext
) -> None:
    with RawServer(ok(), tls=self_signed) as srv:
        got = post(one, srv.url())
        again = post(one, srv.url())  # the failed handshake gave its slot back
    assert (got.ex.status, got.ex.sent_at, got.ex.received) == (0, None, 0)
    assert "CERTIFICATE_VERIFY_FAILED" in got.ex.error
    assert "self-signed" in got.ex.error or "self signed" in got.ex.error
    assert again.ex.status == 0
    assert srv.requests == []  # no request went out over an unverified connection


# ---------------------------------------------------------------------------- through the users

CHILD = textwrap.dedent(
    """
    import json, sys

    import locust
    from locust.env import Environment

    from loadgen.users import measure_request, new_session

    url, out = sys.argv[1], sys.argv[2]
    session = new_session(Environment(events=locust.events), pool_size=1)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    rows = [
        measure_request(session, url, "chat", body, timeout_s=5.0, headers=headers)
        for headers in ({"Authorization": "Bearer a\\r\\nX-Injected: 1"}, {})
    ]
    session.close()
    with open(out, "w") as f:
        json.dump(rows, f)
    """
)


def test_a_bad_header_through_the_users_is_a_row_error_and_the_next_request_still_goes(
    tmp_path: Path,
) -> None:
    from loadgen.results import Col

    out = tmp_path / "rows.json"
    done = {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}]}
    with RawServer(ok(b"data: " + json.dumps(done).encode() + b"\n\ndata: [DONE]\n\n")) as srv:
        child = subprocess.run(
            [sys.executable, "-c", CHILD, srv.url(), str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert child.returncode == 0, child.stderr[-4000:]
    bad, good = json.loads(out.read_text())
    assert (bad[Col.STATUS], bad[Col.OK], bad[Col.RETRIES]) == (0, False, 0)
    assert bad[Col.ERROR].startswith("TransportError")
    assert (good[Col.STATUS], good[Col.ERROR]) == (200, "")
    assert len(srv.requests) == 1
    assert not srv.requests[0].header("X-Injected")


def test_a_callers_host_header_replaces_ours_and_framing_headers_are_refused() -> None:
    origin = transport._Origin(None, "127.0.0.1:9", "")  # type: ignore[arg-type]
    head = transport._request_head(origin, "/v1/x", 2, {"host": "api.example", "X-A": "1"})
    lines = head.decode().split("\r\n")
    assert [ln for ln in lines if ln.lower().startswith("host:")] == ["host: api.example"]
    assert "Content-Length: 2" in lines and "Accept-Encoding: identity" in lines
    with pytest.raises(TransportError, match="content-length"):
        transport._request_head(origin, "/v1/x", 2, {"Content-Length": "5"})
