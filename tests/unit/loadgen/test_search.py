"""SLO-edge search decisions (``loadgen.search``), driven by model services, no Locust."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from loadgen.results import Point, PointStatus
from loadgen.search import Bounds, Probe, SearchStatus, bracket, judge, next_rate
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


def test_judge_uses_the_report_check_and_validity() -> None:
    slo = SLOSpec(ttft_p95_s=0.2, max_error_rate=0.01)
    row = {
        Point.POINT_ID: 3,
        Point.OFFERED_RPS: 12.0,
        Point.STATUS: PointStatus.OK,
        Point.VALID: True,
        Point.TTFT_P95_S: 0.1,
        Point.ERROR_RATE: 0.0,
    }
    ok = judge(row, slo)
    assert ok.passed and ok.rate == 12.0 and ok.point_id == 3 and ok.margin == pytest.approx(0.5)
    slow = judge({**row, Point.TTFT_P95_S: 0.3}, slo)
    assert not slow.passed and "TTFT p95" in slow.reason and slow.margin == pytest.approx(1.5)
    errors = judge({**row, Point.ERROR_RATE: 0.05}, slo)
    assert not errors.passed and errors.margin == pytest.approx(5.0)
    sat = judge({**row, Point.STATUS: PointStatus.SATURATED, Point.STATUS_DETAIL: "grew"}, slo)
    assert not sat.passed and sat.reason.startswith("saturated (grew)")
    invalid = judge({**row, Point.VALID: False, Point.INVALID_REASON: "lag"}, slo)
    assert not invalid.passed and "invalid: lag" in invalid.reason


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
        "search_tolerance = 0.1\nsearch_max_points = 5\n"
    )
    assert spec.levels() == []
    assert Bounds.of(spec.load) == Bounds(4.0, 40.0, 0.1, 5)
    with pytest.raises(SpecError, match=r"<spec>:3: \[load\] search_max_rate: must be above"):
        parse_spec("[load]\nsearch_min_rate = 8.0\nsearch_max_rate = 8.0\n")
    with pytest.raises(SpecError, match=r"<spec>:2: \[load\] search_max_points: must be >= 2"):
        parse_spec("[load]\nsearch_max_points = 1\n")
    with pytest.raises(SpecError, match=r"\[load\] search_tolerance: must be < 1"):
        parse_spec("[load]\nsearch_tolerance = 1.5\n")
