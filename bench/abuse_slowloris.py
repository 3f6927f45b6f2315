"""Slowloris: many connections that never finish a request, while a real client is served.

Three kinds of abusive connection, in equal shares: one that sends nothing, one that sends
part of a request head and trickles one more header byte every second, and one that sends a
whole head announcing a 100 000-byte body and then only part of it. A well-behaved client
keeps sending small completions (streamed and not) and probing ``/health/live`` meanwhile.

The server should close the first two kinds by ``header_timeout_s`` (+2 s of slack) and the
third by ``body_timeout_s`` (+2 s), and keep serving the real client throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Final

from bench.abuse_common import (
    BENCH_TIMEOUTS,
    CONNECTIONS_CLOSED,
    CONNECTIONS_OPEN,
    HealthProbe,
    Metrics,
    ScenarioResult,
    Served,
    bench_settings,
    fmt_s,
    metrics_client,
    percentile,
    raise_fd_limit,
    raw_request,
    served,
    server_fds,
)
from service.settings import ServiceSettings

__all__ = ["KINDS", "run_slowloris"]

KINDS: Final = ("idle", "headers", "body")
_POLL_S: Final = 0.2
_TRICKLE_S: Final = 1.0
_BODY_LENGTH: Final = 100_000
_FD_MARGIN: Final = 256  # the bench's own descriptors besides the abusive sockets
_CONNECTION_MARGIN: Final = 32  # server connections left for the real client and probes


@dataclass
class _Conn:
    kind: str
    sock: socket.socket
    closed_at: float | None = None  # seconds after the abuse started
    answered: bool = False  # the server sent bytes (e.g. a 408) before closing


@dataclass
class _GoodClient:
    """Small completions one after another, streamed and not in turn."""

    host: str
    port: int
    model: str
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    async def run(self) -> None:
        stream = False
        while True:
            body = {"model": self.model, "prompt": "hello there", "max_tokens": 8}
            if stream:
                body["stream"] = True
            resp = await raw_request(
                self.host,
                self.port,
                "POST",
                "/v1/completions",
                json.dumps(body).encode(),
                timeout_s=10,
            )
            good = resp.status == 200 and resp.complete
            if stream:
                good = good and resp.body.rstrip().endswith(b"data: [DONE]")
            if good:
                self.ok += 1
                self.latencies.append(resp.elapsed_s)
            else:
                self.failed += 1
                why = resp.error or f"status {resp.status}"
                self.errors[why] = self.errors.get(why, 0) + 1
            stream = not stream
            await asyncio.sleep(0.05)


def _head(host: str, port: int) -> bytes:
    return f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()


async def _open(kind: str, host: str, port: int, model: str) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    if kind == "headers":
        await loop.sock_sendall(sock, _head(host, port) + b"X-Slow: ")
    elif kind == "body":
        head = (
            _head(host, port)
            + (f"Content-Type: application/json\r\nContent-Length: {_BODY_LENGTH}\r\n\r\n").encode()
        )
        await loop.sock_sendall(sock, head + f'{{"model": "{model}", "prompt": "'.encode())
    return sock


def _peer_closed(conn: _Conn) -> bool:
    """Whether the server has closed (FIN or RST); reads and drops whatever it sent."""
    while True:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if not data:
            return True
        conn.answered = True


def _open_counts(conns: list[_Conn]) -> dict[str, int]:
    return {k: sum(1 for c in conns if c.kind == k and c.closed_at is None) for k in KINDS}


def _fmt_counts(counts: dict[str, int], per_kind: int) -> str:
    total = sum(counts.values())
    return (
        f"{total} of {per_kind * len(KINDS)} ("
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + ")"
    )


@dataclass
class _Timeline:
    header_s: float  # checkpoint: header timeout + 2 s
    body_s: float  # checkpoint: body timeout + 2 s
    end_s: float


async def _abuse(
    result: ScenarioResult,
    srv: Served,
    per_kind: int,
    timeline: _Timeline,
) -> None:
    async with metrics_client(srv.base_url) as mc:
        m0 = await Metrics.read(mc)
        fds_start = server_fds(srv.pid)
        probe = HealthProbe(srv.base_url)
        good = _GoodClient(srv.host, srv.port, srv.model)
        probe.start()
        good_task = asyncio.ensure_future(good.run())
        t_open = time.perf_counter()
        socks = await asyncio.gather(
            *[
                _open(kind, srv.host, srv.port, srv.model)
                for kind in KINDS
                for _ in range(per_kind)
            ],
            return_exceptions=True,
        )
        conns: list[_Conn] = []
        open_errors = 0
        for i, s in enumerate(socks):
            if isinstance(s, socket.socket):
                conns.append(_Conn(KINDS[i // per_kind], s))
            else:
                open_errors += 1
        t0 = time.perf_counter()
        fds_peak = server_fds(srv.pid)
        at_header: dict[str, int] | None = None
        at_body: dict[str, int] | None = None
        m_header: Metrics | None = None
        next_trickle = t0 + _TRICKLE_S
        while (now := time.perf_counter() - t0) < timeline.end_s:
            for c in conns:
                if c.closed_at is None and _peer_closed(c):
                    c.closed_at = now
            if time.perf_counter() >= next_trickle:
                next_trickle += _TRICKLE_S
                for c in conns:
                    if c.kind == "headers" and c.closed_at is None:
                        try:
                            c.sock.send(b"a")
                        except BlockingIOError:
                            pass
                        except OSError:
                            c.closed_at = now
            fds_peak = max(fds_peak, server_fds(srv.pid))
            if at_header is None and now >= timeline.header_s:
                at_header = _open_counts(conns)
                m_header = await Metrics.read(mc)
            if at_body is None and now >= timeline.body_s:
                at_body = _open_counts(conns)
            await asyncio.sleep(_POLL_S)
        at_end = _open_counts(conns)
        fds_end = server_fds(srv.pid)
        m_end = await Metrics.read(mc)
        good_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await good_task
        await probe.stop()
        for c in conns:
            c.sock.close()
        await asyncio.sleep(1.0)
        fds_after = server_fds(srv.pid)
        m_after = await Metrics.read(mc)
    at_header = at_header if at_header is not None else at_end
    at_body = at_body if at_body is not None else at_end

    closed_times = {
        k: [c.closed_at for c in conns if c.kind == k and c.closed_at is not None] for k in KINDS
    }
    answered = sum(1 for c in conns if c.answered)
    result.row(
        "abusive connections opened",
        f"{len(conns)} ({open_errors} failed to open) in {t0 - t_open:.2f} s",
    )
    result.row(
        f"still open at t={timeline.header_s:g} s (header timeout + 2)",
        _fmt_counts(at_header, per_kind),
    )
    result.row(
        f"still open at t={timeline.body_s:g} s (body timeout + 2)", _fmt_counts(at_body, per_kind)
    )
    result.row(f"still open at end t={timeline.end_s:g} s", _fmt_counts(at_end, per_kind))
    for k in KINDS:
        ts = closed_times[k]
        result.row(
            f"  {k}: closed by server",
            f"{len(ts)} of {per_kind}" + (f", last at {max(ts):.2f} s" if ts else ""),
        )
    result.row("  answered before closing (e.g. 408)", str(answered))
    result.row(
        "server fds start / peak / end / 1 s after bench closed",
        f"{fds_start} / {fds_peak} / {fds_end} / {fds_after}",
    )
    lat = good.latencies
    result.row(
        "real requests ok / failed",
        f"{good.ok} / {good.failed}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in good.errors.items())})" if good.errors else ""),
    )
    result.row(
        "real request latency p50 / max",
        f"{fmt_s(percentile(lat, 0.5))} / {fmt_s(max(lat) if lat else None)}",
    )
    result.row("/health/live latency", probe.summary())
    for label, m in (
        ("start", m0),
        ("at header checkpoint", m_header),
        ("end", m_end),
        ("after bench closed", m_after),
    ):
        if m is None:
            continue
        closed = m.by_labels(CONNECTIONS_CLOSED, ("reason",))
        result.row(
            f"connections open / closed by reason ({label})",
            f"{m.total(CONNECTIONS_OPEN):g} / "
            + (", ".join(f"{k}: {v:g}" for k, v in closed.items() if v) or "none"),
        )

    result.figures.update(
        connections=len(conns),
        open_errors=open_errors,
        open_at_header_checkpoint=at_header,
        open_at_body_checkpoint=at_body,
        open_at_end=at_end,
        closed_times_s=closed_times,
        answered=answered,
        server_fds={"start": fds_start, "peak": fds_peak, "end": fds_end, "after": fds_after},
        real_ok=good.ok,
        real_failed=good.failed,
        real_errors=good.errors,
        real_latency_p50_s=percentile(lat, 0.5),
        real_latency_max_s=max(lat) if lat else None,
        health_p50_s=probe.p50,
        health_max_s=probe.max,
        health_failed=probe.failures,
        connections_open_gauge=m_end.total(CONNECTIONS_OPEN),
        connections_closed=m_after.by_labels(CONNECTIONS_CLOSED, ("reason",)),
    )
    head_open = at_header["idle"] + at_header["headers"]
    result.check(
        "idle + partial-head connections closed by header timeout + 2 s",
        f"{head_open} open",
        "0",
        head_open == 0,
    )
    result.check(
        "partial-body connections closed by body timeout + 2 s",
        f"{at_body['body']} open",
        "0",
        at_body["body"] == 0,
    )
    result.check("real requests failed", str(good.failed), "0", good.failed == 0 and good.ok > 0)


def run_slowloris(settings: ServiceSettings, *, connections: int = 300) -> ScenarioResult:
    """Run the scenario on a fresh replica and return its figures."""
    result = ScenarioResult("slowloris")
    settings, applied = bench_settings(settings, BENCH_TIMEOUTS)
    header_s = settings.header_timeout_s
    body_s = settings.body_timeout_s
    cap = settings.max_connections - _CONNECTION_MARGIN
    if connections > cap:
        result.notes.append(f"connections lowered to {cap}: max_connections - margin")
        connections = cap
    soft, hard = raise_fd_limit(connections + _FD_MARGIN)
    if connections + _FD_MARGIN > soft:
        connections = max(len(KINDS), soft - _FD_MARGIN)
        result.notes.append(f"connections lowered to {connections}: RLIMIT_NOFILE {soft}/{hard}")
    per_kind = max(1, connections // len(KINDS))
    timeline = _Timeline(header_s + 2, body_s + 2, max(header_s, body_s) + 3)
    result.row(
        "server timeouts (header / body)",
        f"{header_s:g} s / {body_s:g} s" + (" (bench defaults)" if applied else " (as set)"),
    )
    result.row("bench RLIMIT_NOFILE soft / hard", f"{soft} / {hard}")
    with served(settings) as srv:
        asyncio.run(_abuse(result, srv, per_kind, timeline))
        result.row("server errors logged", str(srv.errors_logged()))
    result.figures.update(header_timeout_s=header_s, body_timeout_s=body_s, per_kind=per_kind)
    return result
