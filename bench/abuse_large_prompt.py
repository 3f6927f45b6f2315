"""Large prompt: concurrent 1 MiB prompts while another client streams a normal request.

A prompt far beyond the model's context must be refused (400, context length exceeded)
without holding up anyone else: decoding a megabyte of JSON and tokenizing it on the event
loop would stall every stream on the replica for as long. One client streams a long request
twice on the same replica, once alone (the baseline) and once while ``requests`` workers
keep sending oversized prompts; the figures are that client's gaps between chunks, the
``/health/live`` latency and, where the service exports it, its own event-loop lag.

The server's body limit is raised just above the prompt's size (unless set by the user) so
the prompt reaches validation and tokenization instead of stopping at the 413 of the body
limit.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Final

from bench.abuse_common import (
    EVENT_LOOP_LAG,
    HealthProbe,
    Metrics,
    ScenarioResult,
    bench_settings,
    fmt_s,
    histogram_delta,
    metrics_client,
    percentile,
    raw_request,
    served,
)
from bench.client import SSEConnection
from service.settings import ServiceSettings

__all__ = ["run_large_prompt"]

_GAP_TARGET_S: Final = 0.5
_HEALTH_TARGET_S: Final = 0.5
_BODY_MARGIN: Final = 64 * 1024


@dataclass
class _Phase:
    gaps: list[float] = field(default_factory=list)
    stream_error: str | None = None
    health_p50: float = math.nan
    health_max: float = math.nan
    health_failed: int = 0
    lag: tuple[int, float, float] | None = None  # (count, mean, max upper bound)

    @property
    def gap_max(self) -> float:
        return max(self.gaps) if self.gaps else math.nan

    @property
    def gap_p99(self) -> float:
        return percentile(self.gaps, 0.99)


@dataclass
class _Abuse:
    reject_s: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)


async def _stream_once(base_url: str, body: bytes, phase: _Phase) -> None:
    conn = SSEConnection.to(base_url)
    chunks: list[float] = []
    try:
        await conn.request("/v1/completions", body, chunks)
    except (OSError, RuntimeError, ValueError, asyncio.IncompleteReadError) as exc:
        phase.stream_error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    phase.gaps = [b - a for a, b in itertools.pairwise(chunks)]


async def _flood(host: str, port: int, body: bytes, abuse: _Abuse, stop: asyncio.Event) -> None:
    while not stop.is_set():
        resp = await raw_request(host, port, "POST", "/v1/completions", body, timeout_s=60)
        key = str(resp.status) if resp.status else (resp.error or "no answer")
        abuse.statuses[key] = abuse.statuses.get(key, 0) + 1
        abuse.reject_s.append(resp.elapsed_s)


async def _phases(
    base_url: str,
    host: str,
    port: int,
    model: str,
    stream_tokens: int,
    requests: int,
    prompt_bytes: int,
) -> tuple[_Phase, _Phase, _Abuse, bool]:
    stream_body = json.dumps(
        {
            "model": model,
            "prompt": "hello",
            "max_tokens": stream_tokens,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    words = " hello" * (prompt_bytes // 6)
    big = json.dumps({"model": model, "prompt": words, "max_tokens": 16}).encode()
    baseline, under, abuse = _Phase(), _Phase(), _Abuse()
    async with metrics_client(base_url) as mc:
        has_lag = (await Metrics.read(mc)).has(EVENT_LOOP_LAG)
        for phase, abusive in ((baseline, False), (under, True)):
            probe = HealthProbe(base_url)
            m0 = await Metrics.read(mc)
            probe.start()
            stop = asyncio.Event()
            flood = [
                asyncio.ensure_future(_flood(host, port, big, abuse, stop))
                for _ in range(requests if abusive else 0)
            ]
            if abusive:
                await asyncio.sleep(0.2)  # the oversized bodies are on their way
            await _stream_once(base_url, stream_body, phase)
            stop.set()
            await asyncio.gather(*flood)
            await probe.stop()
            m1 = await Metrics.read(mc)
            phase.health_p50, phase.health_max = probe.p50, probe.max
            phase.health_failed = probe.failures
            if has_lag:
                phase.lag = histogram_delta(m0, m1, EVENT_LOOP_LAG)
    return baseline, under, abuse, has_lag


def _lag_text(lag: tuple[int, float, float] | None) -> str:
    if lag is None:
        return "not exported by this server"
    count, mean, upper = lag
    return f"mean {fmt_s(mean)}, max <= {fmt_s(upper)} ({count} samples)"


def run_large_prompt(
    settings: ServiceSettings,
    *,
    requests: int = 8,
    prompt_bytes: int = 1 << 20,
    stream_tokens: int = 300,
) -> ScenarioResult:
    """Run the scenario on a fresh replica and return its figures."""
    result = ScenarioResult("large-prompt")
    defaults: dict[str, float | int] = {"max_body_bytes": prompt_bytes + _BODY_MARGIN}
    if settings.engine == "fake":
        defaults |= {"fake_itl_ms": 10.0, "fake_ttft_ms": 20.0}
    settings, _ = bench_settings(settings, defaults)
    with served(settings) as srv:
        baseline, under, abuse, _ = asyncio.run(
            _phases(
                srv.base_url,
                srv.host,
                srv.port,
                srv.model,
                stream_tokens,
                requests,
                prompt_bytes,
            )
        )
        result.row("server errors logged", str(srv.errors_logged()))
    rows = [
        ("other client's stream", f"{stream_tokens} tokens; baseline alone, then under abuse"),
        (
            "  worst gap baseline / under abuse",
            f"{fmt_s(baseline.gap_max)} / {fmt_s(under.gap_max)}",
        ),
        ("  p99 gap baseline / under abuse", f"{fmt_s(baseline.gap_p99)} / {fmt_s(under.gap_p99)}"),
        (
            "  stream errors baseline / under abuse",
            f"{baseline.stream_error or 'none'} / {under.stream_error or 'none'}",
        ),
        (
            "/health/live max baseline / under abuse",
            f"{fmt_s(baseline.health_max)} / "
            f"{fmt_s(under.health_max)} ("
            f"{under.health_failed} failed)",
        ),
        ("event-loop lag baseline", _lag_text(baseline.lag)),
        ("event-loop lag under abuse", _lag_text(under.lag)),
        (
            f"oversized prompts sent ({prompt_bytes} B, {requests} at a time)",
            f"{len(abuse.reject_s)}; answers: "
            + ", ".join(f"{k}: {v}" for k, v in sorted(abuse.statuses.items())),
        ),
        (
            "  time to be rejected p50 / max",
            f"{fmt_s(percentile(abuse.reject_s, 0.5))} / "
            f"{fmt_s(max(abuse.reject_s, default=math.nan))}",
        ),
    ]
    result.rows = rows + result.rows
    result.figures.update(
        prompt_bytes=prompt_bytes,
        concurrent_requests=requests,
        stream_tokens=stream_tokens,
        baseline_gap_max_s=baseline.gap_max,
        baseline_gap_p99_s=baseline.gap_p99,
        abuse_gap_max_s=under.gap_max,
        abuse_gap_p99_s=under.gap_p99,
        baseline_stream_error=baseline.stream_error,
        abuse_stream_error=under.stream_error,
        baseline_health_max_s=baseline.health_max,
        abuse_health_max_s=under.health_max,
        abuse_health_failed=under.health_failed,
        baseline_loop_lag=baseline.lag,
        abuse_loop_lag=under.lag,
        oversized_sent=len(abuse.reject_s),
        oversized_statuses=abuse.statuses,
        reject_p50_s=percentile(abuse.reject_s, 0.5),
        reject_max_s=max(abuse.reject_s, default=math.nan),
    )
    result.check(
        "other client's worst gap under abuse",
        fmt_s(under.gap_max),
        f"< {_GAP_TARGET_S:g} s",
        under.stream_error is None and under.gap_max < _GAP_TARGET_S,
    )
    result.check(
        "/health/live max under abuse",
        fmt_s(under.health_max),
        f"< {_HEALTH_TARGET_S:g} s",
        under.health_failed == 0 and under.health_max < _HEALTH_TARGET_S,
    )
    refused = abuse.statuses.get("400", 0)
    result.check(
        "oversized prompts refused with 400",
        f"{refused} of {len(abuse.reject_s)}",
        "all",
        bool(abuse.reject_s) and refused == len(abuse.reject_s),
    )
    return result
