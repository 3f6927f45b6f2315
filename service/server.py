"""Run the app under uvicorn: guarded connections, and one shutdown budget on SIGTERM.

First SIGTERM/SIGINT: readiness turns 503 at once and new requests get 503, while in-flight
requests run to completion for up to ``drain_timeout_s``. Whatever is still running then is
ended with an OpenAI-shaped error (a stream gets an error event and ``[DONE]``, a non-streamed
request a 503 body), those answers get up to :data:`END_GRACE_S` to reach their clients, and
uvicorn closes within :data:`CLOSE_GRACE_S`: the process exits 0 at most ``drain_timeout_s +
SHUTDOWN_OVERHEAD_S`` after the signal. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Final

import uvicorn
from litestar import Litestar

from service.app import create_app, get_state
from service.connections import ConnectionLimits, guarded_protocol
from service.settings import ServiceSettings
from service.state import Phase
from telemetry.logging import configure_logging, log_event

__all__ = [
    "CLOSE_GRACE_S",
    "END_GRACE_S",
    "FD_RESERVE",
    "SHUTDOWN_OVERHEAD_S",
    "DrainingServer",
    "connection_limits",
    "serve",
    "termination_budget_s",
]

logger = logging.getLogger("tokenbooth.service")

END_GRACE_S: Final = 1.0
"""After the drain: how long the answers of the requests it ended may take to go out."""
CLOSE_GRACE_S: Final = 1
"""uvicorn's own graceful shutdown (an int, uvicorn's type): by then no request is left."""
SHUTDOWN_OVERHEAD_S: Final = 3.0
"""Signal to exit is at most ``drain_timeout_s`` plus this (the grace periods, engine close)."""
FD_RESERVE: Final = 64
"""File descriptors kept free of connections: model files, logs, sockets to Prometheus/OTLP."""


def termination_budget_s(drain_timeout_s: float, pre_stop_s: float = 0.0) -> float:
    """Longest time from an orchestrator's stop to this process's exit: what its grace must exceed.

    ``pre_stop_s`` runs before SIGTERM is sent (a Kubernetes preStop hook; 0 for Docker).
    """
    return pre_stop_s + drain_timeout_s + SHUTDOWN_OVERHEAD_S


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
        state.drain_started_at = time.perf_counter()
        state.phase = Phase.DRAINING
        _start_watchdog(termination_budget_s(self._drain_timeout_s))
        batcher = state.batcher
        if batcher is not None:
            batcher.draining = True
        t0 = time.perf_counter()
        log_event(
            logger, "drain_start", signal=signame, in_flight=batcher.in_flight if batcher else 0
        )
        if batcher is not None:
            # In flight: admitted jobs, and every request task (one whose body is still
            # arriving has no job yet; a finished job's stream may still be going out).
            await _poll(
                lambda: batcher.in_flight == 0 and not self.server_state.tasks,
                self._drain_timeout_s,
            )
        ended = batcher.end_all() if batcher is not None else 0
        self.drained_cleanly = ended == 0
        # Let every response (the last stream bodies, the 503s just decided) reach its client
        # before uvicorn closes connections; the handlers finish on their own.
        await _poll(lambda: not self.server_state.tasks, END_GRACE_S)
        log_event(
            logger,
            "drain_done",
            drained_s=round(time.perf_counter() - t0, 3),
            unfinished=ended,
            unanswered=len(self.server_state.tasks),
        )
        self.should_exit = True


def _start_watchdog(budget_s: float) -> None:
    """Exit the process ``budget_s`` from now if the orderly shutdown has not finished.

    Every request has been answered by then (the drain ended them); what can still hold the
    process is the engine (a CPU prefill of thousands of tokens sees no stop signal until its
    first token) and the orchestrator's SIGKILL must not be what ends it.
    """

    def expire() -> None:
        log_event(logger, "shutdown_forced", level=logging.WARNING, budget_s=budget_s)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(0)

    # Half a second inside the budget, so the exit is never the orchestrator's to force.
    timer = threading.Timer(max(0.0, budget_s - 0.5), expire)
    timer.daemon = True
    timer.start()


async def _poll(done: Callable[[], bool], timeout_s: float, every_s: float = 0.01) -> None:
    """Return once ``done()`` holds or ``timeout_s`` has passed."""
    deadline = time.perf_counter() + timeout_s
    while not done():
        if time.perf_counter() >= deadline:
            return
        await asyncio.sleep(every_s)


def connection_limits(settings: ServiceSettings) -> ConnectionLimits:
    """The connection bounds of ``settings``, ``max_connections`` kept below the fd limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = settings.max_connections
    if soft != resource.RLIM_INFINITY:
        cap = max(1, min(cap, soft - FD_RESERVE))
    return ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        write_timeout_s=settings.write_timeout_s,
        max_connections=cap,
        max_header_bytes=settings.max_header_bytes,
        send_buffer_bytes=settings.send_buffer_bytes,
    )


def serve(settings: ServiceSettings) -> int:
    """Serve until drained; returns the process exit code."""
    configure_logging(settings.log_level, json_format=settings.log_json)
    # Engine threads need the GIL for every token callback: the switch interval bounds how long
    # a busy event loop can hold up a decode step (CPython's default, 5 ms, unless set).
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    # One prompt per encode call: no Rust thread pool of one thread per core (the tokenize
    # pool's own threads are the parallelism).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = create_app(settings)
    limits = connection_limits(settings)
    if limits.max_connections < settings.max_connections:
        log_event(
            logger,
            "max_connections_capped",
            level=logging.WARNING,
            max_connections=limits.max_connections,
            reason="file descriptor limit (ulimit -n) minus a reserve",
        )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(limits, get_state(app).connections),
        # No WebSocket routes: an upgrade would leave the guarded protocol (and its counts).
        ws="none",
        log_config=None,
        access_log=False,
        # uvicorn's type is int; the idle bound is coarse anyway.
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout_s)),
        timeout_graceful_shutdown=CLOSE_GRACE_S,
        lifespan="on",
    )
    server = DrainingServer(config, app, settings.drain_timeout_s)
    server.run()
    # A drain that hit its timeout is logged (drain_done.unfinished); the exit stays 0 as for
    # any deliberate shutdown, so orchestrators do not count it as a crash.
    return 0
