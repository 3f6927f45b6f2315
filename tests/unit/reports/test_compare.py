"""Run comparison: a regression of known size is flagged, a change within noise is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadgen.results import Point
from reports.analysis import Analysis, analyze
from reports.compare import compare
from reports.load import Rpt, load_run
from tests.unit.reports import synth


def _variant(tmp_path: Path, name: str, **kw: float) -> Analysis:
    return analyze(load_run(synth.write_capacity_run(tmp_path / name, name=name, **kw)))


def test_twenty_percent_throughput_regression_is_flagged(
    tmp_path: Path, capacity_analysis: Analysis
) -> None:
    slower = _variant(tmp_path, "slower", rps_factor=0.8)
    cmp = compare(capacity_analysis, slower)
    reg = cmp.regressions
    thr = reg[reg[Rpt.COLUMN] == Point.ACHIEVED_RPS]
    # Every int8 level lost 20%; float16 was left alone.
    assert set(thr[Rpt.CONFIG]) == {synth.INT8_X1, synth.INT8_X2}
    # At 1 req/s the slower run has 16 requests, under min_samples: invalid, so unmatched.
    assert len(thr) == len(synth.KNEE_RATES) - 1 + len(synth.X2_RATES)
    assert cmp.unmatched == [f"{synth.INT8_X1} at 1 (rate): only in capacity"]
    assert thr[Rpt.CHANGE].to_numpy() == pytest.approx(-0.2, abs=0.01)
    assert (reg[Rpt.CONFIG] != synth.FLOAT16_X1).all()
    cap = cmp.capacity.set_index(Rpt.CONFIG)
    assert cap.loc[synth.INT8_X1, Rpt.CHANGE] == pytest.approx(-0.2, abs=0.01)
    assert cap.loc[synth.INT8_X1, Rpt.FLAG] == "regression"
    assert cap.loc[synth.FLOAT16_X1, Rpt.FLAG] == ""


def test_tail_latency_regression_is_flagged(tmp_path: Path, capacity_analysis: Analysis) -> None:
    laggy = _variant(tmp_path, "laggy", ttft_factor=1.3)
    reg = compare(capacity_analysis, laggy).regressions
    ttft = reg[reg[Rpt.COLUMN] == Point.TTFT_P95_S]
    assert set(ttft[Rpt.CONFIG]) == {synth.INT8_X1, synth.INT8_X2}
    assert ttft[Rpt.CHANGE].to_numpy() == pytest.approx(0.3, abs=1e-6)
    assert ttft[Rpt.EVIDENCE].str.contains("99% CI").all()


def test_change_within_noise_is_not_flagged(tmp_path: Path, capacity_analysis: Analysis) -> None:
    noisy = _variant(tmp_path, "noisy", rps_factor=0.99, ttft_factor=1.01)
    cmp = compare(capacity_analysis, noisy)
    assert cmp.regressions.empty
    assert (cmp.table[Rpt.FLAG] == "").all()
    assert not cmp.unmatched
    # The same run against itself: nothing changes, nothing is beyond noise.
    same = compare(capacity_analysis, capacity_analysis)
    assert same.regressions.empty
    assert (same.table[Rpt.CHANGE] == 0).all()


def test_small_but_significant_change_needs_the_minimum_effect(
    tmp_path: Path, capacity_analysis: Analysis
) -> None:
    slightly = _variant(tmp_path, "slightly", ttft_factor=1.03)
    assert compare(capacity_analysis, slightly).regressions.empty
    flagged = compare(capacity_analysis, slightly, min_effect=0.02).regressions
    assert (flagged[Rpt.COLUMN] == Point.TTFT_P95_S).any()


def _one_config_run(tmp_path: Path, name: str, key: str, batch: int, factor: float) -> Analysis:
    points = [
        synth.SynthPoint(key, rate, rate * factor, ttft, max_batch_size=batch)
        for rate, ttft in zip(synth.KNEE_RATES, synth.KNEE_TTFT, strict=True)
    ]
    return analyze(load_run(synth.write_run(tmp_path / name, points, name=name)))


def test_two_servers_of_one_configuration_each_are_matched_by_load_level(
    tmp_path: Path,
) -> None:
    # Two servers on one workload: their configurations differ (that is the comparison), so
    # their levels pair up by load level alone instead of all coming out unmatched.
    ours = _one_config_run(tmp_path, "ours", "r1-b16-d5-w2-t1-int8", 16, 1.0)
    theirs = _one_config_run(tmp_path, "theirs", "r1-b8-d5-w1-t1-int8", 8, 0.7)
    cmp = compare(ours, theirs)
    # Only the level that is invalid in one run (0.7 req/s: under min_samples) stays unmatched.
    assert cmp.unmatched == ["int8 b16 d5ms w1 t1 ×1 at 1 (rate): only in ours"]
    thr = cmp.table[cmp.table[Rpt.COLUMN] == Point.ACHIEVED_RPS]
    assert len(thr) == len(synth.KNEE_RATES) - 1
    assert thr[Rpt.CHANGE].to_numpy() == pytest.approx(-0.3, abs=0.01)
    assert len(cmp.capacity) == 1
