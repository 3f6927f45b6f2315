"""Hostile clients against a real ``tokenbooth serve`` process (fake engine, loopback).

Connections that never finish their request head or body, a client that stops reading its
stream, too many connections, an oversized head: each must be bounded, answered in the OpenAI
error shape where an answer is possible, and counted, while well-behaved clients keep being
served. Every socket here is raw so the test controls exactly what the server receives.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.launch import Replica, explicit_settings, free_port, start_replica, stop_replicas
from service.launch import wait_ready as wait_replica_ready
from telemetry import names

pytestmark = pytest.mark.integration

HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"


@pytest.fixture
def replica(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Replica]:
    """A fake-engine replica with short connection bounds (overridable by ``indirect``)."""
    overrides = getattr(request, "param", {})
    values = {
        "engine": "fake",
        "port": free_port(),
        "fake_ttft_ms": 5.0,
        "fake_itl_ms": 0.5,
        "header_timeout_s": 1.0,
        "body_timeout_s": 1.5,
        "write_timeout_s": 1.0,
        "max_tokens_cap": 30_000,
        "fake_context_length": 32_768,
    }
    settings = explicit_settings(**(values | overrides))
    rep = start_replica(settings, log_path=tmp_path / "serve.log")
    try:
        wait_replica_ready(rep, timeout_s=30)
        yield rep
    finally:
        stop_replicas(rep, grace_s=10)


def _port(rep: Replica) -> int:
    return int(rep.base_url.rsplit(":", 1)[1])


def _fds(rep: Replica) -> int:
    return len(os.listdir(f"/proc/{rep.proc.pid}/fd"))


def _metric(rep: Replica, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(rep.base_url + "/metrics", timeout=5).text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def _read_all(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends until it closes (or ``timeout_s`` passes)."""
    sock.settimeout(timeout_s)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def test_connections_that_never_finish_their_request_are_closed_and_counted(
    replica: Replica,
) -> None:
    """Silent sockets, trickled headers and a partial body are all closed within the bounds.

    Before the guard, every one of them stayed open (900 of them for over 60 s in the review).
    """
    port = _port(replica)
    baseline_fds = _fds(replica)
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    partial_head = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(HEAD[:30])
        partial_head.append(s)
    partial_body = []
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(HEAD + b"Content-Length: 100000\r\n\r\n" + b'{"model": "fake')
        partial_body.append(s)
    time.sleep(0.3)
    assert _metric(replica, names.TOKENBOOTH_HTTP_CONNECTIONS_OPEN) >= 50
    # A well-behaved client is served while they hang.
    with httpx.Client(base_url=replica.base_url, timeout=5) as client:
        assert client.get("/health/live").status_code == 200
        body = {"model": "fake-model", "prompt": "hi", "max_tokens": 3}
        assert client.post("/v1/completions", json=body).status_code == 200
    t0 = time.monotonic()
    answers = [_read_all(s, 4.0) for s in silent + partial_head + partial_body]
    assert time.monotonic() - t0 < 4.0, "a connection outlived header_timeout/body_timeout"
    # Nothing sent: closed without a word; a partial head: 408; a partial body: the app's 408.
    assert all(a == b"" for a in answers[:20])
    for a in answers[20:]:
        assert a.startswith(b"HTTP/1.1 408 "), a[:80]
        error = json.loads(a.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] in ("header_timeout", "body_timeout")
    assert _metric(
        replica,
        names.TOKENBOOTH_HTTP_CONNECTIONS_CLOSED,
        reason=names.CONNECTION_CLOSE_HEADER_TIMEOUT,
    ) == pytest.approx(40)
    assert _metric(
        replica, names.TOKENBOOTH_REQUESTS, outcome="rejected", error_type="body_timeout"
    ) == pytest.approx(10)
    assert _metric(replica, names.TOKENBOOTH_HTTP_CONNECTIONS_OPEN) <= 1  # the scrape's own
    assert _fds(replica) <= baseline_fds + 1
    for s in silent + partial_head + partial_body:
        s.close()


@pytest.mark.parametrize(
    "replica", [{"max_connections": 30, "header_timeout_s": 30.0}], indirect=True
)
def test_past_max_connections_a_new_client_evicts_an_idle_one(replica: Replica) -> None:
    """30 idle sockets fill the cap; a real request still gets through, evicting the oldest."""
    port = _port(replica)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]
    time.sleep(0.2)
    with httpx.Client(base_url=replica.base_url, timeout=5) as client:
        body = {"model": "fake-model", "prompt": "hi", "max_tokens": 3}
        assert client.post("/v1/completions", json=body).status_code == 200
    assert (
        _metric(
            replica, names.TOKENBOOTH_HTTP_CONNECTIONS_CLOSED, reason=names.CONNECTION_CLOSE_EVICTED
        )
        >= 1
    )
    assert _read_all(idle[0], 2.0) == b"", "the oldest idle connection was the one evicted"
    for s in idle:
        s.close()


def test_an_oversized_request_head_is_a_431(replica: Replica) -> None:
    s = socket.create_connection(("127.0.0.1", _port(replica)))
    # The server may close before the last bytes are written.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.sendall(HEAD + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    answer = _read_all(s, 3.0)
    s.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]


def test_a_client_that_stops_reading_is_cut_and_not_counted_a_success(replica: Replica) -> None:
    """A stream of ~3 MB whose client reads 5 KB: freed after write_timeout, counted aborted.

    Before the fix the stream was held until the engine finished and then logged 200/length.
    """
    socks = []
    body = json.dumps(
        {
            "model": "fake-model",
            "prompt": "hi",
            "max_tokens": 20_000,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    for _ in range(2):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", _port(replica)))
        s.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        s.recv(5000)
        socks.append(s)
    running = names.TOKENBOOTH_REQUESTS_RUNNING
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        cut = _metric(replica, names.TOKENBOOTH_REQUESTS, error_type="write_timeout")
        if cut == 2 and _metric(replica, running) == 0:
            break
        time.sleep(0.2)
    assert _metric(
        replica, names.TOKENBOOTH_REQUESTS, outcome="aborted", error_type="write_timeout"
    ) == pytest.approx(2)
    assert _metric(replica, names.TOKENBOOTH_REQUESTS, outcome="length") == 0
    assert _metric(replica, running) == 0
    assert _metric(
        replica,
        names.TOKENBOOTH_HTTP_CONNECTIONS_CLOSED,
        reason=names.CONNECTION_CLOSE_WRITE_TIMEOUT,
    ) == pytest.approx(2)
    for s in socks:
        s.close()
