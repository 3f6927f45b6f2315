"""Capacity model: fitted service times, two-replica predictions from one, hold-out error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from loadgen.results import SERVER_DIR, RunDir
from reports.load import Rpt, Slo
from reports.model import LOCUST_START_SPREAD_S, CapacityModel, expected_max, fit, fit_run_dir
from tests.unit.reports import synth

BASE = "int8 b8 d5ms w1 t1"


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


def test_full_batch_throughput_is_analytic(one_replica_model: CapacityModel) -> None:
    svc = synth.SERVICE
    expected = 8 / svc.batch_time(8)
    assert one_replica_model.max_throughput(BASE, 1) == pytest.approx(expected, rel=1e-6)
    # A GPU host: replicas do not contend, so two are exactly twice one.
    assert one_replica_model.max_throughput(BASE, 2) == pytest.approx(2 * expected, rel=1e-6)


@pytest.mark.parametrize("users", synth.SCALING_USERS)
def test_two_replicas_predicted_from_one_within_15_percent(
    one_replica_model: CapacityModel, users: int
) -> None:
    pred = one_replica_model.predict(BASE, 2, concurrency=2 * users)
    measured = synth.closed_loop_point(2 * users, 2)
    assert pred.throughput_rps == pytest.approx(measured.achieved_rps, rel=0.15)
    # The queue is replayed exactly, so in fact it is much closer than the 15% target.
    assert pred.throughput_rps == pytest.approx(measured.achieved_rps, rel=0.03)
    assert pred.ttft_p95_s == pytest.approx(measured.ttft_p95_s, rel=0.05)
    assert pred.mean_batch_size == pytest.approx(users)


def test_holdout_error_on_cross_replica_points(scaling_run: Path) -> None:
    model = fit_run_dir(scaling_run)
    holdout = model.holdout_error()
    kinds = set(holdout.table[Rpt.HOLDOUT_KIND])
    assert kinds == {"leave-one-out", "cross-replica"}
    cross = holdout.table[holdout.table[Rpt.HOLDOUT_KIND] == "cross-replica"]
    assert len(cross) == len(synth.SCALING_USERS)
    assert holdout.by_kind["cross-replica"][0] < 0.03
    assert holdout.throughput_mape < 0.05
    assert model.holdout_error() is holdout  # cached


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


def test_open_loop_predictions(one_replica_model: CapacityModel) -> None:
    top = one_replica_model.max_throughput(BASE, 1)
    light = one_replica_model.predict(BASE, 1, 0.3 * top)
    assert not light.saturated
    assert light.throughput_rps == pytest.approx(0.3 * top, rel=0.1)
    heavy = one_replica_model.predict(BASE, 1, 2 * top)
    assert heavy.saturated
    assert heavy.throughput_rps < 1.05 * top
    assert heavy.ttft_p95_s > light.ttft_p95_s
    slo = Slo(ttft_p95_s=0.5)
    cap = one_replica_model.slo_capacity(BASE, 1, slo)
    assert 0.3 * top < cap < top
    assert one_replica_model.predict(BASE, 1, round(0.9 * cap, 3)).meets(slo)
    assert one_replica_model.min_replicas(BASE, 1.5 * top, slo) == 2


def test_cpu_contention_slows_replicas_sharing_cores(tmp_path: Path) -> None:
    pts = [synth.closed_loop_point(u, 1) for u in synth.SCALING_USERS]
    run = synth.write_run(
        tmp_path / "cpu", pts, name="cpu", env=synth.environment(gpu=False, cpu_count=1)
    )
    model = fit_run_dir(run)
    assert model.device == "cpu" and model.cpu_cores == 1
    assert model.slowdown(BASE, 2) == 2.0
    # Two replicas on one core do no more work than one.
    assert model.max_throughput(BASE, 2) == pytest.approx(model.max_throughput(BASE, 1))


def test_prediction_arguments_are_checked(one_replica_model: CapacityModel) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        one_replica_model.predict(BASE, 1, 1.0, concurrency=2)
    with pytest.raises(ValueError, match="exactly one"):
        one_replica_model.predict(BASE, 1)
    with pytest.raises(KeyError, match="not in this run"):
        one_replica_model.predict("fp32 b1", 1, 1.0)
    # A full label (with the replica count) names the same base configuration.
    assert one_replica_model.service(f"{BASE} ×2").base_config == BASE


def test_no_server_metrics_no_silent_model(tmp_path: Path, scaling_run: Path) -> None:
    copy = tmp_path / "no-server"
    shutil.copytree(scaling_run, copy)
    shutil.rmtree(copy / SERVER_DIR)
    (copy / SERVER_DIR).mkdir()
    model = fit_run_dir(copy)
    assert model.services == {}
    assert "server batch metrics" in model.unfitted[BASE]


def test_expected_max() -> None:
    assert expected_max(np.array([16.0, 16.0]), 4) == 16.0
    # Two equally likely lengths 1 and 3: the longer of two draws is 3 unless both are 1.
    assert expected_max(np.array([1.0, 3.0]), 2) == pytest.approx(2.5)
    assert expected_max(np.array([1.0, 3.0]), 1.5) == pytest.approx(2.25)
    assert np.isnan(expected_max(np.array([]), 2))
