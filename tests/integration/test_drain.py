"""Graceful drain of a real ``tokenbooth serve`` process on SIGTERM (fake engine)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.launch import Replica, env_name, free_port, wait_ready

pytestmark = pytest.mark.integration


def test_sigterm_drains_in_flight_requests_then_exits_zero(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, env_name("log_json"): "true"}
    log_path = tmp_path / "serve.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--engine",
            "fake",
            "--port",
            str(port),
            "--fake-ttft-ms",
            "20",
            "--fake-itl-ms",
            "20",
            "--drain-timeout-s",
            "20",
            "--max-batch-size",
            "4",
            "--batch-workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    try:
        wait_ready(Replica(base, proc, log_path), timeout_s=30)

        async def scenario() -> tuple[list[str], int, int, int]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as c:

                async def stream_one() -> str:
                    body = {"model": "fake-model", "prompt": "hi", "max_tokens": 40, "stream": True}
                    async with c.stream("POST", "/v1/completions", json=body) as r:
                        return (await r.aread()).decode()

                # Six requests: four run in the first batch, two wait in the queue.
                tasks = [asyncio.create_task(stream_one()) for _ in range(6)]
                await asyncio.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.1)
                ready = (await c.get("/health/ready")).status_code
                live = (await c.get("/health/live")).status_code
                new = (
                    await c.post("/v1/completions", json={"model": "fake-model", "prompt": "x"})
                ).status_code
                bodies = await asyncio.gather(*tasks)
                return bodies, ready, live, new

        bodies, ready, live, new = asyncio.run(scenario())
        assert ready == 503
        assert live == 200
        assert new == 503
        for body in bodies:  # zero in-flight requests lost
            events = [e for e in body.split("\n\n") if e.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            assert '"finish_reason":"length"' in events[-2]
            assert len(events) == 40 + 2
        assert proc.wait(timeout=30) == 0
        logs = log_path.read_text()
        assert '"drain_start"' in logs and '"drain_done"' in logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log_file.close()
