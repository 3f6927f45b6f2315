"""Run the app under uvicorn with Kubernetes-style graceful drain on SIGTERM.

First SIGTERM/SIGINT: readiness turns 503 at once and new requests get 503, while in-flight
requests run to completion for up to ``drain_timeout_s``; then uvicorn shuts down and the
process exits 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from types import FrameType

import uvicorn
from litestar import Litestar

from service.app import create_app, get_state
from service.settings import ServiceSettings
from service.state import Phase
from telemetry.logging import configure_logging, log_event

__all__ = ["DrainingServer", "serve"]

logger = logging.getLogger("tokenbooth.service")


class DrainingServer(uvicorn.Server):
    """uvicorn server whose first exit signal drains instead of closing the listener."""

    def __init__(self, config: uvicorn.Config, app: Litestar, drain_timeout_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_timeout_s = drain_timeout_s
        self._drain_task: asyncio.Task[None] | None = None
        self.drained_cleanly: bool | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn re-raises captured signals after shutdown, which would turn a clean drain
        # into exit code 143; only a forced second signal is left to uvicorn's own path.
        if self._drain_task is None:
            loop = asyncio.get_event_loop()
            self._drain_task = loop.create_task(self._drain(signal.Signals(sig).name))
            return
        log_event(logger, "drain_forced", signal=signal.Signals(sig).name)
        self.force_exit = True
        self.should_exit = True

    async def _drain(self, signame: str) -> None:
        state = get_state(self._app)
        state.phase = Phase.DRAINING
        if state.batcher is not None:
            state.batcher.draining = True
        t0 = time.perf_counter()
        in_flight = state.batcher.in_flight if state.batcher else 0
        log_event(logger, "drain_start", signal=signame, in_flight=in_flight)
        deadline = t0 + self._drain_timeout_s
        while state.batcher is not None and state.batcher.in_flight > 0:
            if time.perf_counter() >= deadline:
                break
            await asyncio.sleep(0.02)
        left = state.batcher.in_flight if state.batcher else 0
        self.drained_cleanly = left == 0
        # Let the last stream bodies flush before uvicorn closes connections.
        await asyncio.sleep(0.05)
        log_event(
            logger,
            "drain_done",
            drained_s=round(time.perf_counter() - t0, 3),
            unfinished=left,
        )
        self.should_exit = True


def serve(settings: ServiceSettings) -> int:
    """Serve until drained; returns the process exit code."""
    configure_logging(settings.log_level, json_format=settings.log_json)
    # Engine threads need the GIL for every token callback: the switch interval bounds how long
    # a busy event loop can hold up a decode step (CPython's default, 5 ms, unless set).
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        lifespan="on",
    )
    server = DrainingServer(config, app, settings.drain_timeout_s)
    server.run()
    # A drain that hit its timeout is logged (drain_done.unfinished); the exit stays 0 as for
    # any deliberate shutdown, so orchestrators do not count it as a crash.
    return 0
