"""Event-loop lag: how late the loop runs a timer, sampled continuously.

Everything on a replica's event loop (health probes, token delivery to every stream, new
requests) waits while one callback holds the loop; this is the direct measure of it, as a
histogram so a dashboard can show the tail and an alert can fire on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

from prometheus_client import CollectorRegistry, Histogram

from telemetry import names

__all__ = ["DEFAULT_INTERVAL_S", "LoopLagMonitor"]

DEFAULT_INTERVAL_S: Final = 0.05
"""Sampling period; a loop blocked for longer than this shows as one late sample."""


class LoopLagMonitor:
    """A task on the loop that sleeps ``interval_s`` and records how late it woke up."""

    def __init__(self, registry: CollectorRegistry, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._histogram = Histogram(
            names.TOKENBOOTH_EVENT_LOOP_LAG,
            "How late the event loop ran a timer, per sample.",
            buckets=names.EVENT_LOOP_LAG_BUCKETS,
            registry=registry,
        )
        self._task: asyncio.Task[None] | None = None
        self.max_lag_s = 0.0

    async def __aenter__(self) -> LoopLagMonitor:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(self._interval_s)
            lag = max(0.0, time.perf_counter() - t0 - self._interval_s)
            self.max_lag_s = max(self.max_lag_s, lag)
            self._histogram.observe(lag)
