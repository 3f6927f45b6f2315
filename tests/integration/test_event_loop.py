"""Huge prompts must not stall the event loop of a real replica (real model and tokenizer).

Before the fix a 1 MiB prompt was tokenized on the loop (~0.4-0.8 s) before being refused as
too long, and eight of them pushed another client's token gaps and ``/health/live`` past a
second. Now a prompt that cannot fit is refused by a characters-per-token bound without being
tokenized, and tokenization runs on worker threads with the GIL released.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.launch import Replica, explicit_settings, free_port, start_replica, stop_replicas
from service.launch import wait_ready as wait_replica_ready

pytestmark = pytest.mark.integration


@pytest.fixture
def replica(tmp_path: Path, real_model_dir: Path) -> Iterator[Replica]:
    settings = explicit_settings(
        model=real_model_dir, port=free_port(), warmup=False, max_body_bytes=4 << 20
    )
    rep = start_replica(settings, log_path=tmp_path / "serve.log")
    try:
        wait_replica_ready(rep, timeout_s=120)
        yield rep
    finally:
        stop_replicas(rep)


def test_huge_prompts_leave_health_and_other_streams_responsive(replica: Replica) -> None:
    async def scenario() -> tuple[float, float, list[float], list[int]]:
        async with httpx.AsyncClient(base_url=replica.base_url, timeout=60) as c:
            model = (await c.get("/v1/models")).json()["data"][0]["id"]
            health: list[float] = []
            gaps: list[float] = []

            async def probe(until: float) -> None:
                while time.monotonic() < until:
                    t0 = time.monotonic()
                    assert (await c.get("/health/live")).status_code == 200
                    health.append(time.monotonic() - t0)
                    await asyncio.sleep(0.02)

            async def stream() -> None:
                body = {
                    "model": model,
                    "prompt": "Count to one hundred:",
                    "max_tokens": 48,
                    "ignore_eos": True,
                    "stream": True,
                }
                last = None
                async with c.stream("POST", "/v1/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            now = time.monotonic()
                            if last is not None:
                                gaps.append(now - last)
                            last = now

            async def huge(chars: int) -> tuple[int, float]:
                # Words the tokenizer turns into ~1 token per 5 characters: more than the
                # context, but under the cheap bound for the smaller size, so it is tokenized.
                text = ("lorem ipsum dolor sit amet " * (chars // 27 + 1))[:chars]
                t0 = time.monotonic()
                r = await c.post("/v1/completions", json={"model": model, "prompt": text})
                return r.status_code, time.monotonic() - t0

            await stream()  # warm the engine
            gaps.clear()
            until = time.monotonic() + 4
            prober = asyncio.create_task(probe(until))
            streamer = asyncio.create_task(stream())
            await asyncio.sleep(0.3)
            results = await asyncio.gather(
                *(huge(300_000) for _ in range(8)), *(huge(1 << 20) for _ in range(8))
            )
            await streamer
            await prober
            statuses = [s for s, _ in results]
            return max(health), max(gaps), [t for _, t in results[8:]], statuses

    worst_health, worst_gap, mib_times, statuses = asyncio.run(scenario())
    assert statuses == [400] * 16
    assert worst_health < 0.3, f"/health/live took {worst_health:.3f} s under huge prompts"
    assert worst_gap < 0.5, f"another client's token gap reached {worst_gap:.3f} s"
    # Refused by the bound, not tokenized: far under the ~0.4 s a MiB takes to tokenize.
    assert max(mib_times) < 1.0
