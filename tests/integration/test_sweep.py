"""``tokenbooth sweep`` end to end on the fake engine: run directory, lag accounting,
calibration, resume, replica lifecycle and target faults.

Every sweep runs as a subprocess: the runner imports Locust, whose gevent monkey-patching must
never reach the test process. Local replicas are ``python -m service.cli serve --port N``
children of the harness; tests find them by that command line and check none survives.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest

from loadgen.results import (
    ENVIRONMENT_KEYS,
    POINT_COLUMNS,
    REQUEST_COLUMNS,
    SERVER_COLUMNS,
    Col,
    ColdStartStatus,
    Cs,
    Point,
    RunDir,
    Srv,
    Wk,
)
from loadgen.summary import synchronised
from service.launch import free_port
from telemetry import names
from tests.support.sweeps import fake_target_toml, run_toml

pytestmark = pytest.mark.integration

TOKENBOOTH = Path(sys.executable).with_name("tokenbooth")
FAKE_TTFT_S = 0.050
FAKE_ITL_S = 0.010


def fake_spec(
    *,
    name: str,
    mode: str = "concurrency",
    levels: str = "[1]",
    duration_s: float = 2.0,
    warmup_s: float = 0.5,
    max_batch_size: int | Sequence[int] = 16,
    max_batch_delay_ms: int | Sequence[int] = 0,
    ttft_ms: float = FAKE_TTFT_S * 1000,
    itl_ms: float = FAKE_ITL_S * 1000,
    output_tokens: int = 8,
    min_samples: int = 5,
    batch_workers: int | Sequence[int] = 1,
    ramp_s: str | None = None,
    think_time_s: str | None = None,
) -> str:
    """A fake-engine spec with short points (``levels``/``ramp_s``/``think_time_s``: TOML)."""
    level_key = "concurrency" if mode == "concurrency" else "rate"
    ramp = f"ramp_s = {ramp_s}" if ramp_s is not None else ""
    think = f"think_time_s = {think_time_s}" if think_time_s is not None else ""
    return (
        run_toml(
            name=name,
            duration_s=duration_s,
            warmup_s=warmup_s,
            min_samples=min_samples,
            lag_threshold_s=0.05,
            request_timeout_s=20.0,
        )
        + fake_target_toml(
            ttft_ms=ttft_ms,
            itl_ms=itl_ms,
            max_batch_size=max_batch_size,
            max_batch_delay_ms=max_batch_delay_ms,
            batch_workers=batch_workers,
        )
        + textwrap.dedent(
            f"""
            [load]
            mode = "{mode}"
            {level_key} = {levels}
            arrival = "constant"
            {ramp}
            {think}

            [workload]
            api = "chat"
            input_tokens = {{ dist = "fixed", value = 16 }}
            output_tokens = {{ dist = "fixed", value = {output_tokens} }}
            """
        ).lstrip()
    )


def _port_of(cmdline: list[str]) -> int | None:
    """The ``--port`` of a ``service.cli serve`` command line, None for anything else."""
    if "service.cli" in cmdline and "serve" in cmdline and "--port" in cmdline:
        i = cmdline.index("--port")
        if i + 1 < len(cmdline) and cmdline[i + 1].isdigit():
            return int(cmdline[i + 1])
    return None


def replica_processes(ports: set[int]) -> list[psutil.Process]:
    """Live (non-zombie) ``service.cli serve`` processes listening on one of ``ports``."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = p.info["cmdline"] or []
        if p.info["status"] != psutil.STATUS_ZOMBIE and _port_of(cmd) in ports:
            found.append(p)
    return found


def wait_no_replicas(ports: set[int], timeout_s: float) -> list[str]:
    """Wait until no replica on ``ports`` runs; the command lines of any left afterwards."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = replica_processes(ports)
        if not left or time.monotonic() > deadline:
            return [" ".join(p.info["cmdline"] or []) for p in left]
        time.sleep(0.1)


def ports_of_rows(run: RunDir) -> set[int]:
    """Replica ports that served the run's requests."""
    targets = run.requests()[Col.TARGET].dropna().unique()
    return {int(str(t).rsplit(":", 1)[1]) for t in targets}


class Sweep:
    """A ``tokenbooth sweep`` subprocess that remembers the replicas it was seen running."""

    def __init__(self, spec: Path, out: Path) -> None:
        self.out = out
        self.stdout_path = out.parent / f"{out.name}.stdout"
        self.stderr_path = out.parent / f"{out.name}.stderr"
        self._stdout: IO[bytes] = self.stdout_path.open("wb")
        self._stderr: IO[bytes] = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [str(TOKENBOOTH), "sweep", str(spec), "--output", str(out), "--quiet"],
            cwd=out.parent,
            env=_clean_env(),
            stdout=self._stdout,
            stderr=self._stderr,
        )
        self.replicas: dict[int, psutil.Process] = {}  # port -> process

    @property
    def ports(self) -> set[int]:
        return set(self.replicas)

    def live_replicas(self) -> list[psutil.Process]:
        """The harness's replica children right now (also remembered in ``replicas``)."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        live = []
        for child in children:
            try:
                port = _port_of(child.cmdline())
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            if port is not None:
                self.replicas.setdefault(port, child)
                live.append(child)
        return live

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Poll (recording replicas) until ``predicate``; fail with the harness's output."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.live_replicas()
            if predicate():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"sweep exited ({self.proc.returncode}) before {what}\n{self.text()}")
            time.sleep(0.05)
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{self.text()}")

    def wait_ready_replica(self, timeout_s: float = 30.0) -> tuple[int, psutil.Process]:
        """The first replica whose /health/ready answers 200."""
        found: list[tuple[int, psutil.Process]] = []

        def ready() -> bool:
            for child in self.live_replicas():
                port = _port_of(child.cmdline())
                assert port is not None
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1.0)
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    found.append((port, child))
                    return True
            return False

        self.wait_for("a ready replica", ready, timeout_s)
        return found[0]

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"sweep still running after {timeout_s} s\n{self.text()}")

    def text(self) -> str:
        self._stdout.flush()
        self._stderr.flush()
        return (
            f"--- stdout\n{self.stdout_path.read_text()[-3000:]}"
            f"\n--- stderr\n{self.stderr_path.read_text()[-5000:]}"
        )

    def stdout_lines(self) -> list[str]:
        return self.stdout_path.read_text().splitlines()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._stdout.close()
        self._stderr.close()
        # A failed test must not leave its replicas behind: end the ones this sweep started.
        for p in replica_processes(self.ports):
            p.kill()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENBOOTH_")}


@pytest.fixture
def start_sweep(tmp_path: Path) -> Iterator[Callable[[str, str], Sweep]]:
    """Factory: write a spec and start ``tokenbooth sweep`` on it; always cleaned up."""
    sweeps: list[Sweep] = []

    def start(spec_text: str, name: str) -> Sweep:
        spec = tmp_path / f"{name}.toml"
        spec.write_text(spec_text)
        sweep = Sweep(spec, tmp_path / name)
        sweeps.append(sweep)
        return sweep

    yield start
    for sweep in sweeps:
        sweep.close()


def run_sweep(spec: Path, out: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run a sweep to completion; it must exit 0 and print the run directory last."""
    proc = subprocess.run(
        [str(TOKENBOOTH), "sweep", str(spec), "--output", str(out), "--quiet"],
        cwd=out.parent,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    assert proc.stdout.splitlines()[-1] == str(out)
    return proc


def point(run: RunDir, pid: int) -> pd.Series[Any]:
    points = run.points()
    rows = points[points[Point.POINT_ID] == pid]
    assert len(rows) == 1, points
    return rows.iloc[0]


def requests_of(run: RunDir, pid: int) -> pd.DataFrame:
    return pd.read_parquet(run.path / "requests" / f"{pid:04d}.parquet")


# ------------------------------------------------------------------------ closed loop


@pytest.fixture(scope="module")
def closed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, Path, float]:
    """A finished closed-loop sweep (concurrency 1 and 2, fake TTFT 50 ms / ITL 10 ms)."""
    tmp = tmp_path_factory.mktemp("closed")
    spec = tmp / "closed.toml"
    spec.write_text(fake_spec(name="closed", levels="[1, 2]"))
    out = tmp / "run"
    started = time.time()
    run_sweep(spec, out, timeout_s=120)
    return RunDir(out), spec, started


@pytest.mark.slow
def test_sweep_writes_a_complete_run_dir(closed_run: tuple[RunDir, Path, float]) -> None:
    run, spec, started = closed_run
    assert run.spec_text() == spec.read_text()
    env = run.environment()
    assert set(env) == set(ENVIRONMENT_KEYS)
    assert env["spec_path"] == str(spec)
    assert env["model_manifest"] is None  # fake engine: no model
    assert env["machine"]["cpu_count"] == os.cpu_count()
    assert (run.path / "sweep.log").stat().st_size > 0

    points = run.points()
    header = (run.path / "points.csv").read_text().splitlines()[0].split(",")
    assert header == list(POINT_COLUMNS)
    assert points[Point.POINT_ID].tolist() == [0, 1]
    assert points[Point.LOAD_LEVEL].tolist() == [1.0, 2.0]
    assert points[Point.STATUS].tolist() == ["ok", "ok"]
    assert points[Point.VALID].tolist() == [True, True]
    assert points[Point.CONFIG_ID].tolist() == ["r1-b16-d0-w1-t1-int8-adaptive"] * 2
    assert (points[Point.STARTED_AT] >= started).all()
    assert run.state()["done"] == [
        "r1-b16-d0-w1-t1-int8-adaptive|concurrency=1/closed|0",
        "r1-b16-d0-w1-t1-int8-adaptive|concurrency=2/closed|0",
    ]

    for pid in (0, 1):
        p = point(run, pid)
        req = requests_of(run, pid)
        assert req.columns.tolist() == list(REQUEST_COLUMNS)
        assert len(req) == p[Point.N_REQUESTS] >= 5
        assert req[Col.OK].all()
        assert (req[Col.POINT_ID] == pid).all()
        assert req[Col.REQUEST_ID].str.fullmatch(r"lg-[0-9a-f]{16}").all()
        assert req[Col.TRACE_ID].str.fullmatch(r"[0-9a-f]{32}").all()
        assert req[Col.REQUEST_ID].is_unique
        assert (req[Col.COMPLETION_TOKENS] == 8).all()
        assert (req[Col.STREAMED_CHUNKS] == 8).all()
        assert not req[Col.USAGE_MISMATCH].any()
        assert (req[Col.FINISH_REASON] == "length").all()
        # Only requests sent inside the measured window are kept.
        assert (req[Col.SENT_AT] >= p[Point.STARTED_AT]).all()
        assert (req[Col.SENT_AT] <= p[Point.STARTED_AT] + 2.0).all()
        # Users are numbered 0..concurrency-1.
        assert set(req[Col.USER]) == set(range(pid + 1))

        server = pd.read_parquet(run.path / "server" / f"{pid:04d}.parquet")
        assert server.columns.tolist() == list(SERVER_COLUMNS)
        assert (server[Srv.POINT_ID] == pid).all()
        assert set(server[Srv.REPLICA]) == set(req[Col.TARGET])
        ttft_count = server[
            (server[Srv.METRIC] == names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN + "_count")
        ][Srv.DELTA].sum()
        # The server's window opens with the client's: it saw the measured requests plus at
        # most the warm-up requests still in flight then (one per user).
        n = p[Point.N_REQUESTS]
        assert n <= p[Point.SERVER_REQUESTS] <= n + (pid + 1)
        # An in-flight warm-up request may already have had its first token by then.
        assert n <= ttft_count <= p[Point.SERVER_REQUESTS]
        assert p[Point.SERVER_GENERATION_TOKENS] == 8 * p[Point.SERVER_REQUESTS]


@pytest.mark.slow
def test_sweep_records_each_replicas_cold_start(closed_run: tuple[RunDir, Path, float]) -> None:
    run, _, started = closed_run
    cold = run.cold_start()
    points = run.points()
    # One row per local replica of every configuration, read as soon as they were ready.
    assert set(cold[Cs.CONFIG_ID]) == set(points[Point.CONFIG_ID])
    assert len(cold) == int(points.groupby(Point.CONFIG_ID)[Point.REPLICAS].first().sum())
    assert (cold[Cs.STATUS] == ColdStartStatus.MEASURED).all(), cold[Cs.DETAIL].tolist()
    parts = cold[Cs.INIT_S] + cold[Cs.LOAD_S] + cold[Cs.WARMUP_S]
    assert ((parts - cold[Cs.TOTAL_S]).abs() < 1e-6).all()
    assert (cold[[Cs.INIT_S, Cs.LOAD_S, Cs.WARMUP_S]] >= 0).all().all()
    assert (cold[Cs.TOTAL_S] < time.time() - started).all()


@pytest.mark.slow
def test_closed_loop_has_no_schedule_and_no_lag(closed_run: tuple[RunDir, Path, float]) -> None:
    run, _, _ = closed_run
    req = run.requests()
    assert req[Col.SCHEDULED_AT].isna().all()
    assert (req[Col.SCHEDULE_LAG_S] == 0.0).all()
    assert (req[Col.TTFT_FROM_SCHEDULE_S] == req[Col.TTFT_S]).all()
    assert (req[Col.E2E_FROM_SCHEDULE_S] == req[Col.E2E_S]).all()
    points = run.points()
    assert (points[Point.LAG_P95_S] == 0.0).all()
    assert (points[Point.LAG_MAX_S] == 0.0).all()
    assert points[Point.OFFERED_RPS].isna().all()
    assert (points[Point.TTFT_SCHED_P95_S] == points[Point.TTFT_P95_S]).all()


@pytest.mark.slow
def test_harness_is_calibrated_against_the_fake_engine(
    closed_run: tuple[RunDir, Path, float],
) -> None:
    run, _, _ = closed_run
    p = point(run, 0)  # concurrency 1: no batching, no queueing
    req = requests_of(run, 0)
    ttft = req[Col.TTFT_S].to_numpy()
    itl = np.concatenate(req[Col.ITL_S].to_numpy())
    figures = (
        f"TTFT p50 {p[Point.TTFT_P50_S] * 1000:.2f} ms,"
        f" ITL p50 {p[Point.ITL_P50_S] * 1000:.2f} ms,"
        f" TPOT p50 {p[Point.TPOT_P50_S] * 1000:.2f} ms,"
        f" client TTFT mean {ttft.mean() * 1000:.2f} ms,"
        f" server TTFT mean {p[Point.SERVER_TTFT_MEAN_S] * 1000:.2f} ms"
    )
    print(f"calibration (fake TTFT 50 ms / ITL 10 ms, n={len(req)}): {figures}")
    assert p[Point.TTFT_P50_S] == pytest.approx(np.percentile(ttft, 50))
    assert p[Point.ITL_P50_S] == pytest.approx(np.percentile(itl, 50))
    # The client cannot see the first token before the engine makes it; overhead is a few ms.
    assert FAKE_TTFT_S <= p[Point.TTFT_P50_S] <= FAKE_TTFT_S + 0.008, figures
    assert abs(p[Point.ITL_P50_S] - FAKE_ITL_S) <= 0.002, figures
    assert abs(p[Point.TPOT_P50_S] - FAKE_ITL_S) <= 0.002, figures
    assert len(itl) == 7 * len(req)
    # The client's TTFT agrees with the server's own histogram for the same window; the client
    # adds only HTTP and SSE framing on loopback.
    gap = ttft.mean() - p[Point.SERVER_TTFT_MEAN_S]
    assert -0.001 <= gap <= 0.005, figures


@pytest.mark.slow
def test_no_replica_survives_a_finished_sweep(closed_run: tuple[RunDir, Path, float]) -> None:
    run, _, _ = closed_run
    ports = ports_of_rows(run)
    assert ports  # replicas served the requests on these ports
    assert wait_no_replicas(ports, timeout_s=5) == []


@pytest.mark.slow
def test_closed_loop_ramp_and_think_time_break_the_lockstep(tmp_path: Path) -> None:
    """4 users on 2 workers: all at once they ride one batch; spread with a think time not."""
    points = {}
    for name, ramp, think in (
        ("lockstep", "0", None),
        ("spread", '"auto"', '{ dist = "uniform", min = 0.0, max = 0.05 }'),
    ):
        spec = tmp_path / f"{name}.toml"
        spec.write_text(
            fake_spec(
                name=name,
                levels="[4]",
                duration_s=3.0,
                warmup_s=1.0,
                max_batch_delay_ms=5,
                batch_workers=2,
                ramp_s=ramp,
                think_time_s=think,
            )
        )
        out = tmp_path / f"run-{name}"
        run_sweep(spec, out, timeout_s=120)
        points[name] = point(RunDir(out), 0)
    lock, spread = points["lockstep"], points["spread"]
    figures = ", ".join(
        f"{name}: ramp {p[Point.RAMP_S]:.3f} s, sync share {p[Point.SYNC_SHARE]:.2f} "
        f"(Poisson {p[Point.SYNC_SHARE_POISSON]:.3f}), TTFT p95 {p[Point.TTFT_P95_S] * 1000:.0f} ms"
        for name, p in points.items()
    )
    print(f"closed loop, 4 users, 2 workers x 16: {figures}")
    assert lock[Point.RAMP_S] == 0.0
    # The auto ramp is one probed request: TTFT plus 7 token gaps, plus HTTP overhead.
    one_request = FAKE_TTFT_S + 7 * FAKE_ITL_S
    assert one_request <= spread[Point.RAMP_S] <= one_request + 0.05, figures
    # One process sends four requests in a few ms: most, not all, land within 2 ms of another.
    assert synchronised(lock[Point.SYNC_SHARE], lock[Point.SYNC_SHARE_POISSON]), figures
    assert lock[Point.SYNC_SHARE] > 0.5, figures
    assert spread[Point.SYNC_SHARE] < lock[Point.SYNC_SHARE] / 2, figures
    assert not synchronised(spread[Point.SYNC_SHARE], spread[Point.SYNC_SHARE_POISSON]), figures


# ------------------------------------------------------------------------ open loop


@pytest.fixture(scope="module")
def open_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """20 req/s (constant arrivals) against batch 16 (sustainable) and batch 1 (overloaded)."""
    tmp = tmp_path_factory.mktemp("open")
    spec = tmp / "open.toml"
    spec.write_text(
        fake_spec(
            name="open",
            mode="rate",
            levels="[20]",
            duration_s=3.0,
            max_batch_size=(16, 1),
            max_batch_delay_ms=5,
            output_tokens=4,
        )
    )
    out = tmp / "run"
    run_sweep(spec, out, timeout_s=120)
    return RunDir(out)


@pytest.mark.slow
def test_open_loop_within_capacity_holds_its_rate_on_schedule(open_run: RunDir) -> None:
    p = point(open_run, 0)
    req = requests_of(open_run, 0)
    assert p[Point.CONFIG_ID] == "r1-b16-d5-w1-t1-int8-adaptive"
    assert p[Point.STATUS] == "ok"
    assert bool(p[Point.VALID]), p[Point.INVALID_REASON]
    assert p[Point.OFFERED_RPS] == 20.0
    assert p[Point.N_OK] == p[Point.N_REQUESTS] == 60  # 3 s at 20 req/s
    assert abs(p[Point.ACHIEVED_RPS] / 20.0 - 1) < 0.05, p[Point.ACHIEVED_RPS]
    assert p[Point.LAG_P95_S] < 0.020
    # Open loop: every row has its scheduled time, 50 ms apart, and lag = sent - scheduled.
    sched = np.sort(req[Col.SCHEDULED_AT].to_numpy())
    np.testing.assert_allclose(np.diff(sched), 0.05, atol=1e-6)
    assert (req[Col.USER] == -1).all()
    lag = req[Col.SENT_AT] - req[Col.SCHEDULED_AT]
    np.testing.assert_allclose(req[Col.SCHEDULE_LAG_S], lag, atol=1e-6)
    assert (req[Col.SCHEDULE_LAG_S] >= 0).all()
    np.testing.assert_allclose(
        req[Col.TTFT_FROM_SCHEDULE_S], req[Col.TTFT_S] + req[Col.SCHEDULE_LAG_S], atol=1e-9
    )
    print(
        f"within capacity: offered 20 achieved {p[Point.ACHIEVED_RPS]:.2f} req/s,"
        f" lag p95 {p[Point.LAG_P95_S] * 1000:.1f} ms, TTFT p95 {p[Point.TTFT_P95_S] * 1000:.0f} ms"
    )
    # Still near the unloaded latency: the service keeps up.
    assert p[Point.TTFT_P95_S] < 0.25


@pytest.mark.slow
def test_open_loop_above_capacity_shows_growing_latency(open_run: RunDir) -> None:
    within, above = point(open_run, 0), point(open_run, 1)
    req = requests_of(open_run, 1).sort_values(Col.SCHEDULED_AT)
    assert (
        above[Point.CONFIG_ID] == "r1-b1-d5-w1-t1-int8-adaptive"
    )  # one request at a time: ~12 req/s
    print(
        f"above capacity: offered {above[Point.OFFERED_RPS]:g} achieved "
        f"{above[Point.ACHIEVED_RPS]:.2f} req/s, TTFT p95 {above[Point.TTFT_P95_S] * 1000:.0f} ms"
        f" (corrected {above[Point.TTFT_SCHED_P95_S] * 1000:.0f} ms), e2e p95"
        f" {above[Point.E2E_P95_S] * 1000:.0f} ms (corrected"
        f" {above[Point.E2E_SCHED_P95_S] * 1000:.0f} ms), lag p95"
        f" {above[Point.LAG_P95_S] * 1000:.1f} ms"
    )
    assert above[Point.N_OK] == 60
    assert above[Point.ACHIEVED_RPS] < 0.8 * above[Point.OFFERED_RPS]
    # Latency measured from the schedule is never below latency from the send ...
    assert above[Point.TTFT_SCHED_P95_S] >= above[Point.TTFT_P95_S]
    assert above[Point.E2E_SCHED_P95_S] >= above[Point.E2E_P95_S]
    assert (req[Col.TTFT_FROM_SCHEDULE_S] >= req[Col.TTFT_S]).all()
    assert (req[Col.E2E_FROM_SCHEDULE_S] >= req[Col.E2E_S]).all()
    # ... and the backlog shows: sends stay on schedule (no coordinated omission), so queueing
    # appears as TTFT growing through the point instead of being hidden by a waiting client.
    assert above[Point.LAG_P95_S] < 0.020
    assert bool(above[Point.VALID]), above[Point.INVALID_REASON]
    ttft = req[Col.TTFT_FROM_SCHEDULE_S].to_numpy()
    quarter = len(ttft) // 4
    assert ttft[-quarter:].mean() > 3 * ttft[:quarter].mean()
    assert np.corrcoef(np.arange(len(ttft)), ttft)[0, 1] > 0.9
    assert above[Point.TTFT_SCHED_P95_S] > 5 * within[Point.TTFT_SCHED_P95_S]
    assert above[Point.E2E_SCHED_P95_S] > 5 * within[Point.E2E_SCHED_P95_S]


# ------------------------------------------------------------------------ faults and lifecycle


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_points(
    tmp_path: Path, start_sweep: Callable[[str, str], Sweep]
) -> None:
    spec_text = fake_spec(name="resume", levels="[1, 2, 3]")
    sweep = start_sweep(spec_text, "run")
    run = RunDir(sweep.out)
    sweep.wait_for("the first point", lambda: len(run.state().get("done", [])) >= 1, 60)
    sweep.proc.send_signal(signal.SIGTERM)
    assert sweep.wait(30) == 130, sweep.text()
    assert "interrupted; resume with" in sweep.stderr_path.read_text()
    assert sweep.ports
    assert wait_no_replicas(sweep.ports, timeout_s=10) == []

    done_before = run.state()["done"]
    assert 1 <= len(done_before) < 3  # interrupted mid-sweep
    first = point(run, 0)
    first_ids = set(requests_of(run, 0)[Col.REQUEST_ID])
    assert len(first_ids) == first[Point.N_REQUESTS] > 0

    proc = run_sweep(sweep.out.parent / "run.toml", sweep.out, timeout_s=90)
    assert "resuming run" in (run.path / "sweep.log").read_text()
    points = run.points()
    assert points[Point.POINT_ID].tolist() == [0, 1, 2]
    assert points[Point.LOAD_LEVEL].tolist() == [1.0, 2.0, 3.0]
    assert (points[Point.STATUS] == "ok").all(), proc.stderr
    assert len(run.state()["done"]) == 3
    # The finished point was kept as it was, not measured again.
    assert set(requests_of(run, 0)[Col.REQUEST_ID]) == first_ids
    assert point(run, 0)[Point.STARTED_AT] == first[Point.STARTED_AT]
    for pid in (1, 2):
        assert len(requests_of(run, pid)) == point(run, pid)[Point.N_REQUESTS] > 0
    assert run.requests()[Col.REQUEST_ID].is_unique
    assert wait_no_replicas(ports_of_rows(run), timeout_s=5) == []


@pytest.mark.slow
def test_sigkilled_harness_leaves_no_replica(start_sweep: Callable[[str, str], Sweep]) -> None:
    sweep = start_sweep(fake_spec(name="killed", levels="[2]", duration_s=5.0), "run")
    port, replica = sweep.wait_ready_replica()
    time.sleep(1.0)  # mid-point, requests in flight
    assert replica.is_running()
    sweep.proc.kill()
    assert sweep.wait(10) == -signal.SIGKILL
    # PR_SET_PDEATHSIG: the kernel signals the orphaned replica, which drains and exits.
    assert wait_no_replicas({port}, timeout_s=20) == []


@pytest.mark.slow
def test_replica_killed_mid_point_is_recorded_and_the_sweep_goes_on(
    start_sweep: Callable[[str, str], Sweep],
) -> None:
    sweep = start_sweep(fake_spec(name="replica-dies", levels="[1, 2]", duration_s=3.0), "run")
    port, replica = sweep.wait_ready_replica()
    log = sweep.out / "sweep.log"
    sweep.wait_for(
        "the first point's users",
        lambda: log.exists() and "All users spawned" in log.read_text(),
        timeout_s=30,
    )
    # The measured window opens 0.2 s + warm-up (0.5 s) after the users start.
    time.sleep(1.5)
    replica.kill()
    assert sweep.wait(90) == 0, sweep.text()
    assert sweep.stdout_lines()[-1] == str(sweep.out)

    run = RunDir(sweep.out)
    died, after = point(run, 0), point(run, 1)
    assert died[Point.STATUS] == "replica_died"
    assert f"replica http://127.0.0.1:{port} exited with code -9" in died[Point.STATUS_DETAIL]
    assert not bool(died[Point.VALID])
    assert "replica died" in died[Point.INVALID_REASON]
    assert died[Point.N_OK] >= 1  # it was killed mid-point, after some requests completed

    assert after[Point.STATUS] == "ok"
    assert bool(after[Point.VALID]), after[Point.INVALID_REASON]
    assert after[Point.LOAD_LEVEL] == 2.0
    fresh = set(requests_of(run, 1)[Col.TARGET])
    assert f"http://127.0.0.1:{port}" not in fresh  # measured on freshly started replicas
    ports = sweep.ports | ports_of_rows(run)
    assert len(ports) >= 2
    assert wait_no_replicas(ports, timeout_s=10) == []


def test_unreachable_remote_target_is_recorded(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    spec = tmp_path / "remote.toml"
    spec.write_text(
        textwrap.dedent(
            f"""
            [run]
            name = "remote"
            duration_s = 1.0

            [target]
            kind = "remote"
            urls = ["http://127.0.0.1:{port}"]
            ready_timeout_s = 0.5

            [load]
            concurrency = [1, 4]
            """
        )
    )
    out = tmp_path / "run"
    started = time.monotonic()
    run_sweep(spec, out, timeout_s=60)
    assert time.monotonic() - started < 30
    run = RunDir(out)
    points = run.points()
    assert points[Point.POINT_ID].tolist() == [0, 1]
    assert points[Point.LOAD_LEVEL].tolist() == [1.0, 4.0]
    assert (points[Point.STATUS] == "target_unreachable").all()
    assert points[Point.STATUS_DETAIL].str.contains(f"127.0.0.1:{port}").all()
    assert not points[Point.VALID].any()
    assert (points[Point.N_REQUESTS] == 0).all()
    assert math.isnan(points[Point.TTFT_P50_S][0])
    assert len(run.requests()) == 0
    assert sorted(p.name for p in (out / "requests").iterdir()) == ["0000.parquet", "0001.parquet"]
    assert len(run.state()["done"]) == 2


# ------------------------------------------------------------------------ distributed


@pytest.mark.slow
def test_distributed_mode_splits_an_open_loop_schedule_over_locust_workers(
    tmp_path: Path,
) -> None:
    """``--workers 2``: a Locust master and two worker processes share one global schedule."""
    spec = tmp_path / "dist.toml"
    spec.write_text(
        fake_spec(name="dist", mode="rate", levels="[20.0]", duration_s=3.0, output_tokens=4)
    )
    out = tmp_path / "run"
    run_sweep_args = [str(TOKENBOOTH), "sweep", str(spec), "--output", str(out), "--quiet"]
    proc = subprocess.run(
        [*run_sweep_args, "--workers", "2"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = RunDir(out)
    p = point(run, 0)
    rows = requests_of(run, 0)
    # A constant 20 req/s schedule over 3 s: 60 sends, split between the two workers.
    assert 55 <= len(rows) <= 61
    assert rows[Col.OK].all()
    assert p[Point.VALID], p[Point.INVALID_REASON]
    sched = np.sort(rows[Col.SCHEDULED_AT].to_numpy())
    # Both workers' shares interleave back into the single global schedule.
    assert np.allclose(np.diff(sched), 1 / 20.0, atol=1e-6)
    assert rows[Col.SCHEDULE_LAG_S].quantile(0.95) < 0.05
    assert "Locust distributed mode: 2 workers connected" in (out / "sweep.log").read_text()
    # Each worker's share and CPU, as for workers on other hosts (test_distributed_hosts).
    workers = run.workers()
    assert sorted(workers[Wk.WORKER]) == [0, 1]
    assert int(workers[Wk.ROWS].sum()) == len(rows)
