"""Fitted service times: the synthetic run's known batch service time is recovered."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loadgen.results import SERVER_DIR, RunDir
from reports.capacity import LOCUST_START_SPREAD_S, CapacityModel, fit, fit_run_dir
from tests.unit.reports import synth

BASE = synth.INT8_BASE_ID


def test_fit_recovers_the_batch_service_time(one_replica_model: CapacityModel) -> None:
    st = one_replica_model.service(BASE)
    svc = synth.SERVICE
    assert st.prefill_s == pytest.approx((svc.p0, svc.p1), rel=1e-6, abs=1e-9)
    assert st.step_s == pytest.approx((svc.s0, svc.s1), rel=1e-6, abs=1e-9)
    assert st.client_overhead_s == pytest.approx(svc.overhead_s, abs=1e-6)
    assert st.fit_replicas == (1,)
    assert st.batch_size_range == (1.0, 8.0)
    # Measured batches hold every user: users that start together reproduce that.
    assert st.user_start_spread_s == 0.0


def test_start_spread_is_calibrated_on_measured_batch_sizes(tmp_path: Path) -> None:
    # Batches far smaller than the user count: users settled into separate groups, as they do
    # when Locust spawns them over its 10 ms interval.
    pts = [synth.closed_loop_point(u, 1) for u in synth.SCALING_USERS]
    for p in pts[1:]:
        p.batch_size = 1.2
    model = fit_run_dir(synth.write_run(tmp_path / "split", pts, name="split"))
    assert model.service(BASE).user_start_spread_s == LOCUST_START_SPREAD_S


def test_fit_from_frames_matches_fit_from_directory(scaling_run: Path) -> None:
    rd = RunDir(scaling_run)
    model = fit(
        rd.points(),
        rd.requests(),
        rd.server(),
        spec=rd.spec_text(),
        environment=rd.environment(),
        fit_replicas=[1],
    )
    pred = model.predict(BASE, 2, concurrency=8)
    assert pred.throughput_rps == pytest.approx(synth.expected_closed_loop_rps(8, 2), rel=0.03)


def test_no_server_metrics_no_silent_model(tmp_path: Path, scaling_run: Path) -> None:
    copy = tmp_path / "no-server"
    shutil.copytree(scaling_run, copy)
    shutil.rmtree(copy / SERVER_DIR)
    (copy / SERVER_DIR).mkdir()
    model = fit_run_dir(copy)
    assert model.services == {}
    assert "server batch metrics" in model.unfitted[BASE]
    assert model.label(BASE) == synth.INT8_BASE  # an unfitted configuration keeps its label
