"""``tokenbooth bench compare``: two OpenAI-compatible servers, the same client, one run.

Each load level runs on A, then B, then A, then B (``repeats`` pairs), so the machine's drift
between minutes shows up in the spread instead of in the ratio. Every phase is a warm-up
(discarded) and a measurement window, and starts only once both servers are idle (they share
the machine).

- Closed loop at N streams: independent users, each sending its next request when its last
  one ends. Their first sends are spread evenly over one lone request's duration
  (:func:`loadgen.arrivals.ramp_offsets`; even rather than random, whose clumps are the
  lockstep the spread removes), so they never all send at once. The window opens after the
  warm-up and not before every user has finished a first request.
- Open loop (Poisson): seeded exponential gaps; a request is sent at its scheduled time
  whatever the server does (only an in-flight bound can hold it, and that wait counts), and
  its latency runs from the scheduled time, so coordinated omission is visible.

Requests are chat completions of distinct prompts (seeded, never repeated within a run for a
server, so no prefix cache can serve one phase from another), ``max_tokens`` with
``ignore_eos`` and the usage checked. A and B get the same prompts and the same schedules.
The load is kept up after the window until every request sent inside it has finished, so the
last measured requests see the same load as the first; those sent after it are cancelled.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.chat_client import Endpoint, stream_chat
from loadgen.arrivals import arrival_offsets, ramp_offsets
from loadgen.servers.adapter import RawSample
from loadgen.servers.registry import ADAPTERS
from loadgen.sse import StreamTally
from loadgen.summary import percentile
from loadgen.workload import WordCounter, synthetic_text
from telemetry import names

__all__ = [
    "CompareConfig",
    "Level",
    "PhaseFigures",
    "ServeSpec",
    "Spread",
    "Summary",
    "levels_from",
    "phase_figures",
    "prompt_stream",
    "ratios",
    "run_compare",
    "summarise",
    "table_markdown",
]

CPU_WARN_SHARE: Final = 0.5
"""The client's own CPU (share of one core) above which its figures may carry its own delay."""
_IDLE_LIMIT_S: Final = 120.0
_IDLE_PAUSE_S: Final = 2.0  # a server without a readable in-flight gauge gets this pause
_IDLE_POLL_S: Final = 0.1
_PHASE_LEAD_S: Final = 0.05  # between scheduling the phase and its first send
# Batches too: tokenbooth's aborted batch still finishes its engine step after its requests left.
_BUSY_NAMES: Final = (
    names.TOKENBOOTH_REQUESTS_RUNNING,
    names.TOKENBOOTH_REQUESTS_WAITING,
    names.TOKENBOOTH_BATCHES_RUNNING,
)


@dataclass(frozen=True)
class Level:
    """One load level: ``closed`` with ``value`` streams or ``poisson`` at ``value`` req/s."""

    kind: Literal["closed", "poisson"]
    value: float

    @property
    def label(self) -> str:
        """As the table's first column says it (``8 streams``, ``Poisson 1 req/s``)."""
        if self.kind == "closed":
            n = int(self.value)
            return f"{n} stream" if n == 1 else f"{n} streams"
        return f"Poisson {self.value:g} req/s"


def levels_from(streams: Sequence[int], rates: Sequence[float]) -> list[Level]:
    """Closed-loop levels, then Poisson ones, in the order given.

    Raises:
        ValueError: a stream count below 1 or a rate that is not positive, or no level at all.
    """
    if any(n < 1 for n in streams) or any(not r > 0 for r in rates):
        raise ValueError("streams must be >= 1 and rates > 0")
    levels = [Level("closed", float(n)) for n in streams] + [Level("poisson", r) for r in rates]
    if not levels:
        raise ValueError("no load level: give --streams and/or --rates")
    return levels


@dataclass(frozen=True)
class CompareConfig:
    """What every phase of a comparison runs with."""

    levels: tuple[Level, ...]
    prompt_words: int = 64
    max_tokens: int = 64
    repeats: int = 2
    duration_s: float = 20.0
    warmup_s: float = 5.0
    max_requests: int = 5000  # per phase, warm-up and tail included
    max_in_flight: int = 256  # open loop: a due request waits for a slot beyond this
    request_timeout_s: float = 120.0
    drain_limit_s: float = 120.0  # after the window, for the measured requests to finish
    seed: int = 0


@dataclass(frozen=True)
class ServeSpec:
    """A server the benchmark starts itself: ``tokenbooth`` (with settings) or ``llamacpp``."""

    kind: Literal["tokenbooth", "llamacpp"]
    settings: Mapping[str, str] = field(default_factory=dict)
    threads: int | None = None  # llamacpp's -t; None: one per core, as the table ran


# ------------------------------------------------------------------------------ prompts


def prompt_stream(words: int, seed: int, seen: set[str]) -> Iterator[str]:
    """Prompts of ``words`` random common words, seeded; none that is already in ``seen``.

    ``seen`` is one server's run-wide set, so a server never gets the same prompt twice.
    """
    rng = np.random.default_rng(seed)
    counter = WordCounter()
    while True:
        text = synthetic_text(words, counter, rng).strip()
        if text not in seen:
            seen.add(text)
            yield text


def _phase_seed(seed: int, level_index: int, repeat: int) -> int:
    # The same for A and B: both get the same prompts and the same arrival schedule.
    return seed * 1_000_003 + level_index * 1_009 + repeat


# ------------------------------------------------------------------------------ one phase


@dataclass
class _Request:
    scheduled: float  # perf_counter; latencies run from here
    measured: bool  # scheduled inside the window
    tally: StreamTally = field(default_factory=lambda: StreamTally(chat=True))
    sent: float = math.nan
    end: float = math.nan
    error: str = ""

    def done_ok(self) -> bool:
        return not self.error and not math.isnan(self.end)


@dataclass
class _Phase:
    """One phase's requests and clocks, as :func:`phase_figures` reads them."""

    requests: list[_Request]
    window: tuple[float, float]
    cpu_s: float
    wall_s: float
    in_flight_waits: int = 0
    truncated: bool = False  # max_requests ended the sends before the window did
    warmup_s: float = math.nan  # from the phase's start to the window's


def _body(model: str, prompt: str, max_tokens: int) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


async def _send(endpoint: Endpoint, body: bytes, req: _Request, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            req.sent = await stream_chat(endpoint, body, req.tally)
    except asyncio.CancelledError:
        req.error = req.error or "cancelled"
        raise
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
        req.error = f"{type(exc).__name__}: {exc}"
    finally:
        req.end = time.perf_counter()
        if req.tally.error and not req.error:
            req.error = req.tally.error


async def _sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


class _Window:
    """The measurement window: opened once, then ``duration_s`` long; counts measured requests.

    ``idle`` is set once the window is over and no request sent inside it is still running.
    """

    def __init__(self, duration_s: float) -> None:
        self.duration_s = duration_s
        self.start = math.inf
        self.end = math.inf
        self.opened = asyncio.Event()
        self.pending = 0
        self.idle = asyncio.Event()

    def open(self, at: float) -> None:
        if not self.opened.is_set():
            self.start, self.end = at, at + self.duration_s
            self.opened.set()

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end

    def finish(self) -> None:
        self.pending -= 1
        if self.pending == 0 and time.perf_counter() >= self.end:
            self.idle.set()

    async def wait(self, open_limit_s: float, drain_limit_s: float) -> None:
        """Until the window is over and its requests are done (or the drain limit passed)."""
        await asyncio.wait_for(self.opened.wait(), open_limit_s)
        await _sleep_until(self.end)
        if self.pending == 0:
            return
        try:
            await asyncio.wait_for(self.idle.wait(), drain_limit_s)
        except TimeoutError:
            return  # what is still running is cut off and counts as an error


async def _run_phase(
    level: Level,
    endpoint: Endpoint,
    body_for: Callable[[], bytes],
    config: CompareConfig,
    *,
    ramp_s: float,
    seed: int,
) -> _Phase:
    """One phase; the window opens after the warm-up, and for closed loop not before every
    user has finished its first request (sent from an idle server, so no steady-state sample).

    Measured: open loop, the requests scheduled in the window; closed loop, every request but a
    user's first sent from the warm-up's end to the window's, so a request longer than the
    window still leaves a sample per user. Output tokens/s is counted over the window.
    """
    cpu0, wall0 = time.process_time(), time.perf_counter()
    t0 = wall0 + _PHASE_LEAD_S
    window = _Window(config.duration_s)
    requests: list[_Request] = []
    tasks: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    phase = _Phase(requests, (math.nan, math.nan), 0.0, 0.0)
    users = int(level.value) if level.kind == "closed" else 0
    warm_users = 0

    async def tracked(req: _Request, send: Awaitable[None]) -> None:
        try:
            await send
        finally:
            if req.measured:
                window.finish()

    def new_request(scheduled: float, *, first: bool = False) -> _Request | None:
        if len(requests) >= config.max_requests:
            phase.truncated = phase.truncated or scheduled < window.end
            return None
        if level.kind == "closed":
            # Every request but a user's first runs with all N users in flight: a sample of the
            # steady state from the warm-up's end on, even before the window opens (which may
            # be a whole request after the first users came back, at 32 streams on llama.cpp).
            counts = not first and t0 + config.warmup_s <= scheduled < window.end
        else:
            counts = window.holds(scheduled)
        req = _Request(scheduled, counts)
        requests.append(req)
        if req.measured:
            # Counted here, not when its task first runs: the window may end in between.
            window.pending += 1
        return req

    async def user(offset: float) -> None:
        nonlocal warm_users
        await _sleep_until(t0 + offset)
        first = True
        while not stop.is_set():
            req = new_request(time.perf_counter(), first=first)
            if req is None:
                return
            await tracked(req, _send(endpoint, body_for(), req, config.request_timeout_s))
            if first:
                first, warm_users = False, warm_users + 1
                if warm_users == users:
                    window.open(max(time.perf_counter(), t0 + config.warmup_s))

    async def open_loop() -> None:
        slots = asyncio.Semaphore(config.max_in_flight)
        horizon = config.warmup_s + config.duration_s + config.drain_limit_s
        offsets = arrival_offsets("poisson", level.value, horizon, seed=seed)

        async def bounded(req: _Request, body: bytes) -> None:
            if slots.locked():
                phase.in_flight_waits += 1
            async with slots:
                await _send(endpoint, body, req, config.request_timeout_s)

        for offset in offsets:
            await _sleep_until(t0 + float(offset))
            if stop.is_set():
                return
            req = new_request(t0 + float(offset))
            if req is None:
                return
            tasks.append(asyncio.create_task(tracked(req, bounded(req, body_for()))))

    if level.kind == "closed":
        starts = ramp_offsets(users, ramp_s)
        tasks.extend(asyncio.create_task(user(float(o))) for o in starts)
    else:
        window.open(t0 + config.warmup_s)
        tasks.append(asyncio.create_task(open_loop()))
    try:
        # Every first request ends by its timeout, so the window opens by then.
        open_limit_s = _PHASE_LEAD_S + ramp_s + config.warmup_s + config.request_timeout_s + 1
        await window.wait(open_limit_s, config.drain_limit_s)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for req in requests:
        if req.measured and (req.error == "cancelled" or not (req.error or req.done_ok())):
            req.error = f"unfinished {config.drain_limit_s:g} s after the window (cut off)"
    phase.window = (window.start, window.end)
    phase.warmup_s = window.start - t0
    phase.cpu_s = time.process_time() - cpu0
    phase.wall_s = time.perf_counter() - wall0
    return phase


# ------------------------------------------------------------------------------ figures


@dataclass(frozen=True)
class PhaseFigures:
    """One phase's figures (times in ms)."""

    server: str
    level: str
    repeat: int
    tokens_per_s: float  # output tokens that arrived in the window / window
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float  # gaps between content chunks, pooled over the measured requests
    e2e_p50_ms: float
    requests: int  # scheduled inside the window
    errors: int
    short: int  # finished without error but with fewer than max_tokens tokens
    no_usage: int  # finished without a usage count
    client_cpu_share: float  # this process's CPU time / wall time over the phase
    send_lag_p95_ms: float  # actual send - scheduled send (the client's own lateness)
    in_flight_waits: int
    truncated: bool
    window_s: float
    warmup_s: float  # the warm-up this phase actually had (closed loop: at least a request)
    first_error: str = ""


def phase_figures(
    phase: _Phase, *, server: str, level: str, repeat: int, max_tokens: int
) -> PhaseFigures:
    """The figures of one phase's requests (pure: no clock, no I/O)."""
    start, end = phase.window
    tokens = 0.0
    for req in phase.requests:
        times = req.tally.token_times
        usage = req.tally.usage
        # Each chunk weighted by its request's usage per chunk: a server that packs two tokens
        # into a chunk is not undercounted; a request cut off without usage counts 1 per chunk.
        n = usage.completion_tokens if usage is not None else None
        weight = n / len(times) if n and times and req.done_ok() else 1.0
        tokens += weight * sum(1 for t in times if start <= t < end)
    measured = [r for r in phase.requests if r.measured]
    ok = [r for r in measured if r.done_ok()]
    ttft = [
        (r.tally.first_content_at - r.scheduled) * 1000
        for r in ok
        if r.tally.first_content_at is not None
    ]
    itl = [g * 1000 for r in ok for g in np.diff(np.asarray(r.tally.token_times))]
    e2e = [(r.end - r.scheduled) * 1000 for r in ok]
    lag = [(r.sent - r.scheduled) * 1000 for r in measured if not math.isnan(r.sent)]
    errors = [r.error for r in measured if not r.done_ok()]
    usages = [r.tally.usage.completion_tokens if r.tally.usage else None for r in ok]
    return PhaseFigures(
        server=server,
        level=level,
        repeat=repeat,
        tokens_per_s=tokens / (end - start),
        ttft_p50_ms=percentile(ttft, 0.5),
        ttft_p95_ms=percentile(ttft, 0.95),
        itl_p50_ms=percentile(itl, 0.5),
        e2e_p50_ms=percentile(e2e, 0.5),
        requests=len(measured),
        errors=len(errors),
        short=sum(1 for u in usages if u is not None and u < max_tokens),
        no_usage=sum(1 for u in usages if u is None),
        client_cpu_share=phase.cpu_s / phase.wall_s if phase.wall_s > 0 else math.nan,
        send_lag_p95_ms=percentile(lag, 0.95),
        in_flight_waits=phase.in_flight_waits,
        truncated=phase.truncated,
        window_s=end - start,
        warmup_s=phase.warmup_s,
        first_error=errors[0] if errors else "",
    )


_FIGURES: Final = ("tokens_per_s", "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "e2e_p50_ms")
_RATIOS: Final = ("tokens_per_s", "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms")


@dataclass(frozen=True)
class Spread:
    """Median over repeats, with the smallest and largest."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of ``values`` (NaNs left out; all NaN when none is left)."""
        xs = [v for v in values if math.isfinite(v)]
        if not xs:
            return cls(math.nan, math.nan, math.nan)
        return cls(statistics.median(xs), min(xs), max(xs))


@dataclass(frozen=True)
class Summary:
    """One server at one level over its repeats."""

    server: str
    level: str
    figures: dict[str, Spread]
    requests: int
    errors: int
    short: int
    no_usage: int
    client_cpu_share_max: float


def summarise(phases: Sequence[PhaseFigures]) -> Summary:
    """The repeats of one server at one level, summarised (median, min-max, totals)."""
    first = phases[0]
    return Summary(
        server=first.server,
        level=first.level,
        figures={f: Spread.of([getattr(p, f) for p in phases]) for f in _FIGURES},
        requests=sum(p.requests for p in phases),
        errors=sum(p.errors for p in phases),
        short=sum(p.short for p in phases),
        no_usage=sum(p.no_usage for p in phases),
        client_cpu_share_max=max(p.client_cpu_share for p in phases),
    )


def ratios(a: Sequence[PhaseFigures], b: Sequence[PhaseFigures]) -> dict[str, Spread]:
    """A/B of each figure, repeat by repeat (neighbouring phases), as a spread."""
    out = {}
    for f in _RATIOS:
        pairs = [(getattr(x, f), getattr(y, f)) for x, y in zip(a, b, strict=True)]
        out[f] = Spread.of([x / y if y else math.nan for x, y in pairs])
    return out


def _cell(s: Spread, digits: int, with_spread: bool) -> str:
    if not math.isfinite(s.median):
        return "n/a"
    text = f"{s.median:,.{digits}f}"
    if with_spread and s.high > s.low:
        text += f" ({s.low:,.{digits}f}-{s.high:,.{digits}f})"
    return text


def table_markdown(
    levels: Sequence[str],
    summaries: Mapping[tuple[str, str], Summary],
    level_ratios: Mapping[str, Mapping[str, Spread]],
    labels: tuple[str, str],
    *,
    with_spread: bool,
) -> str:
    """The issue's table: per level, each server's tok/s, TTFT p50 / p95, ITL p50, then A/B.

    ``summaries`` is keyed by ``(level, server label)``; cells are medians over repeats, with
    (min-max) when ``with_spread`` and the repeats differ.
    """
    a, b = labels
    head = ["load"]
    for name in labels:
        head += [f"{name} tok/s", f"{name} TTFT p50 / p95 ms", f"{name} ITL p50 ms"]
    head += [f"{a}/{b} tok/s", f"{a}/{b} TTFT p50", f"{a}/{b} TTFT p95", f"{a}/{b} ITL p50"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for level in levels:
        row = [level]
        for name in labels:
            f = summaries[(level, name)].figures
            row += [
                _cell(f["tokens_per_s"], 1, with_spread),
                f"{_cell(f['ttft_p50_ms'], 0, with_spread)} / "
                f"{_cell(f['ttft_p95_ms'], 0, with_spread)}",
                _cell(f["itl_p50_ms"], 1, with_spread),
            ]
        r = level_ratios[level]
        row += [_cell(r[k], 2, with_spread) for k in _RATIOS]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ servers


def _raw_samples(text: str) -> list[RawSample]:
    return [
        (s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples
    ]


async def _in_flight(client: httpx.AsyncClient) -> float | None:
    """Requests (and batches) in flight as the server's ``/metrics`` says; None: unreadable.

    Read through the sweep harness's adapters, so llama.cpp's and vLLM's gauges count too.
    """
    try:
        response = await client.get("/metrics")
        if response.status_code != 200:
            return None
        samples = _raw_samples(response.text)
    except (httpx.HTTPError, ValueError):
        return None
    sample_names = [n for n, _, _ in samples]
    for adapter in ADAPTERS.values():
        if adapter.recognises_metrics(sample_names):
            busy = [s.value for s in adapter.canonical(samples) if s.name in _BUSY_NAMES]
            return sum(busy) if busy else None
    return None


async def _wait_idle(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=5, trust_env=False) as client:
        deadline = time.monotonic() + _IDLE_LIMIT_S
        busy = await _in_flight(client)
        if busy is None:
            await asyncio.sleep(_IDLE_PAUSE_S)
            return
        while busy and time.monotonic() < deadline:
            await asyncio.sleep(_IDLE_POLL_S)
            busy = await _in_flight(client)
        if busy:
            raise TimeoutError(f"{base_url} still has {busy:g} requests after {_IDLE_LIMIT_S} s")


def _served_model(base_url: str) -> str:
    with httpx.Client(base_url=base_url, timeout=10, trust_env=False) as client:
        data = client.get("/v1/models").raise_for_status().json().get("data") or []
    if not data:
        raise RuntimeError(f"{base_url}/v1/models lists no model; pass --model-a/--model-b")
    return str(data[0]["id"])


@contextmanager
def _served(spec: ServeSpec, config: CompareConfig, log_dir: Path) -> Iterator[str]:
    """Start the server ``spec`` names on loopback; yield its URL; stop it on the way out."""
    if spec.kind == "tokenbooth":
        from bench.target import start_service
        from service.launch import explicit_settings, stop_replicas, wait_ready
        from service.settings import ServiceSettings

        unknown = sorted(set(spec.settings) - set(ServiceSettings.model_fields))
        if unknown:
            raise ValueError(f"unknown tokenbooth setting(s): {', '.join(unknown)}")
        replica = start_service(explicit_settings(**spec.settings))
        try:
            wait_ready(replica)
            yield replica.base_url
        finally:
            stop_replicas(replica, grace_s=30)
        return
    from bench.llama_server import find_llama_server, slot_context, start_llama_server
    from service.models.paths import default_gguf_path

    streams = [int(lv.value) for lv in config.levels if lv.kind == "closed"]
    parallel = max([32, *streams])
    server = start_llama_server(
        find_llama_server(),
        default_gguf_path(),
        log_dir / "llama-server.log",
        parallel=parallel,
        threads=spec.threads or os.cpu_count() or 2,
        ctx=parallel * slot_context(config.prompt_words, config.max_tokens),
    )
    try:
        yield server.url
    finally:
        server.stop()


# ------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class _Side:
    label: str
    url: str
    model: str


async def _lone_request_s(side: _Side, prompts: Iterator[str], max_tokens: int) -> float:
    """One request alone (connection set-up and first-request costs out of the way): its e2e."""
    req = _Request(time.perf_counter(), measured=False)
    await _send(Endpoint.from_url(side.url), _body(side.model, next(prompts), max_tokens), req, 120)
    if req.error:
        raise RuntimeError(f"{side.label} ({side.url}) failed a first request: {req.error}")
    return req.end - req.scheduled


def _phase_line(p: PhaseFigures) -> str:
    line = (
        f"{p.level:>18} {p.server:>12} #{p.repeat}: {p.tokens_per_s:7.1f} tok/s  TTFT "
        f"{p.ttft_p50_ms:6.0f}/{p.ttft_p95_ms:6.0f} ms  ITL {p.itl_p50_ms:5.1f} ms  e2e "
        f"{p.e2e_p50_ms:6.0f} ms  {p.requests} req, {p.errors} err, {p.short} short  "
        f"client CPU {p.client_cpu_share:.0%}, warm-up {p.warmup_s:.1f} s"
    )
    if p.client_cpu_share > CPU_WARN_SHARE:
        line += f"  WARNING: client above {CPU_WARN_SHARE:.0%} of a core"
    return line


async def _run_all(
    sides: tuple[_Side, _Side], config: CompareConfig, print_line: Callable[[str], None]
) -> list[PhaseFigures]:
    seen: dict[str, set[str]] = {s.label: set() for s in sides}
    durations = {}
    for side in sides:
        warm = prompt_stream(config.prompt_words, config.seed + 7_919, seen[side.label])
        await _wait_idle(side.url)
        durations[side.label] = await _lone_request_s(side, warm, config.max_tokens)
        print_line(
            f"{side.label}: {side.url} model {side.model}, lone request "
            f"{durations[side.label] * 1000:.0f} ms"
        )
    figures = []
    for li, level in enumerate(config.levels):
        for repeat in range(config.repeats):
            seed = _phase_seed(config.seed, li, repeat)
            for side in sides:
                prompts = prompt_stream(config.prompt_words, seed, seen[side.label])
                model = side.model

                def body_for(prompts: Iterator[str] = prompts, model: str = model) -> bytes:
                    return _body(model, next(prompts), config.max_tokens)

                # Both: the servers share the machine, and the one just measured may still be
                # winding down the requests its phase cancelled.
                for other in sides:
                    await _wait_idle(other.url)
                phase = await _run_phase(
                    level,
                    Endpoint.from_url(side.url),
                    body_for,
                    config,
                    ramp_s=durations[side.label],
                    seed=seed,
                )
                p = phase_figures(
                    phase,
                    server=side.label,
                    level=level.label,
                    repeat=repeat,
                    max_tokens=config.max_tokens,
                )
                figures.append(p)
                print_line(_phase_line(p))
    return figures


def _notes(
    summaries: Mapping[tuple[str, str], Summary], figures: Sequence[PhaseFigures]
) -> list[str]:
    notes = []
    for s in summaries.values():
        if s.errors:
            notes.append(f"{s.server} at {s.level}: {s.errors} of {s.requests} requests failed")
        if s.short:
            notes.append(
                f"{s.server} at {s.level}: {s.short} requests stopped before max_tokens "
                "(ignore_eos not honoured?): its figures are for shorter outputs"
            )
        if s.no_usage:
            notes.append(f"{s.server} at {s.level}: {s.no_usage} requests reported no usage")
    for p in figures:
        if p.truncated:
            notes.append(f"{p.server} at {p.level} #{p.repeat}: --max-requests ended the window")
        if p.in_flight_waits:
            notes.append(
                f"{p.server} at {p.level} #{p.repeat}: {p.in_flight_waits} requests waited for "
                "the in-flight bound (the wait is in their latency)"
            )
    return notes


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity as None, so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def run_compare(
    urls: tuple[str | None, str | None],
    labels: tuple[str, str],
    models: tuple[str | None, str | None],
    serve: tuple[ServeSpec | None, ServeSpec | None],
    config: CompareConfig,
    *,
    json_path: Path | None = None,
    print_line: Callable[[str], None] = print,
) -> int:
    """CLI entry: run every phase, print the phases, the table and notes; write ``json_path``.

    Servers the benchmark starts (``serve``) are stopped at the end, on errors and Ctrl-C too.
    """
    if labels[0] == labels[1]:
        raise ValueError("the two servers need different labels")
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        resolved = []
        for url, spec in zip(urls, serve, strict=True):
            if spec is not None:
                url = stack.enter_context(_served(spec, config, Path(tmp)))
            if url is None:
                raise ValueError("each side needs a URL or --serve-a/--serve-b")
            resolved.append(url.rstrip("/"))
        sides = tuple(
            _Side(label, url, model or _served_model(url))
            for label, url, model in zip(labels, resolved, models, strict=True)
        )
        assert len(sides) == 2
        figures = asyncio.run(_run_all((sides[0], sides[1]), config, print_line))
    by_key: dict[tuple[str, str], list[PhaseFigures]] = {}
    for p in figures:
        by_key.setdefault((p.level, p.server), []).append(p)
    summaries = {k: summarise(v) for k, v in by_key.items()}
    level_names = [lv.label for lv in config.levels]
    level_ratios = {
        lv: ratios(by_key[(lv, labels[0])], by_key[(lv, labels[1])]) for lv in level_names
    }
    table = table_markdown(
        level_names, summaries, level_ratios, labels, with_spread=config.repeats > 1
    )
    notes = _notes(summaries, figures)
    print_line("")
    print_line(table)
    print_line("")
    spread = " (min-max over repeats in brackets)" if config.repeats > 1 else ""
    print_line(
        f"medians of {config.repeats} alternating phase pair(s) per level{spread}; "
        f"{config.duration_s:g} s windows after {config.warmup_s:g} s warm-up; chat "
        f"completions of distinct {config.prompt_words}-word prompts, {config.max_tokens} "
        "output tokens (ignore_eos); TTFT from the scheduled send; ITL: chunk gaps pooled"
    )
    for note in notes:
        print_line(f"note: {note}")
    if json_path is not None:
        doc: dict[str, Any] = {
            "config": asdict(config),
            "servers": [asdict(s) for s in sides],
            "served": [None if s is None else asdict(s) for s in serve],
            "phases": [asdict(p) for p in figures],
            "summaries": [asdict(s) for s in summaries.values()],
            "ratios": {lv: {k: asdict(v) for k, v in r.items()} for lv, r in level_ratios.items()},
            "table_markdown": table,
            "notes": notes,
        }
        json_path.write_text(json.dumps(_finite(doc), indent=2, allow_nan=False) + "\n")
    return 0
