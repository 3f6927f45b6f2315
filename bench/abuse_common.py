"""What every ``bench abuse`` scenario shares: its replica, probes, raw HTTP and figures.

Each scenario runs against its own ``tokenbooth serve`` process on loopback, so one
scenario's leftovers (connections, buffered tokens, descriptors) cannot colour the next
one's figures. Settings the service does not have on this tree (the connection timeouts
arrive with the hardening work) are not passed; the scenario still judges the server
against the value it would have passed, so the same command shows the 'before' picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from service.launch import LOOPBACK, Replica, free_port, start_replica, stop_replicas, wait_ready
from service.settings import ServiceSettings
from telemetry import names

__all__ = [
    "BENCH_TIMEOUTS",
    "CONNECTIONS_CLOSED",
    "CONNECTIONS_OPEN",
    "EVENT_LOOP_LAG",
    "Check",
    "HealthProbe",
    "Metrics",
    "RawResponse",
    "ScenarioResult",
    "Served",
    "bench_settings",
    "counter_delta",
    "fmt_s",
    "histogram_delta",
    "metrics_client",
    "percentile",
    "raise_fd_limit",
    "raw_request",
    "served",
    "server_fds",
    "server_held_peers",
    "with_defaults",
]

CONNECTIONS_OPEN: Final = names.TOKENBOOTH_HTTP_CONNECTIONS_OPEN
CONNECTIONS_CLOSED: Final = names.TOKENBOOTH_HTTP_CONNECTIONS_CLOSED
EVENT_LOOP_LAG: Final = names.TOKENBOOTH_EVENT_LOOP_LAG

BENCH_TIMEOUTS: Final[Mapping[str, float]] = {
    "header_timeout_s": 2.0,
    "body_timeout_s": 3.0,
    "write_timeout_s": 2.0,
}
"""Connection timeouts the bench runs the server with (short, so a run takes seconds)."""


@dataclass(frozen=True)
class Check:
    """One target of a scenario, met or not."""

    name: str
    value: str
    target: str
    ok: bool


@dataclass
class ScenarioResult:
    """A scenario's table rows, its checks and its figures (the ``--json`` content)."""

    name: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every check met (a scenario without checks has not shown anything: not ok)."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    def row(self, label: str, value: str) -> None:
        """Add a table row."""
        self.rows.append((label, value))

    def check(self, name: str, value: str, target: str, ok: bool) -> None:
        """Add a target and whether it was met."""
        self.checks.append(Check(name, value, target, ok))


def percentile(xs: Iterable[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``xs`` by the nearest-rank method; NaN when empty."""
    data = sorted(xs)
    if not data:
        return math.nan
    rank = max(1, math.ceil(q * len(data)))
    return data[rank - 1]


def fmt_s(x: float | None) -> str:
    """Seconds with ms resolution, or 'n/a'."""
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:.3f} s"


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE towards ``needed`` (at most the hard limit).

    The replica inherits the limit, so call it before the replica starts. Returns the
    (soft, hard) limits now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard


def bench_settings(
    settings: ServiceSettings, defaults: Mapping[str, Any]
) -> tuple[ServiceSettings, dict[str, Any]]:
    """``settings`` with the bench's ``defaults`` for fields the user did not set.

    Returns (settings, the defaults applied). A field set by flag or environment is left as
    the user set it.
    """
    applied = {k: v for k, v in defaults.items() if k not in settings.model_fields_set}
    return with_defaults(settings, applied), applied


def with_defaults(settings: ServiceSettings, values: Mapping[str, Any]) -> ServiceSettings:
    """``settings`` plus ``values`` for fields it was not given, validated as a whole.

    Only the fields set by flag or environment are carried over, so the result still tells
    them from defaults (``model_fields_set``); ``model_copy`` would skip the validators.
    """
    given = {k: getattr(settings, k) for k in settings.model_fields_set}
    return ServiceSettings(**({k: v for k, v in values.items() if k not in given} | given))


def server_fds(pid: int) -> int:
    """Open file descriptors of process ``pid`` (-1 once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def server_held_peers(pid: int, port: int) -> set[int] | None:
    """Peer ports of the TCP connections on local ``port`` that process ``pid`` holds open.

    A connection the server has closed may live on in the kernel (a FIN queued behind data a
    stalled reader never takes): it is no longer the server's, and not counted here. None
    where ``/proc`` cannot tell (not Linux, another user's process).
    """
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        with open("/proc/net/tcp") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    peers: set[int] = set()
    for line in lines:
        cols = line.split()
        if len(cols) < 10:
            continue
        local_port = int(cols[1].rsplit(":", 1)[1], 16)
        if local_port == port and cols[9] in inodes:
            remote_port = int(cols[2].rsplit(":", 1)[1], 16)
            if remote_port != 0:  # 0: the listening socket
                peers.add(remote_port)
    return peers


@dataclass
class Served:
    """A running replica under test."""

    replica: Replica
    settings: ServiceSettings
    host: str
    port: int
    log_path: Path
    model: str  # the served model's id, as clients name it

    @property
    def base_url(self) -> str:
        """``http://host:port``."""
        return self.replica.base_url

    @property
    def pid(self) -> int:
        """The server process id."""
        return self.replica.proc.pid

    def errors_logged(self) -> int:
        """Lines at ERROR or above, or with a traceback, in the replica's log so far."""
        if not self.log_path.exists():
            return 0
        count = 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            if (
                '"level": "ERROR"' in line
                or '"level":"ERROR"' in line
                or '"level": "CRITICAL"' in line
                or "Traceback" in line
                or " ERROR " in line
            ):
                count += 1
        return count


@contextlib.contextmanager
def served(settings: ServiceSettings, *, grace_s: float = 30.0) -> Iterator[Served]:
    """A fresh replica with ``settings`` on a free loopback port, ready; stopped afterwards.

    Logs warnings and errors to a temporary file so a scenario can count the server's errors.
    """
    port = free_port()
    update = {"host": LOOPBACK, "port": port, "log_level": "WARNING"}
    run_settings = settings.model_copy(update=update)
    with tempfile.TemporaryDirectory(prefix="tokenbooth-abuse-") as tmp:
        log_path = Path(tmp) / "serve.log"
        replica = start_replica(run_settings, log_path=log_path)
        try:
            wait_ready(replica, timeout_s=300)
            models = httpx.get(replica.base_url + "/v1/models", timeout=10, trust_env=False)
            model = str(models.json()["data"][0]["id"])
            yield Served(replica, run_settings, LOOPBACK, port, log_path, model)
        finally:
            stop_replicas(replica, grace_s=grace_s)


class Metrics:
    """One ``/metrics`` snapshot, read by sample name (counters keep their ``_total``)."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    @classmethod
    async def read(cls, client: httpx.AsyncClient) -> Metrics:
        """Scrape the service."""
        text = (await client.get("/metrics")).text
        return cls([s for f in text_string_to_metric_families(text) for s in f.samples])

    def has(self, name: str) -> bool:
        """Whether any sample of ``name`` (or of the histogram ``name``) is exported."""
        return any(s.name == name or s.name.startswith(name + "_") for s in self.samples)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels``."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def by_labels(self, name: str, keys: tuple[str, ...]) -> dict[str, float]:
        """``{"k1=v1,k2=v2": value}`` of the samples named ``name``, summed over other labels."""
        out: dict[str, float] = {}
        for s in self.samples:
            if s.name == name:
                key = ",".join(f"{k}={s.labels.get(k, '')}" for k in keys) or "-"
                out[key] = out.get(key, 0.0) + s.value
        return out

    def buckets(self, name: str) -> dict[float, float]:
        """Cumulative counts by upper bound of the histogram ``name`` (over all labels)."""
        out: dict[float, float] = {}
        for s in self.samples:
            if s.name == name + "_bucket":
                le = float(s.labels["le"])
                out[le] = out.get(le, 0.0) + s.value
        return out


def counter_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Label sets whose counter grew, with the growth."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def histogram_delta(before: Metrics, after: Metrics, name: str) -> tuple[int, float, float]:
    """(count, mean, upper bound of the largest observation) of ``name`` between two scrapes."""
    count = after.total(name + "_count") - before.total(name + "_count")
    total = after.total(name + "_sum") - before.total(name + "_sum")
    b0, b1 = before.buckets(name), after.buckets(name)
    upper = math.nan
    for le in sorted(b1):
        if b1[le] - b0.get(le, 0.0) >= count:
            upper = le
            break
    return int(count), (total / count if count else math.nan), upper


class HealthProbe:
    """``GET /health/live`` every ``interval_s`` on one keep-alive connection.

    Its latency is the time the server's event loop takes to answer a trivial route: when
    it rises, every connection on that loop waits as long.
    """

    def __init__(self, base_url: str, interval_s: float = 0.1, timeout_s: float = 10.0) -> None:
        self._base_url = base_url
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self.latencies: list[float] = []
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with httpx.AsyncClient(
            base_url=self._base_url, timeout=self._timeout_s, trust_env=False
        ) as client:
            while True:
                t0 = time.perf_counter()
                try:
                    r = await client.get("/health/live")
                    if r.status_code == 200:
                        self.latencies.append(time.perf_counter() - t0)
                    else:
                        self.failures += 1
                except httpx.HTTPError:
                    self.failures += 1
                await asyncio.sleep(max(0.0, self._interval_s - (time.perf_counter() - t0)))

    def start(self) -> None:
        """Start probing in the background."""
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop probing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def reset(self) -> None:
        """Forget what was measured so far (between phases)."""
        self.latencies = []
        self.failures = 0

    @property
    def p50(self) -> float:
        """Median latency (NaN without a sample)."""
        return statistics.median(self.latencies) if self.latencies else math.nan

    @property
    def max(self) -> float:
        """Worst latency (NaN without a sample)."""
        return max(self.latencies) if self.latencies else math.nan

    def summary(self) -> str:
        """``p50 / max (n probes, failures)``."""
        return (
            f"p50 {fmt_s(self.p50)} / max {fmt_s(self.max)} "
            f"({len(self.latencies)} probes, {self.failures} failed)"
        )


@dataclass
class RawResponse:
    """What a raw HTTP/1.1 exchange got back."""

    status: int = 0  # 0: no status line (refused, reset, closed before answering)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False  # the body ended as framed (Content-Length or the last chunk)
    error: str | None = None  # why reading stopped early
    elapsed_s: float = 0.0
    first_byte_s: float | None = None


async def _read_body(reader: asyncio.StreamReader, resp: RawResponse) -> None:
    if resp.headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        try:
            while True:
                line = await reader.readline()
                if not line.endswith(b"\r\n"):
                    return  # cut mid-frame
                size = int(line.split(b";", 1)[0].strip(), 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    resp.complete = True
                    return
                parts.append(data[:-2])
        finally:
            resp.body = b"".join(parts)
    length = resp.headers.get("content-length")
    if length is not None:
        resp.body = await reader.readexactly(int(length))
        resp.complete = True
        return
    resp.body = await reader.read()  # close-delimited
    resp.complete = True


async def raw_request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    content_type: str = "application/json",
    timeout_s: float = 60.0,
) -> RawResponse:
    """One request on a fresh connection (``Connection: close``), read to its end.

    Never raises for what the server does: a reset, a truncated body or a timeout is
    reported in :attr:`RawResponse.error` with what arrived before it.
    """
    resp = RawResponse()
    t0 = time.perf_counter()
    writer: asyncio.StreamWriter | None = None

    async def exchange() -> None:
        nonlocal writer
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        writer.write(head + body)
        await writer.drain()
        status = await reader.readline()
        resp.first_byte_s = time.perf_counter() - t0
        parts = status.split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            resp.error = "no status line" if not status else f"bad status line {status[:40]!r}"
            return
        resp.status = int(parts[1])
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            resp.headers[key.strip().lower()] = value.strip()
        await _read_body(reader, resp)

    try:
        await asyncio.wait_for(exchange(), timeout_s)
    except TimeoutError:
        resp.error = f"timeout after {timeout_s:g} s"
    except asyncio.IncompleteReadError:
        resp.error = "truncated"
    except (OSError, ValueError) as exc:
        resp.error = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
    resp.elapsed_s = time.perf_counter() - t0
    if resp.error is not None:
        resp.complete = False
    return resp


@contextlib.asynccontextmanager
async def metrics_client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client for ``/metrics`` (no proxy from the environment: loopback)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30, trust_env=False) as client:
        yield client
