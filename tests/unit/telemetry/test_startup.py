"""Cold-start phases: the clock, the gauge on a fresh registry, and the app's startup line."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry

from service.app import create_app
from telemetry import names
from telemetry.logging import JsonFormatter
from telemetry.startup import (
    PROCESS_START_PROC,
    StartupClock,
    StartupMetrics,
    process_start_time,
)
from tests.conftest import fake_settings, wait_ready

GAUGE = names.TOKENBOOTH_STARTUP_DURATION


def phase_value(registry: CollectorRegistry, phase: str) -> float | None:
    return registry.get_sample_value(GAUGE, {names.LABEL_PHASE: phase})


def test_process_start_comes_from_the_kernel_and_precedes_now() -> None:
    started, source = process_start_time()
    assert source == PROCESS_START_PROC  # Linux: /proc is there
    # This interpreter started before this test ran and not before the machine booted.
    assert started <= time.time()
    assert time.time() - started < 24 * 3600
    # The figure prometheus_client exports as process_start_time_seconds, which rests on the
    # boot time truncated to whole seconds: within that second (plus a tick) of ours, not later.
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert -tick <= started - _ps_start_time() <= 1.0 + 2 * tick


def _ps_start_time() -> float:
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    value = registry.get_sample_value("process_start_time_seconds")
    assert value is not None
    return value


def test_phases_are_consecutive_intervals_that_sum_to_total() -> None:
    clock = StartupClock(process_start=time.time() - 2.0, source="test")
    assert clock.durations() == {}
    clock.load_started()
    time.sleep(0.02)
    clock.model_loaded()
    time.sleep(0.01)
    clock.ready()
    d = clock.durations()
    assert list(d) == list(names.STARTUP_PHASES)
    assert d[names.STARTUP_PHASE_INIT] == pytest.approx(2.0, abs=0.05)
    assert d[names.STARTUP_PHASE_LOAD] >= 0.02
    assert d[names.STARTUP_PHASE_WARMUP] >= 0.01
    parts = d[names.STARTUP_PHASE_INIT] + d[names.STARTUP_PHASE_LOAD]
    assert parts + d[names.STARTUP_PHASE_WARMUP] == pytest.approx(d[names.STARTUP_PHASE_TOTAL])
    fields = clock.log_fields()
    assert fields["process_start_source"] == "test"
    assert {f"{p}_s" for p in names.STARTUP_PHASES} <= fields.keys()


def test_gauge_exports_nothing_before_publish_then_one_child_per_phase() -> None:
    registry = CollectorRegistry()
    metrics = StartupMetrics(registry)
    clock = StartupClock(process_start=time.time() - 1.0, source="test")
    assert all(phase_value(registry, p) is None for p in names.STARTUP_PHASES)
    clock.load_started()
    clock.model_loaded()
    # A load that failed after loading: init and load only, no total (the replica never got
    # ready), never a 0 standing in for "unknown".
    metrics.publish(clock)
    assert phase_value(registry, names.STARTUP_PHASE_LOAD) is not None
    assert phase_value(registry, names.STARTUP_PHASE_TOTAL) is None
    clock.ready()
    published = metrics.publish(clock)
    for phase in names.STARTUP_PHASES:
        assert phase_value(registry, phase) == pytest.approx(published[phase])


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_app_exports_every_phase_and_logs_the_same_figures() -> None:
    registry = CollectorRegistry()
    handler = _Lines()
    service_logger = logging.getLogger("tokenbooth.service")
    service_logger.addHandler(handler)
    old_level = service_logger.level
    service_logger.setLevel(logging.INFO)
    try:
        app = create_app(fake_settings(warmup=True), registry=registry)
        async with AsyncTestClient(app) as client:
            await wait_ready(client)
            body = (await client.get("/metrics")).text
    finally:
        service_logger.removeHandler(handler)
        service_logger.setLevel(old_level)
    values = {p: phase_value(registry, p) for p in names.STARTUP_PHASES}
    assert all(v is not None and v >= 0 for v in values.values()), values
    total = values.pop(names.STARTUP_PHASE_TOTAL)
    assert sum(v for v in values.values() if v is not None) == pytest.approx(total)
    assert f'{GAUGE}{{{names.LABEL_PHASE}="{names.STARTUP_PHASE_LOAD}"}}' in body
    startup = [line for line in handler.lines if line[names.LOG_EVENT] == names.EVENT_STARTUP]
    assert len(startup) == 1
    for phase in names.STARTUP_PHASES:
        gauge = phase_value(registry, phase)
        assert gauge is not None
        assert startup[0][f"{phase}_s"] == pytest.approx(gauge, abs=0.0005)
