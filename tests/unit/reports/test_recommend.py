"""The recommendation: fewest replicas meeting the SLO at the target load, with headroom."""

from __future__ import annotations

import pytest

from reports.analysis import Analysis
from reports.capacity import fit_analysis
from reports.recommend import recommend
from tests.unit.reports import synth


def test_target_from_spec_needs_two_measured_replicas(capacity_analysis: Analysis) -> None:
    model = fit_analysis(capacity_analysis)
    rec = recommend(capacity_analysis, model, capacity_analysis.run.spec.target_rps)
    assert rec.target_rps == synth.TARGET_RPS
    best = rec.best
    assert best is not None
    assert (best.base_config, best.replicas) == ("int8 b8 d5ms w1 t1", 2)
    assert best.source == "measured"
    assert best.capacity_rps == pytest.approx(synth.INT8_X2_CAPACITY_RPS)
    assert best.headroom == pytest.approx(synth.INT8_X2_CAPACITY_RPS / synth.TARGET_RPS - 1)
    assert "2 replicas of int8 b8 d5ms w1 t1" in rec.headline()
    assert "+27%" in rec.headline()


def test_low_target_fits_one_replica_and_ranks_by_headroom(capacity_analysis: Analysis) -> None:
    rec = recommend(capacity_analysis, None, 4.0, target_source="--target-rps")
    assert rec.best is not None
    assert rec.best.config == "int8 b8 d5ms w1 t1 ×1"
    # Both configurations carry 4 req/s on one replica; int8 has more headroom (5.44 vs 5).
    assert [o.base_config for o in rec.options] == ["int8 b8 d5ms w1 t1", "float16 b8 d5ms w1 t1"]
    assert rec.options[1].headroom == pytest.approx(5.0 / 4.0 - 1)


def test_unmeasured_replica_counts_come_from_the_model(capacity_analysis: Analysis) -> None:
    model = fit_analysis(capacity_analysis)
    target = 30.0  # above every measured capacity
    rec = recommend(capacity_analysis, model, target)
    assert rec.best is not None
    assert rec.best.source == "model"
    assert rec.best.replicas >= 3
    assert rec.best.capacity_rps >= target
    pred = model.predict(rec.best.base_config_id, rec.best.replicas, target)
    assert pred.meets(capacity_analysis.slo)
    if rec.best.replicas > 1:
        fewer = model.predict(rec.best.base_config_id, rec.best.replicas - 1, target)
        assert not fewer.meets(capacity_analysis.slo) or rec.best.replicas - 1 in (1, 2)


def test_without_a_model_nothing_beyond_the_measurements(capacity_analysis: Analysis) -> None:
    rec = recommend(capacity_analysis, None, 30.0)
    assert rec.best is None
    assert set(rec.infeasible) == {synth.INT8_BASE_ID, synth.FLOAT16_BASE_ID}
    assert [label for label, _ in rec.infeasible_by_label()] == [
        "float16 b8 d5ms w1 t1",
        "int8 b8 d5ms w1 t1",
    ]
    assert "No configuration" in rec.headline()


def test_no_target_no_recommendation(capacity_analysis: Analysis) -> None:
    rec = recommend(capacity_analysis, None, None)
    assert rec.best is None and rec.options == []
    assert "No target load" in rec.headline()
