"""Autoscaling advice on synthetic run directories with a known queue wait and cold start."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from loadgen.results import ColdStartStatus, Cs, RunDir
from reports.analysis import analyze
from reports.autoscaling import (
    HPA_SYNC_PERIOD_S,
    METRIC_LAG_S,
    PROBE_PERIOD_S,
    advise,
    autoscaling_section,
    lead_time_s,
)
from reports.load import load_run
from reports.recommend import recommend
from reports.sections import report_sections
from tests.unit.reports.synth import INT8_X1_KEY, INT8_X2_KEY, write_capacity_run


def _cold(config_id: str, url: str, total: float, status: str = ColdStartStatus.MEASURED) -> dict:
    measured = status == ColdStartStatus.MEASURED
    return {
        Cs.CONFIG_ID: config_id,
        Cs.REPLICA: url,
        Cs.STATUS: status,
        Cs.DETAIL: "" if measured else "tokenbooth_startup_duration_seconds not exported",
        Cs.INIT_S: 1.0 if measured else math.nan,
        Cs.LOAD_S: total - 1.5 if measured else math.nan,
        Cs.WARMUP_S: 0.5 if measured else math.nan,
        Cs.TOTAL_S: total if measured else math.nan,
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_capacity_run(tmp_path_factory.mktemp("autoscale") / "run")
    rd = RunDir(path)
    rd.write_cold_start(
        [_cold(INT8_X1_KEY, "http://a", 20.0), _cold(INT8_X1_KEY, "http://b", 30.0)]
    )
    # Rewriting a replica replaces its row; another configuration's rows are kept.
    rd.write_cold_start([_cold(INT8_X2_KEY, "http://c", 8.0), _cold(INT8_X2_KEY, "http://d", 6.0)])
    return path


def test_cold_start_file_round_trips_and_replaces_by_replica(run_dir: Path) -> None:
    rd = RunDir(run_dir)
    rd.write_cold_start([_cold(INT8_X2_KEY, "http://c", 9.0)])
    frame = rd.cold_start()
    assert len(frame) == 4
    c = frame[frame[Cs.REPLICA] == "http://c"]
    assert c[Cs.TOTAL_S].tolist() == [9.0]
    assert (frame[Cs.DETAIL] == "").all()
    rd.write_cold_start([_cold(INT8_X2_KEY, "http://c", 8.0)])


def test_waiting_at_capacity_is_littles_law_on_the_measured_queue_wait(run_dir: Path) -> None:
    analysis = analyze(load_run(run_dir), n_resamples=0)
    advice = {a.config_key: a for a in advise(analysis)}
    assert {INT8_X1_KEY, INT8_X2_KEY} <= advice.keys()
    # synth: queue wait = 0.002 s x rate on one replica, 0.001 s x rate on two.
    for key, slope, replicas in ((INT8_X1_KEY, 0.002, 1), (INT8_X2_KEY, 0.001, 2)):
        a = advice[key]
        cap = analysis.capacity[key].rate_rps
        assert a.replicas == replicas
        assert a.per_replica_rps == pytest.approx(cap / replicas)
        assert a.queue_wait_s == pytest.approx(slope * cap, rel=1e-6)
        assert a.waiting_at_capacity == pytest.approx(cap / replicas * slope * cap, rel=1e-6)


def test_ramp_advice_uses_the_slowest_replica_and_the_lead_time(run_dir: Path) -> None:
    analysis = analyze(load_run(run_dir), n_resamples=0)
    advice = {a.config_key: a for a in advise(analysis)}
    one, two = advice[INT8_X1_KEY], advice[INT8_X2_KEY]
    assert one.cold_start_s == 30.0 and two.cold_start_s == 8.0
    assert one.lead_s == METRIC_LAG_S + HPA_SYNC_PERIOD_S + 30.0 + 2 * PROBE_PERIOD_S
    assert two.lead_s == lead_time_s(8.0)
    assert one.behaviour is not None and two.behaviour is not None
    assert one.behaviour.step_period_s >= two.behaviour.step_period_s
    c = two.per_replica_rps
    headline = two.headline
    assert headline is not None
    added = c * two.lead_s / 60
    assert headline.added_rps == pytest.approx(added)
    assert headline.start_fraction == pytest.approx(1 - added / (2 * c))
    start = headline.start_fraction * c
    # Little's law at the lower rate where scale-up must begin (wait 0.001 s x fleet rate).
    assert headline.target_waiting == pytest.approx(start * 0.001 * start * 2, rel=1e-6)
    assert headline.target_waiting < two.waiting_at_capacity
    # One replica and a steep ramp: no reactive start is early enough; say how many spare.
    steep = one.ramps[-1]
    assert steep.start_fraction <= 0
    assert math.isnan(steep.target_waiting)
    assert steep.spare_replicas == math.ceil(steep.added_rps / one.per_replica_rps)


def test_section_is_in_the_report_and_says_when_cold_start_is_missing(tmp_path: Path) -> None:
    path = write_capacity_run(tmp_path / "run")
    RunDir(path).write_cold_start(
        [_cold(INT8_X1_KEY, "http://a", 0.0, status=ColdStartStatus.NOT_EXPORTED)]
    )
    analysis = analyze(load_run(path), n_resamples=0)
    section = autoscaling_section(analysis)
    assert section is not None
    cells = " ".join(" ".join(row) for row in section.tables[0].rows)
    assert "not_exported: tokenbooth_startup_duration_seconds not exported" in cells
    assert "not recorded" in cells  # c2 has no row at all
    assert len(section.tables) == 1 and not section.code  # no ramp advice without a cold start
    assert "No ramp advice" in " ".join(section.paragraphs)
    rec = recommend(analysis, None, None)
    keys = [s.key for s in report_sections(analysis, None, "no model", rec, None)]
    assert keys.index("autoscaling") == keys.index("capacity") + 1
