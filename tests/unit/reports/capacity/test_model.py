"""Capacity model: two-replica predictions from one, open-loop predictions, hold-out error."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadgen.spec import SLOSpec
from reports.capacity import LOCUST_START_SPREAD_S, CapacityModel, fit_run_dir
from reports.load import Rpt
from tests.unit.reports import synth

BASE = synth.INT8_BASE_ID


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
    # 15% is the tolerance, not the 3% this fit happens to reach: how closely users stay in
    # step over two replicas hangs on the fitted start spread, which the seeded calibration
    # can settle differently (test_cross_replica_error_follows_the_fitted_start_spread).
    assert pred.throughput_rps == pytest.approx(measured.achieved_rps, rel=0.15)
    # The synthetic measurement is the ideal queue, every user of a replica in one batch:
    # a replay can lose batch-mates, never gain them, so it never predicts more.
    assert pred.throughput_rps <= measured.achieved_rps
    assert pred.ttft_p95_s == pytest.approx(measured.ttft_p95_s, rel=0.05)
    assert pred.mean_batch_size == pytest.approx(users)


def test_cross_replica_error_follows_the_fitted_start_spread(scaling_run: Path) -> None:
    # With seed 3 both start spreads reproduce the single-replica batch sizes (one replica's
    # 8 users regroup into one batch either way), so the first candidate, Locust's 10 ms,
    # stays; over two replicas 16 users then fall out of step and batches lose members.
    model = fit_run_dir(scaling_run, fit_replicas=[1], seed=3)
    assert model.service(BASE).user_start_spread_s == LOCUST_START_SPREAD_S
    pred = model.predict(BASE, 2, concurrency=16)
    measured = synth.closed_loop_point(16, 2)
    assert pred.mean_batch_size < 8
    assert pred.throughput_rps < measured.achieved_rps * (1 - 0.03)
    assert pred.throughput_rps == pytest.approx(measured.achieved_rps, rel=0.15)


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


def test_open_loop_predictions(one_replica_model: CapacityModel) -> None:
    top = one_replica_model.max_throughput(BASE, 1)
    light = one_replica_model.predict(BASE, 1, 0.3 * top)
    assert not light.saturated
    assert light.throughput_rps == pytest.approx(0.3 * top, rel=0.1)
    heavy = one_replica_model.predict(BASE, 1, 2 * top)
    assert heavy.saturated
    assert heavy.throughput_rps < 1.05 * top
    assert heavy.ttft_p95_s > light.ttft_p95_s
    slo = SLOSpec(ttft_p95_s=0.5, max_error_rate=None)
    cap = one_replica_model.slo_capacity(BASE, 1, slo)
    assert 0.3 * top < cap < top
    assert one_replica_model.predict(BASE, 1, round(0.9 * cap, 3)).meets(slo)
    assert one_replica_model.min_replicas(BASE, 1.5 * top, slo) == 2


def test_prediction_arguments_are_checked(one_replica_model: CapacityModel) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        one_replica_model.predict(BASE, 1, 1.0, concurrency=2)
    with pytest.raises(ValueError, match="exactly one"):
        one_replica_model.predict(BASE, 1)
    with pytest.raises(KeyError, match="not in this run"):
        one_replica_model.predict("b1-d0-w1-t1-fp32", 1, 1.0)
    # Configurations are named by key: a display label, with or without ×N, names none.
    with pytest.raises(KeyError, match="not in this run"):
        one_replica_model.service(f"{synth.INT8_BASE} ×2")
    assert one_replica_model.service(BASE).label == synth.INT8_BASE
