"""Cold start of one replica process: process start -> model loaded -> warmed and ready.

The phases (:data:`telemetry.names.STARTUP_PHASES`) are exported as the gauge
``tokenbooth_startup_duration_seconds{phase}`` and returned as ``<phase>_s`` log fields for the
``startup`` line. A gauge, not a histogram: each process starts once, so there is exactly one
value per phase and series; a histogram would hold a single observation per pod and only add
bucket series. Fleet views aggregate the gauges (``max by (phase)``, ``quantile``) instead.

Process start is the kernel's start time of the process (``/proc/self/stat``, the source of
prometheus_client's ``process_start_time_seconds``, but measured on the boot clock), so
interpreter start-up and imports count. Where ``/proc`` is unreadable the clock starts when
this module was imported and :attr:`StartupClock.process_start_source` says so.
"""

from __future__ import annotations

import os
import time
from typing import Final

from prometheus_client import CollectorRegistry, Gauge

from telemetry import names

__all__ = [
    "PROCESS_START_IMPORT",
    "PROCESS_START_PROC",
    "StartupClock",
    "StartupMetrics",
    "process_start_time",
]

PROCESS_START_PROC: Final = "proc"
"""Process start read from ``/proc/self/stat`` (the kernel's start time)."""
PROCESS_START_IMPORT: Final = "import"
"""``/proc`` unavailable: process start taken as the import of this module (later than true)."""

# Both read at import: the earliest moment this module can know, used when /proc is not there.
_IMPORTED_WALL: Final = time.time()
_IMPORTED_MONO: Final = time.monotonic()


def _proc_start_time(proc: str = "/proc") -> float | None:
    """Start of this process, seconds since the epoch, from ``/proc``; ``None`` if unreadable.

    The age is taken on the boot clock (uptime minus the start tick, both 10 ms resolution):
    ``btime`` in ``/proc/stat`` is truncated to whole seconds and would be off by up to 1 s.
    """
    try:
        with open(os.path.join(proc, "uptime"), "rb") as uptime:
            up = float(uptime.read().split()[0])
        now = time.time()
        with open(os.path.join(proc, "self", "stat"), "rb") as own:
            # Field 22 (starttime, clock ticks after boot); the command name may hold spaces
            # and parentheses, so count from the last ")".
            fields = own.read().rsplit(b")", 1)[-1].split()
        started = float(fields[19]) / os.sysconf("SC_CLK_TCK")
        return now - max(0.0, up - started)
    except (OSError, IndexError, ValueError):
        return None


def process_start_time() -> tuple[float, str]:
    """``(start of this process in epoch seconds, source)``; source is ``proc`` or ``import``."""
    started = _proc_start_time()
    if started is None:
        return _IMPORTED_WALL, PROCESS_START_IMPORT
    return started, PROCESS_START_PROC


class StartupClock:
    """Marks the phase boundaries of one start-up on the monotonic clock.

    The process start (wall clock) is placed on the monotonic timeline once, at construction,
    so later marks are immune to wall-clock steps and the phases add up exactly:
    ``init + load + warmup == total``.

    Args:
        process_start: Process start in epoch seconds; read from the kernel when omitted.
        source: Where ``process_start`` came from (``proc``, ``import`` or the caller's word).
    """

    def __init__(self, process_start: float | None = None, source: str = "") -> None:
        if process_start is None:
            process_start, source = process_start_time()
        self.process_start_source = source
        # Monotonic time of the process start: now (monotonic) minus how long ago it was.
        self._start = time.monotonic() - max(0.0, time.time() - process_start)
        self._load_start: float | None = None
        self._loaded: float | None = None
        self._ready: float | None = None

    def load_started(self) -> None:
        """Mark the beginning of the model load (end of ``init``)."""
        self._load_start = time.monotonic()

    def model_loaded(self) -> None:
        """Mark the model as loaded in the engine (end of ``load``)."""
        self._loaded = time.monotonic()

    def ready(self) -> None:
        """Mark the replica ready for traffic (end of ``warmup`` and ``total``)."""
        self._ready = time.monotonic()

    def durations(self) -> dict[str, float]:
        """Seconds per phase, in :data:`names.STARTUP_PHASES` order, for the phases finished."""
        out: dict[str, float] = {}
        if self._load_start is None:
            return out
        out[names.STARTUP_PHASE_INIT] = self._load_start - self._start
        if self._loaded is None:
            return out
        out[names.STARTUP_PHASE_LOAD] = self._loaded - self._load_start
        if self._ready is None:
            return out
        out[names.STARTUP_PHASE_WARMUP] = self._ready - self._loaded
        out[names.STARTUP_PHASE_TOTAL] = self._ready - self._start
        return out

    def log_fields(self) -> dict[str, object]:
        """``<phase>_s`` fields (milliseconds precision) plus the process-start source."""
        fields: dict[str, object] = {
            f"{phase}_s": round(seconds, 3) for phase, seconds in self.durations().items()
        }
        fields["process_start_source"] = self.process_start_source
        return fields


class StartupMetrics:
    """``tokenbooth_startup_duration_seconds{phase}`` on an injected registry.

    The family is registered at once but has no children until :meth:`publish`, so a replica
    that is still loading (or failed to) exports no phase rather than a misleading 0.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._gauge = Gauge(
            names.TOKENBOOTH_STARTUP_DURATION,
            "Cold start of this process by phase: init (process start to model load), load, "
            "warmup (loaded to ready), total (process start to ready).",
            (names.LABEL_PHASE,),
            registry=registry,
        )

    def publish(self, clock: StartupClock) -> dict[str, float]:
        """Set one gauge child per finished phase of ``clock``; return the durations."""
        durations = clock.durations()
        for phase, seconds in durations.items():
            self._gauge.labels(phase).set(seconds)
        return durations
