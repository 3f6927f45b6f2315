"""Server CPU per streamed request: what admitting and streaming one request costs the service.

Starts ``tokenbooth serve`` on the fake engine with no time to first token, no inter-token
latency and no batch delay, then sends sequential 1-token streaming completions over one
keep-alive connection and reads the server process's CPU time (``/proc/PID/stat``, all its
threads) around them. With the engine out of the way, the figure is the HTTP server, Litestar,
the handler, the batcher and the SSE stream: the cost that decides how fast a finished batch's
clients get back into the next one. Linux only.

Run from the repository root::

    .venv/bin/python -m scripts.bench_request_cpu [--requests 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from bench.client import SSEConnection
from bench.target import start_service
from service.launch import stop_replicas, wait_ready
from service.settings import ServiceSettings

__all__ = ["main", "measure"]


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _requests(base_url: str, pid: int, n: int) -> tuple[float, float]:
    """(server CPU seconds, wall seconds) for ``n`` sequential streamed requests."""
    conn = SSEConnection.to(base_url)
    body = json.dumps(
        {
            "model": "fake-model",
            "prompt": "hello there",
            "max_tokens": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    try:
        await conn.request("/v1/completions", body)
        cpu0, t0 = _cpu_s(pid), time.perf_counter()
        for _ in range(n):
            await conn.request("/v1/completions", body)
        return _cpu_s(pid) - cpu0, time.perf_counter() - t0
    finally:
        conn.close()


def measure(requests: int, repeats: int) -> list[tuple[float, float]]:
    """Per repeat: (server CPU ms per request, wall ms per request)."""
    settings = ServiceSettings(
        engine="fake", fake_ttft_ms=0, fake_itl_ms=0, max_batch_delay_ms=0, batch_workers=1
    )
    replica = start_service(settings)
    try:
        wait_ready(replica)
        out = []
        for _ in range(repeats):
            cpu, wall = asyncio.run(_requests(replica.base_url, replica.proc.pid, requests))
            out.append((cpu / requests * 1000, wall / requests * 1000))
        return out
    finally:
        stop_replicas(replica, grace_s=60)


def main() -> int:
    """Print server CPU and wall time per streamed 1-token request."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = measure(args.requests, args.repeats)
    for cpu_ms, wall_ms in rows:
        print(f"server CPU {cpu_ms:.3f} ms/request, wall {wall_ms:.3f} ms/request")
    cpu = statistics.median(r[0] for r in rows)
    wall = statistics.median(r[1] for r in rows)
    print(
        f"median: server CPU {cpu:.3f} ms per streamed request ({cpu / wall:.2f} of its wall "
        f"time; {1000 / cpu:.0f} requests/s per core at most)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
