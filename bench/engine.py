"""``tokenbooth bench engine``: raw CTranslate2 throughput vs the HTTP service, side by side.

One run on one machine measures, with the same model, batch size and threads:

1. raw ``generate_batch`` output tokens/s (``batch_workers`` threads, each running full batches
   of ``max_batch_size`` fixed-length requests),
2. the engine's own time to first token for a lone request,
3. the service's output tokens/s at saturation (``concurrency`` streaming clients over HTTP,
   closed loop, fixed length via ``ignore_eos``) over a steady-state window as long as the raw
   phase, after a warm-up of a few batch durations, and its idle TTFT as a client sees it,

then prints the ratios against the targets (>= 90 % of raw throughput; idle TTFT within 10 ms).
The service runs as a separate ``tokenbooth serve`` process so it does not share a GIL with
the client; on a small machine the client still shares the CPU, which the report states.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from bench.client import SSEConnection, histogram_totals, wait_idle
from bench.target import start_service
from service.engine import Engine, EngineInfo, SamplingOptions
from service.launch import stop_replicas, wait_ready
from service.settings import ServiceSettings
from telemetry import names

__all__ = ["EngineBenchResult", "measure", "run_engine_bench"]

_THROUGHPUT_TARGET = 0.90
_TTFT_TARGET_S = 0.010


@dataclass
class EngineBenchResult:
    """Figures of one ``bench engine`` run."""

    model: str
    device: str
    compute_type: str
    batch_workers: int
    intra_threads: int
    max_batch_size: int
    concurrency: int
    max_tokens: int
    prompt_tokens: int
    raw_tokens_per_s: float
    service_tokens_per_s: float
    throughput_ratio: float  # median of the per-repeat ratios
    ratios: list[float]
    raw_phases: list[float]  # tokens/s of every raw phase, in order (shows the drift)
    service_phases: list[float]
    engine_ttft_ms: float  # median
    service_ttft_ms: float  # median
    engine_ttft_mean_ms: float
    service_ttft_mean_ms: float
    service_mean_batch_size: float
    service_window_s: float  # median length of the service's measurement windows
    ttft_delta_ms: float  # difference of the medians (sampling noise of a few ms)
    ttft_delta_mean_ms: float  # difference of the means (likewise)
    # Mean over the same requests of (client TTFT - the engine's own time inside the service):
    # the service's overhead without the engine's call-to-call variance. Judged against 10 ms.
    ttft_overhead_ms: float
    in_service_engine_ttft_ms: float
    cpu_count: int


def _prompt(engine: Engine, n_tokens: int) -> tuple[str, list[str]]:
    words = " hello"
    text = words * n_tokens
    tokens = engine.codec.encode(text)
    while len(tokens) > n_tokens:
        text = text[: -len(words)]
        tokens = engine.codec.encode(text)
    return text, tokens


def _raw_throughput(
    engine: Engine, tokens: list[str], batch: int, workers: int, max_tokens: int, rounds: int
) -> tuple[float, float]:
    """(output tokens/s, seconds) of ``rounds`` full batches on each of ``workers`` threads.

    Each step calls a counting callback, as a streaming server's engine call must.

    Tokens are counted only while every worker is still running: a worker that finishes
    early leaves its core idle, and that tail would understate the engine (the service is
    likewise measured while every client is busy).
    """
    options = SamplingOptions(temperature=0.0, top_k=1, ignore_eos=True)
    stamps: list[list[float]] = [[] for _ in range(workers)]
    ended = [0.0] * workers

    def worker(k: int) -> None:
        mine = stamps[k]
        clock = time.perf_counter

        def on_step(i: int, token_id: int, token: str, is_last: bool) -> bool:
            mine.append(clock())
            return False

        for _ in range(rounds):
            engine.generate_batch([tokens] * batch, options, max_tokens, on_step)
        ended[k] = clock()

    # One warm-up batch so allocation and caches do not count.
    engine.generate_batch([tokens] * batch, options, 4, lambda *_: False)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    all_busy_until = min(ended)
    counted = sum(1 for ts in stamps for t in ts if t <= all_busy_until)
    return counted / (all_busy_until - t0), elapsed


class _FirstToken:
    """Step callback that records when the first token arrives and stops there."""

    def __init__(self) -> None:
        self.at = 0.0

    def __call__(self, i: int, token_id: int, token: str, is_last: bool) -> bool:
        self.at = time.perf_counter()
        return True


def _engine_ttft_once(engine: Engine, tokens: list[str]) -> float:
    options = SamplingOptions(temperature=0.0, top_k=1, ignore_eos=True)
    first = _FirstToken()
    t0 = time.perf_counter()
    engine.generate_batch([tokens], options, 2, first)
    return first.at - t0


@dataclass
class _IdleTTFT:
    engine_s: float  # median, raw engine in this process
    engine_mean_s: float
    service_s: float  # median, as the client sees it
    service_mean_s: float
    in_service_engine_mean_s: float  # the service's own batch start -> first token, mean


async def _idle_ttfts(
    engine: Engine, tokens: list[str], base: str, model: str, prompt: str, samples: int
) -> _IdleTTFT:
    """Idle TTFT of the raw engine and of the service, sampled alternately.

    The engine's time to first token varies by tens of ms between calls on a shared VM, so a
    difference of medians carries several ms of sampling noise. The service's prefill
    histogram (batch start -> first token, the engine's own time inside the service) taken
    over the same requests gives the overhead without that noise: mean client TTFT minus mean
    in-service engine time, request by request.
    """
    conn = SSEConnection.to(base)
    body = json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": 2,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    engine_s: list[float] = []
    service_s: list[float] = []
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60) as metrics_client:
            await conn.request("/v1/completions", body)  # connection and first-request warm-up
            _engine_ttft_once(engine, tokens)
            before = await histogram_totals(metrics_client, names.TOKENBOOTH_BATCH_PREFILL)
            for _ in range(samples):
                engine_s.append(_engine_ttft_once(engine, tokens))
                service_s.append((await conn.request("/v1/completions", body))[0])
            # A batch is recorded when generate_batch returns, after the client's last chunk.
            await wait_idle(metrics_client)
            after = await histogram_totals(metrics_client, names.TOKENBOOTH_BATCH_PREFILL)
    finally:
        conn.close()
    batches = after[1] - before[1]
    if batches != samples:
        raise RuntimeError(f"expected {samples} one-request batches, the service ran {batches}")
    return _IdleTTFT(
        engine_s=statistics.median(engine_s),
        engine_mean_s=statistics.fmean(engine_s),
        service_s=statistics.median(service_s),
        service_mean_s=statistics.fmean(service_s),
        in_service_engine_mean_s=(after[0] - before[0]) / batches,
    )


@dataclass
class _ServicePhase:
    tokens_per_s: float
    mean_batch: float


async def _service_phase(
    base: str,
    model: str,
    prompt: str,
    concurrency: int,
    max_tokens: int,
    warmup_s: float,
    window_s: float,
) -> _ServicePhase:
    """Closed-loop streaming clients; output tokens/s over a steady-state window.

    Every client keeps a request in flight from the start of the warm-up to the end of the
    window, so the window sees neither the synchronised start (all clients sending at once,
    which fragments the first batches) nor the tail (clients finishing one by one, leaving
    partial batches): the saturation throughput a long run converges to. Tokens are counted
    by chunk arrival time, each chunk weighted by its request's ``usage.completion_tokens``
    per content chunk (1 for requests cut off at the window's end).
    """
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    conns = [SSEConnection.to(base) for _ in range(concurrency)]
    path = "/v1/completions"

    def encoded(**overrides: Any) -> bytes:
        return json.dumps({**body, **overrides}).encode()

    # (arrival time, tokens) of every content chunk, across all clients.
    arrivals: list[tuple[float, float]] = []
    full = encoded()

    async def user(conn: SSEConnection, until: float) -> None:
        while time.perf_counter() < until:
            chunks: list[float] = []
            try:
                _, n = await conn.request(path, full, chunks)
            except asyncio.CancelledError:
                arrivals.extend((t, 1.0) for t in chunks)
                raise
            weight = n / len(chunks) if chunks else 0.0
            arrivals.extend((t, weight) for t in chunks)

    async with httpx.AsyncClient(base_url=base, timeout=60) as metrics_client:
        try:
            # Connections and the first request on each, so setup does not count.
            await asyncio.gather(*[c.request(path, encoded(max_tokens=4)) for c in conns])
            window_start = time.perf_counter() + warmup_s
            window_end = window_start + window_s
            tasks = [asyncio.ensure_future(user(c, window_end)) for c in conns]
            await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
            before = await histogram_totals(metrics_client, names.TOKENBOOTH_BATCH_SIZE)
            await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
            after = await histogram_totals(metrics_client, names.TOKENBOOTH_BATCH_SIZE)
            # Requests still streaming are cut off: the service aborts them (client gone).
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if failed:
                # A client that died mid-window would quietly lower the figure: fail instead.
                raise RuntimeError(
                    f"{len(failed)} of {concurrency} benchmark clients failed"
                ) from failed[0].exception()
        finally:
            for c in conns:
                c.close()
        await wait_idle(metrics_client)
    tokens = sum(w for t, w in arrivals if window_start <= t < window_end)
    batches = after[1] - before[1]
    mean_batch = (after[0] - before[0]) / batches if batches else 0.0
    return _ServicePhase(tokens / window_s, mean_batch)


@dataclass
class _Phases:
    """Every phase's figures in order; raw and service phases alternate, R S R ... S R."""

    raws: list[float] = field(default_factory=list)  # tokens/s
    services: list[float] = field(default_factory=list)  # tokens/s
    batches: list[float] = field(default_factory=list)  # mean batch size of each service phase
    windows: list[float] = field(default_factory=list)  # seconds each service phase measured


def _alternate_phases(
    engine: Engine,
    settings: ServiceSettings,
    base: str,
    prompt: str,
    tokens: list[str],
    *,
    concurrency: int,
    max_tokens: int,
    rounds: int,
    warmup_rounds: int,
    repeats: int,
) -> _Phases:
    """Raw and service phases alternately (R S R ... S R), ``repeats`` service phases.

    Each ratio compares neighbours, so the machine's drift between minutes does not
    masquerade as overhead. The service is measured over as long a window as the raw phase
    took, after ``warmup_rounds`` batch durations of warm-up.
    """
    phases = _Phases()

    def raw_phase() -> float:
        raw_tps, raw_s = _raw_throughput(
            engine, tokens, settings.max_batch_size, settings.batch_workers, max_tokens, rounds
        )
        phases.raws.append(raw_tps)
        return raw_s

    raw_s = raw_phase()
    for _ in range(repeats):
        phase = asyncio.run(
            _service_phase(
                base,
                engine.info.model_name,
                prompt,
                concurrency,
                max_tokens,
                warmup_s=warmup_rounds * raw_s / rounds,
                window_s=raw_s,
            )
        )
        phases.services.append(phase.tokens_per_s)
        phases.batches.append(phase.mean_batch)
        phases.windows.append(raw_s)
        raw_s = raw_phase()
    return phases


def measure(
    settings: ServiceSettings,
    *,
    concurrency: int = 32,
    max_tokens: int = 64,
    prompt_tokens: int = 32,
    rounds: int = 3,
    warmup_rounds: int = 2,
    ttft_samples: int = 100,
    repeats: int = 3,
) -> EngineBenchResult:
    """Run both phases and return the figures."""
    from service.app import load_engine

    engine = load_engine(settings)
    info = engine.info
    prompt, tokens = _prompt(engine, prompt_tokens)
    # The service starts (and idles) while the raw engine is measured, so the idle TTFTs of
    # both can be sampled alternately: this VM's speed drifts by tens of percent over minutes.
    replica = start_service(settings)
    try:
        wait_ready(replica)
        idle = asyncio.run(
            _idle_ttfts(engine, tokens, replica.base_url, info.model_name, prompt, ttft_samples)
        )
        phases = _alternate_phases(
            engine,
            settings,
            replica.base_url,
            prompt,
            tokens,
            concurrency=concurrency,
            max_tokens=max_tokens,
            rounds=rounds,
            warmup_rounds=warmup_rounds,
            repeats=repeats,
        )
    finally:
        engine.close()
        stop_replicas(replica, grace_s=60)
    return _result(settings, info, idle, phases, concurrency, max_tokens, len(tokens))


def _result(
    settings: ServiceSettings,
    info: EngineInfo,
    idle: _IdleTTFT,
    phases: _Phases,
    concurrency: int,
    max_tokens: int,
    prompt_tokens: int,
) -> EngineBenchResult:
    raws = phases.raws
    # Each service phase against the mean of the raw phases either side of it (R S R S R ...),
    # so a linear drift of the machine's speed cancels.
    ratios = [s / ((raws[i] + raws[i + 1]) / 2) for i, s in enumerate(phases.services)]
    return EngineBenchResult(
        model=info.model_name,
        device=info.device,
        compute_type=info.compute_type,
        batch_workers=settings.batch_workers,
        intra_threads=settings.intra_threads,
        max_batch_size=settings.max_batch_size,
        concurrency=concurrency,
        max_tokens=max_tokens,
        prompt_tokens=prompt_tokens,
        raw_tokens_per_s=statistics.median(raws),
        service_tokens_per_s=statistics.median(phases.services),
        throughput_ratio=statistics.median(ratios),
        ratios=ratios,
        raw_phases=raws,
        service_phases=phases.services,
        engine_ttft_ms=idle.engine_s * 1000,
        service_ttft_ms=idle.service_s * 1000,
        engine_ttft_mean_ms=idle.engine_mean_s * 1000,
        service_ttft_mean_ms=idle.service_mean_s * 1000,
        service_mean_batch_size=statistics.median(phases.batches),
        service_window_s=statistics.median(phases.windows),
        ttft_delta_ms=(idle.service_s - idle.engine_s) * 1000,
        ttft_delta_mean_ms=(idle.service_mean_s - idle.engine_mean_s) * 1000,
        ttft_overhead_ms=(idle.service_mean_s - idle.in_service_engine_mean_s) * 1000,
        in_service_engine_ttft_ms=idle.in_service_engine_mean_s * 1000,
        cpu_count=os.cpu_count() or 0,
    )


def _slots_note(r: EngineBenchResult) -> str | None:
    """Why the service's batches may not fill at this concurrency, or None when they can."""
    slots = r.batch_workers * r.max_batch_size
    if r.concurrency < slots:
        return (
            f"note: concurrency {r.concurrency} < batch slots {slots}: batches cannot fill, so "
            "this compares partial service batches with full raw ones"
        )
    if r.concurrency == slots:
        return (
            f"note: concurrency {r.concurrency} = batch slots {slots}: nothing is queued when a "
            "worker frees, so a batch fills only with the clients that re-send within "
            "--max-batch-delay-ms (see the mean batch below); more clients than slots keep "
            "every batch full"
        )
    return None


def _report(r: EngineBenchResult) -> list[str]:
    """The side-by-side figures, one line each, with the targets met or not."""
    ok_tp = r.throughput_ratio >= _THROUGHPUT_TARGET
    ok_ttft = r.ttft_overhead_ms <= _TTFT_TARGET_S * 1000
    return [
        f"model {r.model} on {r.device} ({r.compute_type}), {r.cpu_count} CPUs",
        f"batch_workers={r.batch_workers} intra_threads={r.intra_threads} "
        f"max_batch_size={r.max_batch_size} concurrency={r.concurrency} "
        f"prompt={r.prompt_tokens} tok, output={r.max_tokens} tok",
        f"raw generate_batch      {r.raw_tokens_per_s:9.1f} output tok/s  (median; phases: "
        f"{', '.join(f'{x:.0f}' for x in r.raw_phases)})",
        f"service (HTTP, SSE)     {r.service_tokens_per_s:9.1f} output tok/s  (median; phases: "
        f"{', '.join(f'{x:.0f}' for x in r.service_phases)}; "
        f"mean batch {r.service_mean_batch_size:.1f} of {r.max_batch_size}; "
        f"{r.service_window_s:.0f} s window after warm-up, every client busy throughout)",
        f"ratio per repeat        {', '.join(f'{x:.3f}' for x in r.ratios)}  "
        "(each service phase vs the mean of the raw phases either side)",
        f"throughput ratio        {r.throughput_ratio:9.3f}  "
        f"(target >= {_THROUGHPUT_TARGET:.2f}: {'met' if ok_tp else 'NOT met'})",
        f"engine TTFT (idle)      {r.engine_ttft_ms:9.2f} ms  (median; mean "
        f"{r.engine_ttft_mean_ms:.2f}; the raw engine here, alternating with the service)",
        f"service TTFT (idle)     {r.service_ttft_ms:9.2f} ms  (median; mean "
        f"{r.service_ttft_mean_ms:.2f}; as the client sees it)",
        f"TTFT overhead           {r.ttft_overhead_ms:9.2f} ms  (per request: client TTFT minus "
        f"the engine's own {r.in_service_engine_ttft_ms:.1f} ms inside the service, mean; "
        f"target <= {_TTFT_TARGET_S * 1000:.0f} ms: {'met' if ok_ttft else 'NOT met'})",
        f"  service - engine      {r.ttft_delta_mean_ms:9.2f} ms  (means; medians: "
        f"{r.ttft_delta_ms:.2f} ms; both carry the engine's call-to-call noise)",
    ]


def run_engine_bench(settings: ServiceSettings, **kwargs: Any) -> int:
    """CLI entry: print the side-by-side figures; exit 0 (targets are reported, not asserted)."""
    r = measure(settings, **kwargs)
    note = _slots_note(r)
    if note is not None:
        print(note)
    for line in _report(r):
        print(line)
    print(json.dumps(asdict(r)))
    return 0
