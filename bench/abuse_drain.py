"""Drain: SIGTERM a replica with requests in flight that outlast its drain timeout.

``streams`` streamed and as many non-streamed requests, each a few seconds long, are running
when the replica gets SIGTERM with a drain timeout shorter than they are. The process must
exit within the drain timeout (+2 s), and every request must end properly: a stream with
``data: [DONE]``, or with an OpenAI-shaped error event and then the end of the stream; a
non-streamed request with 200 or a 503 JSON error body. Anything else (a reset, a stream
cut without an error event, a body that is not JSON) is a request lost.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from typing import Any, Final

from bench.abuse_common import (
    Metrics,
    RawResponse,
    ScenarioResult,
    bench_settings,
    fmt_s,
    metrics_client,
    raw_request,
    served,
)
from service.settings import ServiceSettings
from telemetry import names

__all__ = ["classify", "run_drain"]

_PROPER_STREAM: Final = ("done", "error event")
_PROPER_PLAIN: Final = ("200", "503 JSON error")
_EXIT_SLACK_S: Final = 2.0


def _error_json(text: bytes | str) -> bool:
    try:
        obj: Any = json.loads(text)
    except ValueError:
        return False
    err = obj.get("error") if isinstance(obj, dict) else None
    return isinstance(err, dict) and isinstance(err.get("message"), str) and "type" in err


def classify(resp: RawResponse, *, stream: bool) -> str:
    """How one request ended: a proper ending or the way it was lost."""
    if resp.status == 0:
        return f"no answer ({resp.error or 'closed'})"
    if resp.status == 503 and _error_json(resp.body):
        return "503 JSON error"
    if not stream or resp.status != 200:
        if resp.status == 200 and resp.complete and not _error_json(resp.body):
            try:
                ok = "choices" in json.loads(resp.body)
            except ValueError:
                ok = False
            return "200" if ok else "200, not a completion"
        shape = "JSON" if _error_json(resp.body) else "not JSON"
        cut = "" if resp.complete else f", {resp.error or 'cut'}"
        return f"{resp.status} {shape}{cut}"
    events = [e for e in resp.body.decode(errors="replace").split("\n\n") if e.startswith("data: ")]
    last = events[-1][len("data: ") :] if events else ""
    if last == "[DONE]":
        before = events[-2][len("data: ") :] if len(events) > 1 else ""
        # A drain may end a stream early with an error event before [DONE].
        return "error event" if _error_json(before) else "done"
    if _error_json(last):
        return "error event" if resp.complete else "error event, then cut"
    return f"truncated ({resp.error or 'ended'} after {len(events)} events)"


async def _drain(
    srv_host: str,
    srv_port: int,
    base_url: str,
    proc: subprocess.Popen[bytes],
    model: str,
    streams: int,
    max_tokens: int,
    drain_s: float,
) -> dict[str, Any]:
    def body(stream: bool) -> bytes:
        return json.dumps(
            {
                "model": model,
                "prompt": "hello",
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "temperature": 0,
                "stream": stream,
            }
        ).encode()

    limit_s = drain_s + 60
    t_start = time.perf_counter()
    tasks = [
        asyncio.ensure_future(
            raw_request(srv_host, srv_port, "POST", "/v1/completions", body(s), timeout_s=limit_s)
        )
        for s in [True] * streams + [False] * streams
    ]
    running = 0.0
    async with metrics_client(base_url) as mc:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            running = (await Metrics.read(mc)).total(names.TOKENBOOTH_REQUESTS_RUNNING)
            if running >= 2 * streams:
                break
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # a few tokens out on every stream
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(proc.wait, drain_s + 60)
    exit_s = time.perf_counter() - t0
    responses = await asyncio.gather(*tasks)
    endings = [classify(r, stream=i < streams) for i, r in enumerate(responses)]
    # Seconds after SIGTERM each request ended (the requests all started at t_start).
    ended_s = [t_start + r.elapsed_s - t0 for r in responses]
    return {
        "running_at_sigterm": running,
        "exit_code": exit_code,
        "shutdown_s": exit_s,
        "endings": endings,
        "ended_s": ended_s,
    }


def _count(endings: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in endings:
        out[e] = out.get(e, 0) + 1
    return out


def run_drain(
    settings: ServiceSettings, *, streams: int = 8, max_tokens: int = 400
) -> ScenarioResult:
    """Run the scenario on a fresh replica and return its figures."""
    result = ScenarioResult("drain")
    defaults: dict[str, float | int] = {"drain_timeout_s": 2.0}
    if settings.engine == "fake":
        defaults |= {"fake_itl_ms": 10.0, "fake_ttft_ms": 20.0}
    settings, _ = bench_settings(settings, defaults)
    drain_s = settings.drain_timeout_s
    with served(settings, grace_s=drain_s + 60) as srv:
        figures = asyncio.run(
            _drain(
                srv.host,
                srv.port,
                srv.base_url,
                srv.replica.proc,
                srv.model,
                streams,
                max_tokens,
                drain_s,
            )
        )
        errors = srv.errors_logged()
    endings: list[str] = figures["endings"]
    stream_end = _count(endings[:streams])
    plain_end = _count(endings[streams:])
    lost = sum(1 for e in endings[:streams] if e not in _PROPER_STREAM) + sum(
        1 for e in endings[streams:] if e not in _PROPER_PLAIN
    )
    shutdown_s: float = figures["shutdown_s"]
    result.row(
        "requests in flight at SIGTERM",
        f"{streams} streamed + {streams} not ({figures['running_at_sigterm']:g} running), "
        f"{max_tokens} tokens each",
    )
    result.row(
        "shutdown: SIGTERM to exit",
        f"{fmt_s(shutdown_s)} (drain timeout {drain_s:g} s, exit code {figures['exit_code']})",
    )
    result.row("streams ended", ", ".join(f"{k}: {v}" for k, v in stream_end.items()))
    result.row("non-streamed ended", ", ".join(f"{k}: {v}" for k, v in plain_end.items()))
    result.row("requests lost", str(lost))
    result.row("last request ended after SIGTERM at", fmt_s(max(figures["ended_s"])))
    result.row("server errors logged", str(errors))
    result.figures.update(
        drain_timeout_s=drain_s,
        shutdown_s=shutdown_s,
        exit_code=figures["exit_code"],
        stream_endings=stream_end,
        plain_endings=plain_end,
        requests_lost=lost,
        server_errors_logged=errors,
    )
    limit = drain_s + _EXIT_SLACK_S
    result.check("shutdown time", fmt_s(shutdown_s), f"< {limit:g} s", shutdown_s < limit)
    result.check("requests lost", str(lost), "0", lost == 0)
    return result
