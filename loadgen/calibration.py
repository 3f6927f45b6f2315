"""The calibration gate: how much load this harness process can generate, and which points ask more.

Before a sweep the harness measures its own ceiling against a server that costs nothing
(:mod:`loadgen.canned_server`): closed-loop saturation with many greenlets for about a second
at two stream lengths, with the real request path (:func:`loadgen.users.measure_request`:
requests, SSE parsing, row building). Each measurement gives a per-request CPU cost; two of
them fit ``cost(n) = fixed + per_chunk * n``, so the ceiling for any output length is
``1 / cost(n)`` requests/s. The result is cached per machine (hostname, CPU count, tokenbooth
version, a digest of the request path's source) under ``~/.cache/tokenbooth/``.

A point asks for more than the harness can give when its expected request rate exceeds
``ceiling x SAFETY`` (x workers, at most the cores): open loop, its offered rate; closed loop,
its concurrency times the per-user rate the previous closed-loop point of the same
configuration achieved (an upper bound: latency only grows with load); the first closed-loop
point has no estimate and is not judged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "SAFETY",
    "Ceiling",
    "Gate",
    "GateVerdict",
    "cached_ceiling",
    "closed_loop_rate",
    "fit_ceiling",
    "judge_point",
    "measure_ceiling",
    "measure_saturation_rps",
    "sweep_gate",
]

logger = logging.getLogger("tokenbooth.loadgen")

# What share of its closed-loop saturation one harness process holds open loop (rate achieved
# within 2 %, send lag p95 <= 10 ms): `tokenbooth bench loadgen` prints it; 0.59 on this 2-core
# VM (3,500 of 5,941 req/s at 64 chunks; 4,000 did not hold). Open loop costs more than the
# closed-loop estimate: a dispatcher greenlet, a greenlet spawn per send, timers, and rows
# kept for the whole point. Kept under the measured share, so the gate never allows a rate the
# harness was seen to miss.
SAFETY: Final = 0.55
_SHORT_CHUNKS: Final = 1
_LONG_CHUNKS: Final = 64


@dataclass(frozen=True)
class Ceiling:
    """This process's per-request cost model: seconds of harness time per request and chunk."""

    fixed_s: float
    per_chunk_s: float
    source: str  # how it was obtained: "measured", "cache: PATH"

    def rps(self, chunks: float) -> float:
        """Requests/s one process sustains at saturation with ``chunks`` streamed per response."""
        cost = self.fixed_s + self.per_chunk_s * max(chunks, 1.0)
        return math.inf if cost <= 0 else 1.0 / cost


@dataclass(frozen=True)
class GateVerdict:
    """Whether a point fits the harness: its expected rate, the allowed rate, and a message."""

    ok: bool
    expected_rps: float  # NaN: no estimate (the first closed-loop point)
    allowed_rps: float
    message: str


def fit_ceiling(
    short: tuple[int, float], long: tuple[int, float], source: str = "measured"
) -> Ceiling:
    """The cost model through two ``(chunks, saturation requests/s)`` measurements."""
    (n1, r1), (n2, r2) = short, long
    c1, c2 = 1.0 / r1, 1.0 / r2
    per_chunk = max((c2 - c1) / (n2 - n1), 0.0)
    fixed = max(c1 - per_chunk * n1, 0.0)
    return Ceiling(fixed, per_chunk, source)


def closed_loop_rate(concurrency: float, prev_concurrency: float, prev_rps: float) -> float:
    """Expected requests/s of a closed-loop point from the previous point's per-user rate."""
    if prev_concurrency <= 0 or not prev_rps > 0:
        return math.nan
    return concurrency * prev_rps / prev_concurrency


def judge_point(
    expected_rps: float,
    ceiling: Ceiling,
    chunks: float,
    *,
    processes: int = 1,
    cores: int | None = None,
    safety: float = SAFETY,
) -> GateVerdict:
    """Judge one point: does ``expected_rps`` fit ``processes`` harness processes' ceiling?

    Workers are assumed to scale linearly up to the cores (``bench loadgen`` measures whether
    they do); ``cores`` defaults to this machine's.
    """
    usable = max(1, min(processes, cores if cores is not None else (os.cpu_count() or 1)))
    allowed = ceiling.rps(chunks) * safety * usable
    if math.isnan(expected_rps):
        return GateVerdict(True, expected_rps, allowed, "no rate estimate yet (first point)")
    if expected_rps <= allowed:
        return GateVerdict(True, expected_rps, allowed, "within the harness's ceiling")
    msg = (
        f"asks about {expected_rps:.1f} req/s, more than this harness can generate reliably "
        f"here: {allowed:.1f} req/s ({usable} process(es) x {ceiling.rps(chunks):.0f} req/s "
        f"ceiling at {chunks:g} chunks x safety {safety:g}); add --workers or machines"
    )
    return GateVerdict(False, expected_rps, allowed, msg)


def measure_saturation_rps(url: str, chunks: int, seconds: float, users: int = 32) -> float:
    """Requests/s the harness completes against ``url`` with ``users`` greenlets back to back.

    Imports Locust (gevent patching): call it only from the sweep process or a benchmark.
    """
    import gevent
    from locust.env import Environment

    from loadgen.users import measure_request

    env = Environment()
    from loadgen.users import new_session

    body = {"model": "canned", "prompt": "x", "max_tokens": chunks, "stream": True}
    done = [0]
    stop_at = time.perf_counter() + seconds

    def loop() -> None:
        session = new_session(env, pool_size=4)
        while time.perf_counter() < stop_at:
            row = measure_request(session, url, "completions", body, timeout_s=10.0)
            if row["ok"]:
                done[0] += 1

    t0 = time.perf_counter()
    gevent.joinall([gevent.spawn(loop) for _ in range(users)])
    return done[0] / (time.perf_counter() - t0)


def measure_ceiling(seconds: float = 1.0) -> Ceiling:
    """Measure this process's cost model against canned nginx (:func:`fit_ceiling`).

    Raises:
        FileNotFoundError: nginx is not installed.
    """
    from loadgen.canned_server import canned_nginx

    points = []
    for chunks in (_SHORT_CHUNKS, _LONG_CHUNKS):
        with canned_nginx(chunks) as server:
            measure_saturation_rps(server.url, chunks, 0.2)  # connections and caches warm
            points.append((chunks, measure_saturation_rps(server.url, chunks, seconds)))
    return fit_ceiling(points[0], points[1])


# The modules a request's harness cost comes from: a change to any of them is a new ceiling.
_REQUEST_PATH: Final = ("users.py", "transport.py", "sse.py", "tokenize.py", "gcguard.py")


def _code_key() -> str:
    """A digest of the request path's source, so a cached ceiling never outlives its code."""
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _REQUEST_PATH:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:12]


def _cache_path() -> Path:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("tokenbooth")
    except PackageNotFoundError:
        ver = "unknown"
    key = f"{socket.gethostname()}-{os.cpu_count()}cpu-{ver}-{_code_key()}"
    return Path.home() / ".cache" / "tokenbooth" / f"loadgen-ceiling-{key}.json"


def cached_ceiling(refresh: bool = False, seconds: float = 1.0) -> Ceiling:
    """The cached ceiling for this machine and version, measured (and cached) when absent."""
    path = _cache_path()
    if not refresh and path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return Ceiling(data["fixed_s"], data["per_chunk_s"], f"cache: {path}")
    ceiling = measure_ceiling(seconds)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(ceiling) | {"measured_at": time.time()}))
    return ceiling


class Gate:
    """One sweep's gate: the ceiling, the verdicts so far, and whether a misfit refuses.

    ``processes`` is the harness's sending processes (Locust workers, or 1); ``chunks`` the
    workload's mean streamed tokens per response.
    """

    def __init__(
        self, ceiling: Ceiling | None, *, chunks: float, processes: int, strict: bool
    ) -> None:
        self.ceiling = ceiling
        self.chunks = chunks
        self.processes = processes
        self.strict = strict
        self.verdicts: dict[str, GateVerdict] = {}
        self._last_closed: dict[str, tuple[float, float]] = {}  # config -> (users, req/s)

    def check(self, key: str, config_id: str, mode: str, value: float, rps: float) -> None:
        """Judge the point ``key`` before it runs: warn, or raise when strict and it misfits.

        ``rps`` is an open-loop point's offered requests/s (NaN for closed loop, whose rate is
        estimated from the configuration's previous closed-loop point).

        Raises:
            TokenboothError: strict, and the point asks more than the harness gives.
        """
        if self.ceiling is None:
            return
        if mode != "rate":
            prev = self._last_closed.get(config_id)
            rps = math.nan if prev is None else closed_loop_rate(value, *prev)
        verdict = judge_point(rps, self.ceiling, self.chunks, processes=self.processes)
        self.verdicts[key] = verdict
        if verdict.ok:
            return
        if self.strict:
            from service.errors import TokenboothError

            raise TokenboothError(f"calibration gate (--strict): point {key} {verdict.message}")
        logger.warning("calibration gate: point %s %s", key, verdict.message)

    def record(self, config_id: str, mode: str, value: float, achieved_rps: float) -> None:
        """Remember a finished closed-loop point's rate: the next one's estimate scales it."""
        if mode != "rate" and achieved_rps > 0:
            self._last_closed[config_id] = (value, achieved_rps)

    def describe(self) -> dict[str, Any]:
        """What ``environment.json`` records: the ceiling, the safety, every verdict."""
        base: dict[str, Any] = {
            "safety": SAFETY,
            "processes": self.processes,
            "strict": self.strict,
        }
        if self.ceiling is None:
            return base | {"ceiling": None}
        return base | {
            "ceiling": asdict(self.ceiling),
            "ceiling_rps": self.ceiling.rps(self.chunks),
            "chunks": self.chunks,
            "points": {k: asdict(v) for k, v in self.verdicts.items()},
        }


def sweep_gate(chunks: float, processes: int, *, strict: bool) -> Gate:
    """The gate for a sweep: the cached (or freshly measured) ceiling, or none without nginx."""
    try:
        measured = cached_ceiling()
    except (FileNotFoundError, RuntimeError) as exc:
        # Said, not silent: the sweep runs, its points unjudged.
        logger.warning("calibration gate off: the harness's ceiling cannot be measured: %s", exc)
        return Gate(None, chunks=chunks, processes=processes, strict=strict)
    logger.info(
        "calibration: this harness process sustains about %.0f req/s at %g chunks (%s)",
        measured.rps(chunks),
        chunks,
        measured.source,
    )
    return Gate(measured, chunks=chunks, processes=processes, strict=strict)
