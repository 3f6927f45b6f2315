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
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from service.engine import Engine, SamplingOptions
from service.settings import ServiceSettings
from telemetry import names

__all__ = [
    "EngineBenchResult",
    "SSEConnection",
    "free_port",
    "run_engine_bench",
    "start_service",
    "wait_ready",
]

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
    host, port = base.removeprefix("http://").split(":")
    conn = SSEConnection(host, int(port))
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
            before = await _histogram_totals(metrics_client, names.TOKENBOOTH_BATCH_PREFILL)
            for _ in range(samples):
                engine_s.append(_engine_ttft_once(engine, tokens))
                service_s.append((await conn.request("/v1/completions", body))[0])
            # A batch is recorded when generate_batch returns, after the client's last chunk.
            await _wait_idle(metrics_client)
            after = await _histogram_totals(metrics_client, names.TOKENBOOTH_BATCH_PREFILL)
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


class SSEConnection:
    """One keep-alive HTTP/1.1 connection that streams SSE responses with minimal parsing.

    The benchmark client shares the machine's cores with the service; httpx/h11 parse every
    chunk in Python and, while a batch's clients re-send, that CPU delays the next batch. This
    client does only what the measurement needs: write the request, read chunked frames.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, path: str, body: bytes, chunks: list[float] | None = None
    ) -> tuple[float, int]:
        """(seconds to the first token chunk, completion tokens from the usage chunk).

        With ``chunks``, the arrival time of every content chunk is appended to it as it comes.
        """
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        t0 = time.perf_counter()
        self.writer.write(head + body)
        status = await self.reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"service answered {status.decode().strip()}")
        while (await self.reader.readline()) not in (b"\r\n", b""):
            pass
        ttft = -1.0
        tail = b""
        while True:
            size = int((await self.reader.readline()).strip(), 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                break
            if b'"text":"' in data and b'"text":""' not in data:
                now = time.perf_counter()
                if ttft < 0:
                    ttft = now - t0
                if chunks is not None:
                    chunks.append(now)
            tail = (tail + data)[-2048:]
        usage = [ln for ln in tail.split(b"\n\n") if b'"usage":{' in ln]
        tokens = json.loads(usage[-1].strip()[len(b"data: ") :])["usage"]["completion_tokens"]
        return ttft, int(tokens)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
    host, port = base.removeprefix("http://").split(":")
    conns = [SSEConnection(host, int(port)) for _ in range(concurrency)]
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
            before = await _histogram_totals(metrics_client, names.TOKENBOOTH_BATCH_SIZE)
            await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
            after = await _histogram_totals(metrics_client, names.TOKENBOOTH_BATCH_SIZE)
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
        await _wait_idle(metrics_client)
    tokens = sum(w for t, w in arrivals if window_start <= t < window_end)
    batches = after[1] - before[1]
    mean_batch = (after[0] - before[0]) / batches if batches else 0.0
    return _ServicePhase(tokens / window_s, mean_batch)


async def _scrape(client: httpx.AsyncClient) -> dict[str, list[Sample]]:
    """The service's ``/metrics`` samples, by metric family name."""
    text = (await client.get("/metrics")).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


async def _wait_idle(client: httpx.AsyncClient, limit_s: float = 120.0) -> None:
    """Wait until nothing is queued and no batch worker is busy, so the next raw phase has the
    CPU to itself (an aborted batch still finishes its current engine step)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        families = await _scrape(client)
        busy = sum(
            s.value
            for name in (names.TOKENBOOTH_BATCHES_RUNNING, names.TOKENBOOTH_REQUESTS_WAITING)
            for s in families.get(name, [])
        )
        if busy == 0:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("service still busy after the service phase")


async def _histogram_totals(client: httpx.AsyncClient, name: str) -> tuple[float, float]:
    """(sum, count) of one of the service's histograms."""
    samples = (await _scrape(client)).get(name, [])
    total = sum(s.value for s in samples if s.name.endswith("_sum"))
    count = sum(s.value for s in samples if s.name.endswith("_count"))
    return total, count


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_service(settings: ServiceSettings, port: int) -> subprocess.Popen[bytes]:
    """``tokenbooth serve`` on 127.0.0.1:``port`` with ``settings``, logging only warnings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENBOOTH_")}
    for name, value in settings.model_dump(exclude_none=True).items():
        if name in ("host", "port", "log_level"):
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"TOKENBOOTH_{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    # Per-request log lines would cost the service CPU the benchmark is measuring.
    env["TOKENBOOTH_LOG_LEVEL"] = "WARNING"
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    """Block until ``/health/ready`` answers 200; raise if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode} before becoming ready")
        try:
            if httpx.get(base + "/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError("service did not become ready")


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
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The service starts (and idles) while the raw engine is measured, so the idle TTFTs of
    # both can be sampled alternately: this VM's speed drifts by tens of percent over minutes.
    proc = start_service(settings, port)
    raws: list[float] = []
    services: list[float] = []
    batches: list[float] = []
    windows: list[float] = []
    try:
        wait_ready(base, proc)
        idle = asyncio.run(_idle_ttfts(engine, tokens, base, info.model_name, prompt, ttft_samples))

        # Raw and service phases alternate (R S R ... S R): each ratio compares neighbours, so
        # the machine's drift between minutes does not masquerade as overhead. The service is
        # measured over as long a window as the raw phase took, after `warmup_rounds` batch
        # durations of warm-up.
        def raw_phase() -> float:
            raw_tps, raw_s = _raw_throughput(
                engine,
                tokens,
                settings.max_batch_size,
                settings.batch_workers,
                max_tokens,
                rounds,
            )
            raws.append(raw_tps)
            return raw_s

        raw_s = raw_phase()
        for _ in range(repeats):
            phase = asyncio.run(
                _service_phase(
                    base,
                    info.model_name,
                    prompt,
                    concurrency,
                    max_tokens,
                    warmup_s=warmup_rounds * raw_s / rounds,
                    window_s=raw_s,
                )
            )
            services.append(phase.tokens_per_s)
            batches.append(phase.mean_batch)
            windows.append(raw_s)
            raw_s = raw_phase()
    finally:
        engine.close()
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # Each service phase against the mean of the raw phases either side of it (R S R S R ...),
    # so a linear drift of the machine's speed cancels.
    ratios = [s / ((raws[i] + raws[i + 1]) / 2) for i, s in enumerate(services)]
    return EngineBenchResult(
        model=info.model_name,
        device=info.device,
        compute_type=info.compute_type,
        batch_workers=settings.batch_workers,
        intra_threads=settings.intra_threads,
        max_batch_size=settings.max_batch_size,
        concurrency=concurrency,
        max_tokens=max_tokens,
        prompt_tokens=len(tokens),
        raw_tokens_per_s=statistics.median(raws),
        service_tokens_per_s=statistics.median(services),
        throughput_ratio=statistics.median(ratios),
        ratios=ratios,
        raw_phases=raws,
        service_phases=services,
        engine_ttft_ms=idle.engine_s * 1000,
        service_ttft_ms=idle.service_s * 1000,
        engine_ttft_mean_ms=idle.engine_mean_s * 1000,
        service_ttft_mean_ms=idle.service_mean_s * 1000,
        service_mean_batch_size=statistics.median(batches),
        service_window_s=statistics.median(windows),
        ttft_delta_ms=(idle.service_s - idle.engine_s) * 1000,
        ttft_delta_mean_ms=(idle.service_mean_s - idle.engine_mean_s) * 1000,
        ttft_overhead_ms=(idle.service_mean_s - idle.in_service_engine_mean_s) * 1000,
        in_service_engine_ttft_ms=idle.in_service_engine_mean_s * 1000,
        cpu_count=os.cpu_count() or 0,
    )


def run_engine_bench(settings: ServiceSettings, **kwargs: Any) -> int:
    """CLI entry: print the side-by-side figures; exit 0 (targets are reported, not asserted)."""
    r = measure(settings, **kwargs)
    slots = settings.batch_workers * settings.max_batch_size
    if r.concurrency < slots:
        print(
            f"note: concurrency {r.concurrency} < batch slots {slots}: batches cannot fill, so "
            "this compares partial service batches with full raw ones"
        )
    elif r.concurrency == slots:
        print(
            f"note: concurrency {r.concurrency} = batch slots {slots}: nothing is queued when a "
            "worker frees, so a batch fills only with the clients that re-send within "
            "--max-batch-delay-ms (see the mean batch below); more clients than slots keep "
            "every batch full"
        )
    ok_tp = r.throughput_ratio >= _THROUGHPUT_TARGET
    ok_ttft = r.ttft_overhead_ms <= _TTFT_TARGET_S * 1000
    print(f"model {r.model} on {r.device} ({r.compute_type}), {r.cpu_count} CPUs")
    print(
        f"batch_workers={r.batch_workers} intra_threads={r.intra_threads} "
        f"max_batch_size={r.max_batch_size} concurrency={r.concurrency} "
        f"prompt={r.prompt_tokens} tok, output={r.max_tokens} tok"
    )
    print(
        f"raw generate_batch      {r.raw_tokens_per_s:9.1f} output tok/s  (median; phases: "
        f"{', '.join(f'{x:.0f}' for x in r.raw_phases)})"
    )
    print(
        f"service (HTTP, SSE)     {r.service_tokens_per_s:9.1f} output tok/s  (median; phases: "
        f"{', '.join(f'{x:.0f}' for x in r.service_phases)}; "
        f"mean batch {r.service_mean_batch_size:.1f} of {r.max_batch_size}; "
        f"{r.service_window_s:.0f} s window after warm-up, every client busy throughout)"
    )
    print(
        f"ratio per repeat        {', '.join(f'{x:.3f}' for x in r.ratios)}  "
        "(each service phase vs the mean of the raw phases either side)"
    )
    print(
        f"throughput ratio        {r.throughput_ratio:9.3f}  "
        f"(target >= {_THROUGHPUT_TARGET:.2f}: {'met' if ok_tp else 'NOT met'})"
    )
    print(
        f"engine TTFT (idle)      {r.engine_ttft_ms:9.2f} ms  (median; mean "
        f"{r.engine_ttft_mean_ms:.2f}; the raw engine here, alternating with the service)"
    )
    print(
        f"service TTFT (idle)     {r.service_ttft_ms:9.2f} ms  (median; mean "
        f"{r.service_ttft_mean_ms:.2f}; as the client sees it)"
    )
    print(
        f"TTFT overhead           {r.ttft_overhead_ms:9.2f} ms  (per request: client TTFT minus "
        f"the engine's own {r.in_service_engine_ttft_ms:.1f} ms inside the service, mean; "
        f"target <= {_TTFT_TARGET_S * 1000:.0f} ms: {'met' if ok_ttft else 'NOT met'})"
    )
    print(
        f"  service - engine      {r.ttft_delta_mean_ms:9.2f} ms  (means; medians: "
        f"{r.ttft_delta_ms:.2f} ms; both carry the engine's call-to-call noise)"
    )
    print(json.dumps(asdict(r)))
    return 0
