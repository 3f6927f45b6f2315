"""Configurations are keyed by config_id and typed columns; labels only display them.

Two configurations whose display labels coincide (a label rounds the batch delay to six
significant digits, a key does not) stay two configurations through every stage.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadgen.results import Point
from reports.analysis import Analysis, analyze
from reports.capacity import fit_analysis
from reports.compare import compare
from reports.load import Rpt, RunDirError, config_label, load_run
from reports.recommend import recommend
from service.settings import ADAPTIVE_POLICY, TRITON_POLICY
from tests.unit.reports import synth

SAME_LABEL = "int8 b8 d5ms w1 t1 ×1"
RATES = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Analysis:
    """Configuration "cA" (5 ms batch delay) and "cB" (5.0000004 ms, TTFT 50% higher)."""
    pts = [
        synth.SynthPoint("cA", r, r, t, batch_size=1 + r / 2)
        for r, t in zip(RATES, synth.KNEE_TTFT, strict=True)
    ]
    pts += [
        synth.SynthPoint("cB", r, r, 1.5 * t, batch_size=1 + r / 2, max_batch_delay_ms=5.0000004)
        for r, t in zip(RATES, synth.KNEE_TTFT, strict=True)
    ]
    run = synth.write_run(tmp_path_factory.mktemp("runs") / "twins", pts, name="twins")
    return analyze(load_run(run))


def test_same_label_different_keys(twins: Analysis) -> None:
    pts = twins.points
    assert {config_label(r) for _, r in pts.iterrows()} == {SAME_LABEL}
    by_key = pts.drop_duplicates(Rpt.CONFIG_KEY).set_index(Rpt.CONFIG_KEY)
    assert sorted(by_key.index) == ["cA", "cB"]
    assert by_key.loc["cA", Rpt.BASE_CONFIG_ID] == "b8-d5-w1-t1-int8"
    assert by_key.loc["cB", Rpt.BASE_CONFIG_ID] == "b8-d5.0000004-w1-t1-int8"
    # Each key gets a label of its own, so tables and figure legends can tell them apart.
    assert by_key.loc["cA", Rpt.CONFIG] == f"{SAME_LABEL} [cA]"
    assert by_key.loc["cB", Rpt.CONFIG] == f"{SAME_LABEL} [cB]"
    assert pts[Rpt.BASE_CONFIG].nunique() == 2


def test_analysis_keeps_them_apart(twins: Analysis) -> None:
    assert set(twins.capacity) == set(twins.knees) == {"cA", "cB"}
    a, b = twins.capacity["cA"], twins.capacity["cB"]
    assert a.usable and b.usable
    assert b.rate_rps < a.rate_rps  # cB's TTFT is higher: it crosses the SLO earlier
    levels = twins.levels
    assert (levels.groupby(Rpt.CONFIG_KEY)[Point.LOAD_LEVEL].count() == len(RATES)).all()
    assert len(twins.capacity_table()) == 2


def test_model_recommendation_and_comparison_keep_them_apart(twins: Analysis) -> None:
    model = fit_analysis(twins)
    assert sorted(model.services) == ["b8-d5-w1-t1-int8", "b8-d5.0000004-w1-t1-int8"]
    assert all(st.fit_points == len(RATES) for st in model.services.values())
    assert model.services["b8-d5.0000004-w1-t1-int8"].max_batch_delay_s == pytest.approx(
        5.0000004e-3, rel=1e-12
    )
    rec = recommend(twins, model, 2.0)
    assert sorted(o.base_config_id for o in rec.options) == sorted(model.services)
    cmp = compare(twins, twins)
    assert not cmp.unmatched
    assert set(cmp.table[Rpt.CONFIG_KEY]) == {"cA", "cB"}
    assert len(cmp.capacity) == 2


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Analysis:
    """Configurations "cT" (triton batch policy) and "cA" (adaptive), all else the same."""
    pts = [
        synth.SynthPoint(key, r, r, t, batch_size=1 + r / 2, batch_policy=policy)
        for key, policy in (("cT", TRITON_POLICY), ("cA", ADAPTIVE_POLICY))
        for r, t in zip(RATES, synth.KNEE_TTFT, strict=True)
    ]
    run = synth.write_run(tmp_path_factory.mktemp("runs") / "policies", pts, name="policies")
    return analyze(load_run(run))


def test_batch_policy_keeps_configurations_apart_into_the_model(policies: Analysis) -> None:
    by_key = policies.points.drop_duplicates(Rpt.CONFIG_KEY).set_index(Rpt.CONFIG_KEY)
    # The default policy adds nothing to the key, as in the sweep's config_id.
    assert by_key.loc["cT", Rpt.BASE_CONFIG_ID] == "b8-d5-w1-t1-int8"
    assert by_key.loc["cA", Rpt.BASE_CONFIG_ID] == "b8-d5-w1-t1-int8-adaptive"
    assert by_key.loc["cA", Rpt.BASE_CONFIG] == "int8 b8 d5ms w1 t1 adaptive"
    model = fit_analysis(policies)
    assert {base: st.batch_policy for base, st in model.services.items()} == {
        "b8-d5-w1-t1-int8": TRITON_POLICY,
        "b8-d5-w1-t1-int8-adaptive": ADAPTIVE_POLICY,
    }
    assert all(st.fit_points == len(RATES) for st in model.services.values())


def test_spare_workers_keep_configurations_apart_into_the_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pts = [
        synth.SynthPoint(key, r, r, t, batch_size=1 + r / 2, spare_workers=spare)
        for key, spare in (("c0", 0), ("c1", 1))
        for r, t in zip(RATES, synth.KNEE_TTFT, strict=True)
    ]
    run = synth.write_run(tmp_path_factory.mktemp("runs") / "spares", pts, name="spares")
    spares = analyze(load_run(run))
    by_key = spares.points.drop_duplicates(Rpt.CONFIG_KEY).set_index(Rpt.CONFIG_KEY)
    # No spare adds nothing, as in the sweep's config_id; one goes after the workers.
    assert by_key.loc["c0", Rpt.BASE_CONFIG_ID] == "b8-d5-w1-t1-int8"
    assert by_key.loc["c1", Rpt.BASE_CONFIG_ID] == "b8-d5-w1-s1-t1-int8"
    assert by_key.loc["c1", Rpt.BASE_CONFIG] == "int8 b8 d5ms w1 +1 spare t1"
    model = fit_analysis(spares)
    assert {base: st.spare_workers for base, st in model.services.items()} == {
        "b8-d5-w1-t1-int8": 0,
        "b8-d5-w1-s1-t1-int8": 1,
    }


def test_a_run_without_batch_policies_ran_triton(twins: Analysis) -> None:
    assert twins.points[Point.BATCH_POLICY].isna().all()
    model = fit_analysis(twins)
    assert {st.batch_policy for st in model.services.values()} == {TRITON_POLICY}


def test_an_unknown_batch_policy_in_a_run_dir_is_named(tmp_path: Path) -> None:
    pts = [synth.SynthPoint("cX", 1.0, 1.0, 0.1, batch_policy="fifo")]
    run = synth.write_run(tmp_path / "fifo", pts, name="fifo")
    with pytest.raises(RunDirError, match=r"unknown batch_policy 'fifo'.*'cX'"):
        load_run(run)
