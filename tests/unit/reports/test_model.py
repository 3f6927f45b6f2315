"""Capacity model: fitted service times, two-replica predictions from one, hold-out error."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loadgen.results import SERVER_DIR, Col, RunDir
from loadgen.spec import SLOSpec
from reports.load import Rpt
from reports.model import (
    LOCUST_START_SPREAD_S,
    CapacityModel,
    ServiceTimes,
    Window,
    batch_catch_counts,
    decode_step_table,
    expected_max,
    fit,
    fit_run_dir,
    request_steps,
    step_clock,
)
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
    slo = SLOSpec(ttft_p95_s=0.5, max_error_rate=None)
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


# ------------------------------------------------------------------ batch dynamics


def test_longer_prompts_start_and_end_later_in_a_batch() -> None:
    # CTranslate2 prefills up to the shortest prompt and forces the rest one step at a time.
    first, last = request_steps([30, 45], [24, 24])
    assert first == [0, 15]
    assert last == [23, 38]
    clock = step_clock(last, 0.02, 0.01)
    # Steps 1..23 run both sequences (40 ms each), 24..38 only the longer prompt (30 ms).
    assert clock(0) == 0.0
    assert clock(15) == pytest.approx(15 * 0.04)
    assert clock(23) == pytest.approx(23 * 0.04)
    assert clock(38) == pytest.approx(23 * 0.04 + 15 * 0.03)


def test_decode_step_table() -> None:
    same = decode_step_table(np.full(10, 64), np.full(10, 16), 4)
    assert same == tuple((15.0, 15.0 * b) for b in range(1, 5))
    # Prompts of 0 or 10 tokens, one output token: two requests differ by 10 steps half the
    # time, and then only the longer one runs those steps.
    spread = decode_step_table(np.array([0, 10]), np.array([1, 1]), 2)
    assert spread[0] == (0.0, 0.0)
    assert spread[1] == pytest.approx((5.0, 5.0), abs=0.3)


def _race_rows(rows: list[tuple[int, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                Col.USER: user,
                Col.TARGET: "http://127.0.0.1:8000",
                Col.SENT_AT: sent,
                Col.FIRST_TOKEN_AT: first,
                Col.FINISHED_AT: fin,
            }
            for user, sent, first, fin in rows
        ]
    )


def test_batch_catch_counts_from_client_rows() -> None:
    rows = _race_rows(
        [
            # batch 1: user 1's longer prompt finishes last; user 0 already waits again
            (0, 0.0, 0.1, 0.5),
            (1, 0.0, 0.3, 0.8),
            # batch 2: user 1's next request caught it
            (0, 0.5, 0.9, 1.3),
            (1, 0.8, 1.1, 1.6),
            # batch 3: user 1 (last of batch 2) missed it and waits for batch 4
            (0, 1.3, 1.7, 2.1),
            (1, 1.6, 2.2, 2.6),
            # batch 5: user 0 (last of batch 3) missed batch 4
            (0, 2.1, 2.7, 3.0),
        ]
    )
    assert batch_catch_counts(rows) == (1, 3)
    assert batch_catch_counts(rows.iloc[:0]) == (0, 0)


STAGGERED = ServiceTimes(
    base_config="staggered",
    max_batch_size=8,
    max_batch_delay_s=0.005,
    batch_workers=1,
    intra_threads=1,
    prefill_s=(0.020, 0.004),
    step_s=(0.010, 0.002),
    output_tokens=(16, 16),
    prompt_tokens=(40, 60),  # two prompt lengths, 20 tokens apart
    client_overhead_s=0.003,
    fit_points=1,
    fit_replicas=(1,),
    batch_size_range=(1.0, 2.0),
    prefill_rel_rmse=0.0,
    step_rel_rmse=0.0,
)


def _staggered_model(catch: float) -> CapacityModel:
    st = replace(STAGGERED, catch_next_batch_p=catch)
    return CapacityModel(
        services={st.base_config: st},
        unfitted={},
        window=Window(duration_s=20.0, warmup_s=2.0),
        balance="least_outstanding",
        device="cuda",
        cpu_cores=None,
        points=pd.DataFrame(),
    )


def test_users_desynchronise_when_the_last_request_misses_the_next_batch() -> None:
    single = STAGGERED.batch_time_s(1)  # 0.024 + 15 x 0.012 = 0.204 s
    assert single == pytest.approx(0.204)
    # Always caught: both users share every batch.
    caught = _staggered_model(1.0).predict("staggered", 1, concurrency=2)
    assert caught.mean_batch_size == 2.0
    # Never caught: once two prompts of different length share a batch, the shorter one's
    # user waits for it, the longer one's misses the next batch, and from then on each runs
    # alone while the other waits: single-request batches back to back.
    missed = _staggered_model(0.0)
    one = missed.predict("staggered", 1, concurrency=2)
    assert one.mean_batch_size == pytest.approx(1.0, abs=0.05)
    assert one.throughput_rps == pytest.approx(1 / single, rel=0.03)
    assert one.throughput_rps < caught.throughput_rps
    # The same with two replicas of two users each: twice the throughput, batches of one.
    two = missed.predict("staggered", 2, concurrency=4)
    assert two.mean_batch_size == pytest.approx(1.0, abs=0.05)
    assert two.throughput_rps == pytest.approx(2 / single, rel=0.03)


def test_unobserved_catch_race_is_even_odds(one_replica_model: CapacityModel) -> None:
    # The synthetic users of a replica always share one batch: nobody ever waits while a
    # batch ends, so the race is never run and its odds are unknown.
    st = one_replica_model.service(BASE)
    assert st.catch_next_batch_p == 0.5
    assert any("never observed" in n for n in st.notes)


# ------------------------------------------------------------------ CPU contention


def test_cpu_demand_from_process_cpu_sets_the_contention(tmp_path: Path) -> None:
    # Each busy replica uses 1.5 cores (engine plus request handling) on a 2-core host: one
    # replica fits, two need 3 cores and every step runs 1.5x slower.
    pts = [synth.closed_loop_point(u, 1) for u in synth.SCALING_USERS]
    for p in pts:
        p.cpu_per_busy_s = 1.5
    run = synth.write_run(
        tmp_path / "cpu", pts, name="cpu", env=synth.environment(gpu=False, cpu_count=2)
    )
    model = fit_run_dir(run)
    st = model.service(BASE)
    assert st.worker_cpu_cores == pytest.approx(1.5)
    # The fitted points ran uncontended: the service times are the true ones.
    assert st.prefill_s == pytest.approx((synth.SERVICE.p0, synth.SERVICE.p1), rel=1e-6)
    assert model.slowdown(BASE, 1) == 1.0
    assert model.slowdown(BASE, 2) == pytest.approx(1.5)
    assert model.max_throughput(BASE, 2) == pytest.approx(2 * model.max_throughput(BASE, 1) / 1.5)
    # Closed loop, users of each replica in one batch: the replicas run their batches in
    # lockstep, so every batch runs contended. Cycle: overhead, batcher delay, slowed batch.
    svc = synth.SERVICE
    pred = model.predict(BASE, 2, concurrency=8)
    assert pred.slowdown == pytest.approx(1.5)
    cycle = svc.overhead_s + 0.005 + 1.5 * svc.batch_time(4)
    assert pred.throughput_rps == pytest.approx(8 / cycle, rel=0.03)
    # One user in all: only one worker is ever busy and nothing slows.
    assert model.predict(BASE, 2, concurrency=1).slowdown == 1.0
