"""CPU contention: replicas sharing a CPU host slow each other by demand over cores."""

from __future__ import annotations

from pathlib import Path

import pytest

from reports.capacity import fit_run_dir
from tests.unit.reports import synth

BASE = synth.INT8_BASE_ID


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
