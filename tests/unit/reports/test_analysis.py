"""Percentiles, bootstrap CIs, validity, knees and SLO capacity against placed answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loadgen.results import Point, RunDir
from loadgen.spec import SLOSpec
from reports.analysis import (
    Analysis,
    find_knee,
    point_validity,
    slo_capacity,
)
from reports.load import Rpt
from tests.unit.reports import synth


def _row(analysis: Analysis, config: str, level: float) -> pd.Series:
    pts = analysis.points
    hit = pts[(pts[Rpt.CONFIG] == config) & np.isclose(pts[Point.LOAD_LEVEL], level)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_percentiles_are_exact_from_raw_rows_not_the_rounded_summary(
    capacity_analysis: Analysis, capacity_run: object
) -> None:
    # points.csv holds 0.1 (rounded like a Locust summary); the raw rows say 0.12.
    raw = RunDir(capacity_analysis.run.path).points()
    assert raw.loc[raw[Point.POINT_ID] == 3, Point.TTFT_P95_S].item() == pytest.approx(0.1)
    row = _row(capacity_analysis, synth.INT8_X1, 4.0)
    assert row[Point.TTFT_P95_S] == pytest.approx(0.12, abs=1e-12)
    assert row[Rpt.TTFT_P95_LO] <= 0.12 <= row[Rpt.TTFT_P95_HI]
    assert row[Rpt.TTFT_P95_LO] < row[Rpt.TTFT_P95_HI]


def test_sample_counts_and_throughput(capacity_analysis: Analysis) -> None:
    row = _row(capacity_analysis, synth.INT8_X1, 5.0)
    n = round(5.0 * synth.DURATION_S)
    assert row[Rpt.N_TTFT] == n
    assert row[Rpt.N_ITL] == n * 15  # every gap of every 16-token request
    assert row[Point.ACHIEVED_RPS] == pytest.approx(5.0)
    assert row[Point.OUTPUT_TOKENS_PER_S] == pytest.approx(5.0 * 16)
    assert row[Rpt.ACHIEVED_RPS_SE] < 0.5  # near-regular finish times: little noise


def test_error_rate_counts_failed_rows(capacity_analysis: Analysis) -> None:
    row = _row(capacity_analysis, synth.FLOAT16_X1, 4.0)
    n_ok = round(4.0 * synth.DURATION_S)
    assert row[Point.N_ERRORS] == 1
    assert row[Point.ERROR_RATE] == pytest.approx(1 / (n_ok + 1))


def test_server_means_pool_replicas(capacity_analysis: Analysis) -> None:
    one = _row(capacity_analysis, synth.INT8_X1, 2.0)
    two = _row(capacity_analysis, synth.INT8_X2, 8.0)
    assert one[Point.SERVER_BATCH_SIZE_MEAN] == pytest.approx(2.0)
    assert two[Point.SERVER_BATCH_SIZE_MEAN] == pytest.approx(3.0)
    assert one[Point.SERVER_PREFILL_MEAN_S] == pytest.approx(synth.SERVICE.prefill(2.0))
    assert one[Point.SERVER_QUEUE_WAIT_MEAN_S] == pytest.approx(0.004)


def test_knee_is_found_where_it_was_placed(capacity_analysis: Analysis) -> None:
    knee = capacity_analysis.knees[synth.INT8_X1_KEY]
    assert knee.found
    assert knee.achieved_rps == pytest.approx(synth.KNEE_AT_RPS)
    assert knee.ttft_p95_s == pytest.approx(0.12)
    assert "Kneedle" in knee.method
    assert capacity_analysis.knees[synth.INT8_X2_KEY].achieved_rps == pytest.approx(8.0)
    # TTFT p95 grows linearly with load: no sharp turn, so no knee is claimed.
    linear = capacity_analysis.knees[synth.FLOAT16_X1_KEY]
    assert not linear.found
    assert linear.note


def test_knee_needs_a_turn_and_enough_points() -> None:
    def frame(rps: list[float], ttft: list[float]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                Point.LOAD_LEVEL: rps,
                Point.ACHIEVED_RPS: rps,
                Point.OUTPUT_TOKENS_PER_S: [r * 10 for r in rps],
                Point.TTFT_P95_S: ttft,
            }
        )

    assert not find_knee(frame([1, 2], [0.1, 1.0])).found
    assert not find_knee(frame([1, 2, 3, 4], [0.1, 0.1, 0.1, 0.1])).found
    knee = find_knee(frame([1, 2, 3, 4, 5], [0.1, 0.1, 0.1, 0.2, 2.0]))
    assert knee.found and knee.achieved_rps == 4


def test_slo_capacity_linear_crossing_at_known_rate(capacity_analysis: Analysis) -> None:
    cap = capacity_analysis.capacity[synth.FLOAT16_X1_KEY]
    assert cap.status == "interpolated"
    assert cap.rate_rps == pytest.approx(synth.FLOAT16_CAPACITY_RPS, abs=1e-9)
    assert cap.load_level == pytest.approx(5.0, abs=1e-9)
    assert cap.limiting == "TTFT p95"
    assert cap.between == (4.0, 6.0)
    assert "Linear interpolation" in cap.interpolation
    # How sure: the crossing moves with the bootstrap bounds of TTFT p95, around 5 req/s.
    assert cap.rate_ci is not None
    lo, hi = cap.rate_ci
    assert 4.0 < lo < cap.rate_rps < hi < 6.0


def test_slo_capacity_after_the_knee(capacity_analysis: Analysis) -> None:
    one = capacity_analysis.capacity[synth.INT8_X1_KEY]
    two = capacity_analysis.capacity[synth.INT8_X2_KEY]
    assert one.rate_rps == pytest.approx(synth.INT8_X1_CAPACITY_RPS, abs=1e-9)
    assert two.rate_rps == pytest.approx(synth.INT8_X2_CAPACITY_RPS, abs=1e-9)
    # Open loop: concurrency is Little's law, between the neighbours' in-flight means.
    assert 0 < one.concurrency < 7 * 2


def test_lagging_point_is_shown_invalid_and_excluded(capacity_analysis: Analysis) -> None:
    row = _row(capacity_analysis, synth.INT8_X1, synth.LAGGING_RATE)
    assert not row[Point.VALID]
    assert "schedule lag" in row[Point.INVALID_REASON]
    lv = capacity_analysis.levels
    assert not (
        (lv[Rpt.CONFIG] == synth.INT8_X1) & np.isclose(lv[Point.LOAD_LEVEL], synth.LAGGING_RATE)
    ).any()
    # Its good-looking TTFT (0.2 s at 7 req/s) must not pass for capacity.
    cap = capacity_analysis.capacity[synth.INT8_X1_KEY]
    assert cap.rate_rps < synth.LAGGING_RATE
    assert cap.note == ""


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({Point.STATUS: "replica_died", Point.STATUS_DETAIL: "exit 1"}, "point failed"),
        ({Point.N_OK: 5}, "too few samples"),
        ({Point.ERROR_RATE: 0.8}, "mostly errors (80%"),
        ({Point.LAG_P95_S: 0.2}, "schedule lag"),
        ({Point.LOADGEN_BOTTLENECK: True, Point.LOADGEN_CPU_PERCENT: 99.0}, "bottleneck"),
        ({Point.VALID: False, Point.INVALID_REASON: "odd"}, "harness: odd"),
    ],
)
def test_point_validity_rules(overrides: dict[str, object], expected: str) -> None:
    row = {
        Point.STATUS: "ok",
        Point.N_OK: 100,
        Point.LAG_P95_S: 0.0,
        Point.LOAD_MODE: "rate",
        Point.ARRIVAL: "poisson",
        Point.VALID: True,
    }
    assert point_validity(pd.Series(row), lag_threshold_s=0.05, min_samples=20) == ""
    row.update(overrides)
    assert expected in point_validity(pd.Series(row), lag_threshold_s=0.05, min_samples=20)


def test_closed_loop_lag_is_not_a_reason() -> None:
    row = pd.Series(
        {Point.STATUS: "ok", Point.N_OK: 100, Point.LAG_P95_S: 9.0, Point.LOAD_MODE: "concurrency"}
    )
    assert point_validity(row, lag_threshold_s=0.05, min_samples=20) == ""


def _levels(ttft: list[float]) -> pd.DataFrame:
    n = len(ttft)
    slo = SLOSpec(ttft_p95_s=1.0, max_error_rate=None)
    frame = pd.DataFrame(
        {
            Point.LOAD_MODE: ["concurrency"] * n,
            Point.LOAD_LEVEL: [float(i + 1) for i in range(n)],
            Point.ACHIEVED_RPS: [float(i + 1) for i in range(n)],
            Point.OUTPUT_TOKENS_PER_S: [10.0 * (i + 1) for i in range(n)],
            Point.TTFT_P95_S: ttft,
            Rpt.IN_FLIGHT_MEAN: [1.0] * n,
        }
    )
    frame[Rpt.SLO_PASS] = frame[Point.TTFT_P95_S] <= slo.ttft_p95_s
    frame[Rpt.SLO_FAIL] = np.where(frame[Rpt.SLO_PASS], "", "TTFT p95")
    return frame


def test_slo_capacity_edges() -> None:
    slo = SLOSpec(ttft_p95_s=1.0, max_error_rate=None)
    below = slo_capacity(_levels([2.0, 3.0]), slo)
    assert below.status == "below_range" and not below.usable
    above = slo_capacity(_levels([0.1, 0.2, 0.3]), slo)
    assert above.status == "not_reached" and above.rate_rps == 3.0 and above.usable
    assert above.concurrency == 3.0  # closed loop: the users themselves
    again = slo_capacity(_levels([0.5, 1.5, 0.5]), slo)
    assert again.rate_rps == pytest.approx(1.5) and "passed again" in again.note
    assert slo_capacity(_levels([]), slo).status == "no_data"
