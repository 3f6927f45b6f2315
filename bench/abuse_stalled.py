"""Stalled reader: streams whose clients read a few KB, then stop reading but stay connected.

Each client shrinks its socket's receive buffer before connecting, so the stream's output
(``max_tokens`` tokens with ``ignore_eos``, produced at once by the fake engine) cannot all
sit in kernel buffers: the server's writes must block. The server should notice within
``write_timeout_s`` (+2 s), close the connection, free the request's slot and count it as
something other than a success.

Whether the server closed a socket is read from the client socket's ``TCP_INFO`` state
(reading it would unstall the stream): an RST or a FIN leaves ``ESTABLISHED``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from dataclasses import dataclass
from typing import Final

from bench.abuse_common import (
    BENCH_TIMEOUTS,
    Metrics,
    ScenarioResult,
    Served,
    bench_settings,
    counter_delta,
    fmt_s,
    metrics_client,
    served,
    server_fds,
    server_held_peers,
)
from service.settings import ServiceSettings
from telemetry import names

__all__ = ["run_stalled"]

_POLL_S: Final = 0.25
_TCP_ESTABLISHED: Final = 1
_TCP_STATES: Final = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE (reset)",
    8: "CLOSE_WAIT (FIN)",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
}
_SUCCESS: Final = (names.OUTCOME_STOP, names.OUTCOME_LENGTH)
_FAKE_MAX_TOKENS: Final = 32768


@dataclass
class _Stalled:
    sock: socket.socket
    read: int = 0
    events: int = 0  # SSE events in what was read
    closed_at: float | None = None  # seconds after the stall began: the client saw FIN/RST
    state: int = _TCP_ESTABLISHED
    released_at: float | None = None  # the server no longer holds its end of the connection

    @property
    def port(self) -> int:
        local: tuple[str, int] = self.sock.getsockname()
        return local[1]


def _wmem_max() -> int:
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 0


def _tcp_state(sock: socket.socket) -> int:
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return 0
    state: int = struct.unpack("B", info[:1])[0]
    return state


async def _stall_one(host: str, port: int, body: bytes, rcvbuf: int, read_bytes: int) -> _Stalled:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Before connect: the window scale is agreed in the handshake.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    await loop.sock_sendall(sock, head + body)
    st = _Stalled(sock)
    while st.read < read_bytes:
        data = await loop.sock_recv(sock, min(4096, read_bytes - st.read))
        if not data:
            break
        st.read += len(data)
        st.events += data.count(b"data: ")
    return st


async def _measure(
    result: ScenarioResult,
    srv: Served,
    streams: int,
    max_tokens: int,
    rcvbuf: int,
    read_bytes: int,
    window_s: float,
) -> None:
    body = json.dumps(
        {
            "model": srv.model,
            "prompt": "hello",
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
        }
    ).encode()
    requests = names.TOKENBOOTH_REQUESTS
    keys = (names.LABEL_OUTCOME, names.LABEL_ERROR_TYPE)
    async with metrics_client(srv.base_url) as mc:
        m0 = await Metrics.read(mc)
        fds_start = server_fds(srv.pid)
        stalled = await asyncio.gather(
            *[_stall_one(srv.host, srv.port, body, rcvbuf, read_bytes) for _ in range(streams)]
        )
        t0 = time.perf_counter()
        fds_peak = server_fds(srv.pid)
        running_zero_at: float | None = None
        recorded_at: float | None = None  # every stalled request counted as finished
        running_max = 0.0
        m_window = m0
        while (now := time.perf_counter() - t0) < window_s:
            m_window = await Metrics.read(mc)
            running = m_window.total(names.TOKENBOOTH_REQUESTS_RUNNING)
            running_max = max(running_max, running)
            if running == 0 and running_zero_at is None:
                running_zero_at = now
            elif running > 0:
                running_zero_at = None
            recorded = counter_delta(
                m0.by_labels(requests, keys), m_window.by_labels(requests, keys)
            )
            if recorded_at is None and sum(recorded.values()) >= streams:
                recorded_at = now
            held = server_held_peers(srv.pid, srv.port)
            for st in stalled:
                if st.closed_at is None:
                    state = _tcp_state(st.sock)
                    if state != _TCP_ESTABLISHED:
                        st.closed_at, st.state = now, state
                if st.released_at is None and held is not None and st.port not in held:
                    st.released_at = now
                if st.released_at is None and st.closed_at is not None:
                    st.released_at = st.closed_at
            fds_peak = max(fds_peak, server_fds(srv.pid))
            await asyncio.sleep(_POLL_S)
        fds_end = server_fds(srv.pid)
        for st in stalled:
            st.sock.close()
        await asyncio.sleep(1.0)
        m_after = await Metrics.read(mc)
        fds_after = server_fds(srv.pid)

    during = counter_delta(m0.by_labels(requests, keys), m_window.by_labels(requests, keys))
    after = counter_delta(m0.by_labels(requests, keys), m_after.by_labels(requests, keys))
    tokens = m_window.total(names.TOKENBOOTH_GENERATION_TOKENS) - m0.total(
        names.TOKENBOOTH_GENERATION_TOKENS
    )
    successes = sum(v for k, v in during.items() if k.split(",")[0].split("=")[1] in _SUCCESS)
    closed = [st for st in stalled if st.closed_at is not None]
    last_close = max((st.closed_at for st in closed if st.closed_at is not None), default=None)
    released = [st.released_at for st in stalled if st.released_at is not None]
    last_release = max(released, default=None)
    how: dict[str, int] = {}
    for st in closed:
        label = _TCP_STATES.get(st.state, str(st.state))
        how[label] = how.get(label, 0) + 1

    result.row("stalled streams", f"{len(stalled)} (each read {read_bytes} B, then stopped)")
    result.row(
        "bytes read per stream",
        f"min {min(s.read for s in stalled)} / max {max(s.read for s in stalled)}",
    )
    per_event = sum(s.read for s in stalled) / max(1, sum(s.events for s in stalled))
    result.row(
        "stream output vs kernel send buffer",
        f"~{per_event * max_tokens / 1e6:.1f} MB per stream (~{per_event:.0f} B per token) vs "
        f"tcp_wmem max {_wmem_max() / 1e6:.1f} MB",
    )
    result.row("tokens generated while stalled", f"{tokens:g} of {streams * max_tokens} asked")
    result.row(
        f"{names.TOKENBOOTH_REQUESTS_RUNNING} back to 0 after",
        fmt_s(running_zero_at) + f" (peak {running_max:g})",
    )
    result.row(f"all {streams} counted in {requests} after", fmt_s(recorded_at))
    result.row(
        "server released its end of the stalled connections",
        f"{len(released)} of {len(stalled)}"
        + (f", last at {last_release:.2f} s" if released else f" within {window_s:g} s"),
    )
    result.row(
        "client saw the close (FIN/RST)",
        f"{len(closed)} of {len(stalled)}"
        + (
            f", last at {last_close:.2f} s ({', '.join(f'{k}: {v}' for k, v in how.items())})"
            if closed
            else " (a FIN queues behind the unread data; only an RST gets through)"
        ),
    )
    result.row(
        "server fds start / peak / end / 1 s after bench closed",
        f"{fds_start} / {fds_peak} / {fds_end} / {fds_after}",
    )
    result.row(
        f"{requests} during the stall",
        ", ".join(f"{k}: {v:g}" for k, v in during.items()) or "nothing recorded",
    )
    result.row(
        f"{requests} 1 s after the bench hung up",
        ", ".join(f"{k}: {v:g}" for k, v in after.items()) or "nothing recorded",
    )
    result.figures.update(
        streams=len(stalled),
        max_tokens=max_tokens,
        read_bytes=[s.read for s in stalled],
        tokens_generated=tokens,
        running_zero_after_s=running_zero_at,
        running_peak=running_max,
        recorded_after_s=recorded_at,
        server_released=len(released),
        server_released_last_s=last_release,
        client_saw_close=len(closed),
        client_saw_close_last_s=last_close,
        client_saw_close_how=how,
        server_fds={"start": fds_start, "peak": fds_peak, "end": fds_end, "after": fds_after},
        requests_during=during,
        requests_after_hangup=after,
        successes_during=successes,
    )
    write_s = float(result.figures["write_timeout_s"])
    limit = write_s + 2
    freed = running_zero_at is not None and running_zero_at <= limit
    result.check(
        f"{names.TOKENBOOTH_REQUESTS_RUNNING} back to 0 by write timeout + 2 s",
        fmt_s(running_zero_at),
        f"<= {limit:g} s",
        freed,
    )
    all_released = (
        len(released) == len(stalled) and last_release is not None and last_release <= limit
    )
    result.check(
        "stalled connections closed by the server by write timeout + 2 s",
        f"{len(released)} of {len(stalled)}"
        + (f" by {last_release:.2f} s" if last_release is not None else ""),
        f"all by {limit:g} s",
        all_released,
    )
    result.check(
        "stalled requests ended (counted) by write timeout + 2 s",
        fmt_s(recorded_at),
        f"<= {limit:g} s",
        recorded_at is not None and recorded_at <= limit,
    )
    result.check("stalled streams counted as success", f"{successes:g}", "0", successes == 0)


def run_stalled(
    settings: ServiceSettings,
    *,
    streams: int = 8,
    max_tokens: int | None = None,
    read_bytes: int = 5000,
    rcvbuf: int = 4096,
) -> ScenarioResult:
    """Run the scenario on a fresh replica and return its figures."""
    result = ScenarioResult("stalled")
    defaults: dict[str, float | int] = {"write_timeout_s": BENCH_TIMEOUTS["write_timeout_s"]}
    if settings.engine != "fake":
        # The bound is the server's, whatever the engine; a CPU model streaming 8 requests
        # needs minutes to fill the ~70 KB of transport and kernel buffers a stall starts at.
        result.notes.append(
            f"runs on the fake engine (asked: {settings.engine}): the write timeout does not "
            "depend on the engine, and a CPU model takes minutes to fill the buffers"
        )
        given = {k: getattr(settings, k) for k in settings.model_fields_set}
        settings = ServiceSettings(**(given | {"engine": "fake"}))
    if settings.engine == "fake":
        # Output as fast as the service can send it: the stall is the only thing that waits.
        # Loopback kernel buffers take ~3 MB per connection (the sender's buffer grows to
        # tcp_wmem's maximum): the fake engine's ~170 B per token needs more tokens than the
        # default cap to overflow them, or the server hands everything to the kernel and
        # (rightly) never sees a stall.
        defaults |= {
            "fake_itl_ms": 0.0,
            "fake_ttft_ms": 5.0,
            "max_tokens_cap": _FAKE_MAX_TOKENS,
            "fake_context_length": 2 * _FAKE_MAX_TOKENS,
        }
    settings, _ = bench_settings(settings, defaults)
    if max_tokens is None:
        max_tokens = _FAKE_MAX_TOKENS if settings.engine == "fake" else 1024
    if max_tokens > settings.max_tokens_cap:
        result.notes.append(f"max_tokens lowered to the server's cap {settings.max_tokens_cap}")
        max_tokens = settings.max_tokens_cap
    write_s = settings.write_timeout_s
    result.figures["write_timeout_s"] = write_s
    if settings.engine == "fake" and settings.fake_itl_ms == 0:
        result.notes.append(
            "at 0 ms per token the fake engine finishes generating before the stall, so "
            f"{names.TOKENBOOTH_REQUESTS_RUNNING} is 0 from the start; the request count and "
            "the server's sockets tell whether the stalled streams were freed"
        )
    # The stall starts once the buffers are full: the fake engine fills them at once, a real
    # model at its decode speed.
    window_s = write_s + 4
    result.row(
        "write timeout",
        f"{write_s:g} s",
    )
    result.row("client SO_RCVBUF / max_tokens", f"{rcvbuf} B / {max_tokens}")
    sndbuf = settings.send_buffer_bytes
    result.row(
        "server SO_SNDBUF",
        f"{sndbuf} B (--send-buffer-bytes)" if sndbuf else "kernel autotuning (tcp_wmem)",
    )
    with served(settings) as srv:
        asyncio.run(_measure(result, srv, streams, max_tokens, rcvbuf, read_bytes, window_s))
        result.row("server errors logged", str(srv.errors_logged()))
    return result
