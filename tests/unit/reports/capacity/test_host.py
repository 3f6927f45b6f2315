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


def _two_groups(spare_workers: int) -> list[synth.SynthPoint]:
    """Closed loop of ``u`` users in two groups of ``u/2``, each on its own worker at once (a
    regular and a spare), every busy worker using 1 core: batch busy time exceeds the window."""
    pts = []
    for u in (2, 4, 8):
        p = synth.closed_loop_point(u // 2, 1)
        p.load_level = float(u)
        p.achieved_rps *= 2
        p.spare_workers = spare_workers
        p.cpu_per_busy_s = 1.0
        pts.append(p)
    return pts


def test_busy_time_of_spare_workers_is_shared_over_all_workers(tmp_path: Path) -> None:
    env = synth.environment(gpu=False, cpu_count=2)
    spare = fit_run_dir(synth.write_run(tmp_path / "s", _two_groups(1), name="s", env=env))
    # Busy time twice the window over two workers: one core per busy worker, as placed.
    (st,) = spare.services.values()
    assert st.spare_workers == 1 and st.workers == 2
    assert st.worker_cpu_cores == pytest.approx(1.0, rel=0.02)
    # Read as one worker, the same busy time is capped at the window: the CPU per worker is
    # overstated (what the fit did before it counted spares).
    alone = fit_run_dir(synth.write_run(tmp_path / "n", _two_groups(0), name="n", env=env))
    assert alone.service(BASE).worker_cpu_cores > 1.5
