"""A real ``tokenbooth serve`` process reports its cold start; the sweep's reader records it.

One fake-engine replica (with warm-up on), read over loopback: every phase is exported,
non-negative, the parts add up to the total, the total lies within the process's lifetime, and
the ``startup`` log line carries the same figures. A port that serves Prometheus text without
the gauge reads ``not_exported``, a closed port ``unreachable``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loadgen.coldstart import PHASE_COLUMNS, read_cold_start
from loadgen.results import ColdStartStatus, Cs
from service.launch import LOOPBACK, explicit_settings, free_port, start_replica, stop_replicas
from service.launch import wait_ready as wait_replica_ready
from telemetry import names

pytestmark = pytest.mark.integration


def test_replica_exports_every_phase_and_logs_them(tmp_path: Path) -> None:
    settings = explicit_settings(
        engine="fake", port=free_port(), host=LOOPBACK, warmup=True, log_json=True
    )
    launched = time.time()
    replica = start_replica(settings, log_path=tmp_path / "serve.log")
    try:
        wait_replica_ready(replica, timeout_s=60)
        ready_by = time.time()
        row = read_cold_start(replica.base_url, "c0")
    finally:
        stop_replicas(replica)
    assert row[Cs.STATUS] == ColdStartStatus.MEASURED, row
    values = {phase: row[column] for phase, column in PHASE_COLUMNS.items()}
    assert all(math.isfinite(v) and v >= 0 for v in values.values()), values
    total = values.pop(names.STARTUP_PHASE_TOTAL)
    assert sum(values.values()) == pytest.approx(total, abs=1e-6)
    # The process started after launch (to the kernel's 10 ms tick) and was ready when seen.
    assert total <= ready_by - launched + 0.02
    assert values[names.STARTUP_PHASE_INIT] > 0  # interpreter and imports are not free
    lines = [
        json.loads(x) for x in (tmp_path / "serve.log").read_text().splitlines() if x[:1] == "{"
    ]
    startup = [x for x in lines if x.get(names.LOG_EVENT) == names.EVENT_STARTUP]
    assert len(startup) == 1
    assert startup[0]["process_start_source"] == "proc"
    for phase, column in PHASE_COLUMNS.items():
        assert startup[0][f"{phase}_s"] == pytest.approx(row[column], abs=0.0005)


class _OtherServer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 0\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def other_server() -> Iterator[str]:
    server = ThreadingHTTPServer((LOOPBACK, 0), _OtherServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_servers_without_the_gauge_say_so(other_server: str) -> None:
    row = read_cold_start(other_server, "c0")
    assert row[Cs.STATUS] == ColdStartStatus.NOT_EXPORTED
    assert names.TOKENBOOTH_STARTUP_DURATION in row[Cs.DETAIL]
    assert all(math.isnan(row[c]) for c in PHASE_COLUMNS.values())
    closed = read_cold_start(f"http://{LOOPBACK}:{free_port()}", "c0", timeout_s=2)
    assert closed[Cs.STATUS] == ColdStartStatus.UNREACHABLE
