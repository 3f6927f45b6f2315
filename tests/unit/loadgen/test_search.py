"""SLO-edge search decisions (``loadgen.search``), driven by model services, no Locust."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest

from loadgen.arrivals import ArrivalKind, arrival_offsets, probe_offsets
from loadgen.results import Point, PointStatus
from loadgen.search import (
    P95_MIN_SAMPLES,
    Bounds,
    Probe,
    SearchStatus,
    bracket,
    judge,
    next_rate,
)
from loadgen.spec import SLOSpec, SpecError, parse_spec

BOUNDS = Bounds(min_rate=2.0, max_rate=64.0, tolerance=0.05, max_points=6)
BOUNDS_FROM_4 = Bounds(min_rate=4.0, max_rate=64.0, tolerance=0.05, max_points=6)


def run(
    edge: float, margin: Callable[[float], float], bounds: Bounds = BOUNDS
) -> tuple[list[Probe], list[float]]:
    """Search a service whose SLO holds exactly below ``edge``."""
    probes: list[Probe] = []
    rates = []
    while (rate := next_rate(probes, bounds)) is not None:
        assert bounds.min_rate <= rate <= bounds.max_rate
        rates.append(rate)
        probes.append(Probe(rate, rate <= edge, margin(rate)))
    return probes, rates


def mm1(edge: float, capacity: float) -> Callable[[float], float]:
    """Margin of an M/M/1-like tail latency that reaches its limit at ``edge``."""

    def margin(rate: float) -> float:
        if rate >= capacity:
            return 50.0
        return (capacity - edge) / (capacity - rate)

    return margin


def test_doubles_from_min_until_a_failure() -> None:
    probes, rates = run(100.0, lambda r: 0.1)
    assert rates == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    b = bracket(probes, BOUNDS)
    assert b.status == SearchStatus.ABOVE_MAX and b.low == 64.0 and b.high is None


@pytest.mark.parametrize(
    ("edge", "capacity", "min_rate"),
    [(15.0, 20.0, 8.0), (11.0, 12.0, 8.0), (5.5, 9.0, 4.0), (30.0, 45.0, 16.0), (9.0, 30.0, 5.0)],
)
def test_brackets_the_edge_within_tolerance_in_six_points(
    edge: float, capacity: float, min_rate: float
) -> None:
    # Starting within 2x of the edge, two points bracket it and interpolation closes it.
    bounds = Bounds(min_rate=min_rate, max_rate=64.0, tolerance=0.05, max_points=6)
    probes, rates = run(edge, mm1(edge, capacity), bounds)
    b = bracket(probes, bounds)
    assert b.status == SearchStatus.CONVERGED, (rates, b)
    assert b.low is not None and b.high is not None
    assert b.low <= edge < b.high
    assert b.width <= 0.05
    assert len(rates) <= 6


def test_far_from_the_edge_the_budget_can_run_out_with_a_true_bracket() -> None:
    # Doubling from 4 to 16 spends three points; a capacity 9% above the edge leaves every
    # failure deep in saturation, so three more do not reach 5%: the bracket still holds the
    # edge and says the budget ran out.
    probes, rates = run(11.0, mm1(11.0, 12.0), BOUNDS_FROM_4)
    b = bracket(probes, BOUNDS_FROM_4)
    assert len(rates) == 6 and b.status == SearchStatus.MAX_POINTS
    assert b.low is not None and b.high is not None and b.low <= 11.0 < b.high
    assert 0.05 < b.width < 0.10


def test_pass_fail_only_falls_back_to_bisection() -> None:
    # No margins (NaN): geometric bisection, which cannot reach 5% in 6 points from 2..64.
    probes, rates = run(20.0, lambda r: math.nan)
    b = bracket(probes, BOUNDS)
    assert rates[:5] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert rates[5] == pytest.approx(math.sqrt(16 * 32) * (1 - 0.05 / 3))
    assert b.status == SearchStatus.MAX_POINTS and b.low is not None and b.high is not None
    assert b.low <= 20.0 < b.high and b.width > 0.05
    assert "point budget ran out" in b.describe()


def test_every_probe_lands_strictly_inside_the_bracket() -> None:
    probes = [Probe(10.0, True, 0.999), Probe(20.0, False, 1e6)]
    rate = next_rate(probes, BOUNDS)
    assert rate is not None and 10.0 * (1 + 0.05 / 4) <= rate <= 20.0 / (1 + 0.05 / 4)


def test_lowest_rate_failing_ends_the_search() -> None:
    probes = [Probe(2.0, False, 3.0)]
    assert next_rate(probes, BOUNDS) is None
    b = bracket(probes, BOUNDS)
    assert b.status == SearchStatus.BELOW_MIN
    assert "fails already at the lowest rate" in b.describe()


def test_a_pass_above_the_first_failure_is_noted_not_used() -> None:
    probes = [Probe(4.0, True, 0.5), Probe(8.0, False, 2.0), Probe(16.0, True, 0.9)]
    b = bracket(probes, BOUNDS)
    assert (b.low, b.high) == (4.0, 8.0)
    assert "passed again" in b.note


def judged(row: dict[str, object], slo: SLOSpec) -> Probe:
    return judge(row, slo, lag_threshold_s=0.05, min_samples=5, scheduled_rate=11.5)


def test_judge_uses_the_report_check_and_validity() -> None:
    slo = SLOSpec(ttft_p95_s=0.2, max_error_rate=0.01)
    row: dict[str, object] = {
        Point.POINT_ID: 3,
        Point.OFFERED_RPS: 12.0,
        Point.STATUS: PointStatus.OK,
        Point.VALID: True,
        Point.N_OK: 200,
        Point.LAG_P95_S: 0.001,
        Point.TTFT_P95_S: 0.1,
        Point.ERROR_RATE: 0.0,
        Point.LOADGEN_BOTTLENECK: False,
    }
    ok = judged(row, slo)
    assert ok.passed and ok.rate == 12.0 and ok.point_id == 3 and ok.margin == pytest.approx(0.5)
    assert ok.scheduled_rate == 11.5 and ok.label_rate == 11.5
    slow = judged({**row, Point.TTFT_P95_S: 0.3}, slo)
    assert not slow.passed and "TTFT p95" in slow.reason and slow.margin == pytest.approx(1.5)
    errors = judged({**row, Point.ERROR_RATE: 0.05}, slo)
    assert not errors.passed and errors.margin == pytest.approx(5.0)
    sat = judged({**row, Point.STATUS: PointStatus.SATURATED, Point.STATUS_DETAIL: "grew"}, slo)
    assert not sat.passed and "point failed: saturated (grew)" in sat.reason
    invalid = judged({**row, Point.VALID: False, Point.INVALID_REASON: "lag"}, slo)
    assert not invalid.passed and "harness: lag" in invalid.reason
    # The report's rules, not a second copy: a bottlenecked load generator or a lagging
    # schedule fails the probe, whatever its latencies.
    hot = judged({**row, Point.LOADGEN_BOTTLENECK: True, Point.LOADGEN_CPU_PERCENT: 97.0}, slo)
    assert not hot.passed and "load generator was the bottleneck (CPU 97%)" in hot.reason
    lagging = judged({**row, Point.LAG_P95_S: 0.5}, slo)
    assert not lagging.passed and "schedule lag" in lagging.reason


def test_a_p95_verdict_needs_enough_samples() -> None:
    slo = SLOSpec(ttft_p95_s=0.2)
    row = {
        Point.STATUS: PointStatus.OK,
        Point.VALID: True,
        Point.TTFT_P95_S: 0.1,
        Point.ERROR_RATE: 0.0,
    }
    few = judge({**row, Point.N_OK: P95_MIN_SAMPLES - 1}, slo, lag_threshold_s=0.05, min_samples=5)
    assert not few.passed and "too few samples" in few.reason
    enough = judge({**row, Point.N_OK: P95_MIN_SAMPLES}, slo, lag_threshold_s=0.05, min_samples=5)
    assert enough.passed
    # A larger [run] min_samples wins.
    strict = judge({**row, Point.N_OK: 30}, slo, lag_threshold_s=0.05, min_samples=40)
    assert not strict.passed


def test_the_bracket_states_the_realised_scheduled_rates() -> None:
    probes = [
        Probe(10.0, True, 0.9, scheduled_rate=9.6),
        Probe(10.4, False, 1.1, scheduled_rate=10.0),
    ]
    b = bracket(probes, BOUNDS)
    assert (b.low, b.high, b.low_scheduled, b.high_scheduled) == (10.0, 10.4, 9.6, 10.0)
    assert "holds at 9.6 scheduled req/s and fails at 10 scheduled req/s" in b.describe()


@pytest.mark.parametrize(("kind", "burstiness"), [("poisson", 1.0), ("gamma", 0.5)])
def test_probe_schedules_are_monotonic_in_the_rate(kind: ArrivalKind, burstiness: float) -> None:
    # One sequence for every probe: a higher rate never realises fewer measured sends, and the
    # measured sends of a lower rate are a prefix (stretched) of a higher rate's.
    rates = np.linspace(1.0, 12.0, 45)
    counts, firsts = [], []
    for rate in rates:
        offsets = probe_offsets(kind, rate, 3.0, 15.0, seed=7, burstiness=burstiness)
        measured = offsets[offsets >= 3.0]
        assert np.all(np.diff(offsets) >= 0) and measured.max() < 18.0
        counts.append(len(measured))
        firsts.append((measured[:10] - 3.0) * rate)
    assert all(b >= a for a, b in itertools.pairwise(counts))
    assert all(np.allclose(f, firsts[0]) for f in firsts)
    # Fresh draws per probe (the old seed = run.seed + point id) are not monotonic.
    fresh = [
        len(arrival_offsets(kind, r, 15.0, seed=i, burstiness=burstiness))
        for i, r in enumerate(rates)
    ]
    assert any(b < a for a, b in itertools.pairwise(fresh))


def test_bracket_json_round_trips() -> None:
    probes = [Probe(10.0, True, 0.9), Probe(10.4, False, 1.1)]
    b = bracket(probes, BOUNDS)
    data = b.to_json()
    assert data["status"] == SearchStatus.CONVERGED
    assert data["width"] == pytest.approx(0.04)
    assert "holds at 10 req/s and fails at 10.4 req/s" in b.describe()


def test_spec_reads_the_search_keys_and_names_bad_ones() -> None:
    spec = parse_spec(
        '[load]\nmode = "slo_search"\nsearch_min_rate = 4\nsearch_max_rate = 40.0\n'
        "search_tolerance = 0.1\nsearch_max_points = 5\n[slo]\nttft_p95_s = 1\n"
    )
    assert spec.levels() == []
    assert Bounds.of(spec.load) == Bounds(4.0, 40.0, 0.1, 5)
    with pytest.raises(SpecError, match=r"<spec>:3: \[load\] search_max_rate: must be above"):
        parse_spec('[load]\nsearch_min_rate = 8.0\nsearch_max_rate = 8.0\nmode = "slo_search"\n')
    with pytest.raises(SpecError, match=r"<spec>:2: \[load\] search_max_points: must be >= 2"):
        parse_spec('[load]\nsearch_max_points = 1\nmode = "slo_search"\n')
    with pytest.raises(SpecError, match=r"\[load\] search_tolerance: must be < 1"):
        parse_spec('[load]\nsearch_tolerance = 1.5\nmode = "slo_search"\n')
