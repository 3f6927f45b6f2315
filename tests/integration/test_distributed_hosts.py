"""``tokenbooth sweep --master`` with ``tokenbooth loadgen-worker`` processes started apart.

Separate hosts are simulated by separate processes: the master listens on 127.0.0.2 (not the
127.0.0.1 it used to hard-code), the workers dial that address, and the target is a
fake-engine replica the test starts on 127.0.0.1, reached by the workers through the spec's
URL as a remote deployment would be.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.results import Col, Point, RunDir, Wk
from service.launch import explicit_settings, free_port, start_replica, stop_replicas, wait_ready
from tests.support.sweeps import TOKENBOOTH

pytestmark = pytest.mark.integration

MASTER_HOST = "127.0.0.2"
RATES = (8.0, 16.0)
DURATION_S = 3.0


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENBOOTH_")}


@pytest.fixture(scope="module")
def remote_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fake-engine replica, serving as the remote deployment every worker sends to."""
    settings = explicit_settings(
        engine="fake",
        port=free_port(),
        fake_ttft_ms=20.0,
        fake_itl_ms=5.0,
        max_batch_size=16,
        max_batch_delay_ms=0.0,
    )
    log = tmp_path_factory.mktemp("remote") / "serve.log"
    replica = start_replica(settings, log_path=log)
    try:
        wait_ready(replica, timeout_s=60)
        yield replica.base_url
    finally:
        stop_replicas(replica)


def _spec(tmp_path: Path, url: str) -> Path:
    spec = tmp_path / "dist.toml"
    spec.write_text(
        textwrap.dedent(
            f"""
            [run]
            name = "dist-hosts"
            duration_s = {DURATION_S}
            warmup_s = 0.5
            min_samples = 5
            request_timeout_s = 20.0

            [target]
            kind = "remote"
            urls = ["{url}"]
            ready_timeout_s = 20.0

            [load]
            mode = "rate"
            rate = [{", ".join(str(r) for r in RATES)}]
            arrival = "constant"

            [workload]
            api = "chat"
            input_tokens = {{ dist = "fixed", value = 16 }}
            output_tokens = {{ dist = "fixed", value = 4 }}
            """
        ).lstrip()
    )
    return spec


def _master(spec: Path, out: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(str(TOKENBOOTH), "sweep", str(spec), "--output", str(out), "--quiet", "--master"),
            *("--master-bind", MASTER_HOST, "--master-port", str(port), *extra),
        ],
        cwd=out.parent,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _worker(port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(
            [
                *(str(TOKENBOOTH), "loadgen-worker"),
                *("--master-host", MASTER_HOST, "--master-port", str(port)),
            ],
            env=_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
def test_master_and_two_separately_started_workers_write_a_complete_run(
    tmp_path: Path, remote_url: str
) -> None:
    port = free_port()
    out = tmp_path / "run"
    master = _master(_spec(tmp_path, remote_url), out, port, "--expect-workers", "2")
    workers = [_worker(port, tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        stdout, stderr = master.communicate(timeout=180)
        assert master.returncode == 0, stderr[-4000:]
        assert stdout.strip().splitlines()[-1] == str(out)
        # The master's quit ends each worker's run: they exit 0 on their own.
        codes = [w.wait(timeout=30) for w in workers]
    finally:
        for p in (master, *workers):
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    run = RunDir(out)
    points = run.points()
    assert points[Point.LOAD_LEVEL].tolist() == list(RATES)
    assert (points[Point.STATUS] == "ok").all(), points[Point.STATUS_DETAIL].tolist()
    requests = run.requests()
    per_worker = run.workers()
    for pid, rate in enumerate(RATES):
        mine = per_worker[per_worker[Wk.POINT_ID] == pid]
        # Both workers sent a share of the point, and their shares are all the rows.
        assert sorted(mine[Wk.WORKER]) == [0, 1]
        assert mine[Wk.NODE_ID].nunique() == 2
        assert (mine[Wk.ROWS] > 0).all()
        n_rows = int((requests[Col.POINT_ID] == pid).sum())
        assert int(mine[Wk.ROWS].sum()) == n_rows
        # A constant schedule split in two: each worker about half of rate x window.
        expected = rate * DURATION_S
        assert abs(n_rows - expected) <= 0.2 * expected + 2
        assert (mine[Wk.CPU_PERCENT] > 0).all()
        assert (mine[Wk.HOST] != "").all()
        # The point's load-generator CPU is the busiest process's share, workers included.
        assert float(points[Point.LOADGEN_CPU_PERCENT][pid]) >= mine[Wk.CPU_PERCENT].max()
    assert "Locust distributed mode: 2 workers connected" in (out / "sweep.log").read_text()


def test_a_master_without_workers_fails_within_its_bound(tmp_path: Path, remote_url: str) -> None:
    port = free_port()
    out = tmp_path / "run"
    started = time.monotonic()
    master = _master(
        _spec(tmp_path, remote_url), out, port, "--expect-workers", "2", "--workers-timeout", "3"
    )
    try:
        _, stderr = master.communicate(timeout=60)
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
    elapsed = time.monotonic() - started
    assert master.returncode == 2, stderr[-4000:]
    assert f"only 0 of 2 Locust workers connected to {MASTER_HOST}:{port}" in stderr
    assert "tokenbooth loadgen-worker --master-host" in stderr
    # The bound (3 s) plus the start-up of the command; nowhere near Locust's own timeouts.
    assert elapsed < 30
    assert RunDir(out).points().empty
