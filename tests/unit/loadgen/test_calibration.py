"""The calibration gate's pure logic: the cost model, the verdicts, the closed-loop estimate."""

from __future__ import annotations

import math

import pytest

from loadgen.calibration import (
    SAFETY,
    Ceiling,
    Gate,
    closed_loop_rate,
    fit_ceiling,
    judge_point,
)
from service.errors import TokenboothError


def test_fit_ceiling_recovers_fixed_and_per_chunk_cost() -> None:
    # 1 ms per request + 10 us per chunk: 1 chunk -> 1/1.01 ms, 64 chunks -> 1/1.64 ms.
    c = fit_ceiling((1, 1 / 0.00101), (64, 1 / 0.00164))
    assert c.fixed_s == pytest.approx(0.001)
    assert c.per_chunk_s == pytest.approx(0.00001)
    assert c.rps(64) == pytest.approx(1 / 0.00164)
    assert c.rps(0) == pytest.approx(c.rps(1))  # a response streams at least one chunk


def test_fit_ceiling_never_negative_when_long_streams_measure_faster() -> None:
    c = fit_ceiling((1, 1000.0), (64, 1100.0))  # noise: the long run was the faster one
    assert c.per_chunk_s == 0.0
    assert c.fixed_s == pytest.approx(0.001)


def test_judge_point_allows_up_to_ceiling_times_safety_times_processes() -> None:
    c = Ceiling(0.001, 0.0, "test")  # 1000 req/s
    assert judge_point(1000 * SAFETY, c, 64, cores=8).ok
    over = judge_point(1000 * SAFETY + 1, c, 64, cores=8)
    assert not over.ok
    assert "add --workers" in over.message
    assert judge_point(1500, c, 64, processes=3, cores=8).ok
    # Workers beyond the cores add nothing.
    assert not judge_point(1500, c, 64, processes=3, cores=2).ok
    assert judge_point(1500, c, 64, processes=3, cores=2).allowed_rps == pytest.approx(
        2000 * SAFETY
    )


def test_judge_point_without_estimate_passes() -> None:
    verdict = judge_point(math.nan, Ceiling(0.001, 0.0, "test"), 64)
    assert verdict.ok and math.isnan(verdict.expected_rps)


def test_closed_loop_rate_scales_previous_per_user_rate() -> None:
    assert closed_loop_rate(32, 8, 400.0) == pytest.approx(1600.0)
    assert math.isnan(closed_loop_rate(32, 0, 400.0))
    assert math.isnan(closed_loop_rate(32, 8, math.nan))


def test_gate_warns_or_refuses_and_estimates_closed_loop_from_previous_point() -> None:
    c = Ceiling(0.001, 0.0, "test")  # 1000 req/s, 700 allowed with one process
    gate = Gate(c, chunks=64, processes=1, strict=False)
    gate.check("a|rate=900|0", "a", "rate", 900.0, 900.0)
    assert not gate.verdicts["a|rate=900|0"].ok
    gate.check("a|c=8|0", "a", "concurrency", 8.0, math.nan)
    assert gate.verdicts["a|c=8|0"].ok  # first closed-loop point: no estimate
    gate.record("a", "concurrency", 8.0, 200.0)
    gate.check("a|c=32|0", "a", "concurrency", 32.0, math.nan)
    assert gate.verdicts["a|c=32|0"].expected_rps == pytest.approx(800.0)
    assert not gate.verdicts["a|c=32|0"].ok
    gate.check("b|c=32|0", "b", "concurrency", 32.0, math.nan)
    assert gate.verdicts["b|c=32|0"].ok  # another configuration has its own history
    described = gate.describe()
    assert described["ceiling_rps"] == pytest.approx(1000.0)
    assert set(described["points"]) == {"a|rate=900|0", "a|c=8|0", "a|c=32|0", "b|c=32|0"}
    strict = Gate(c, chunks=64, processes=1, strict=True)
    with pytest.raises(TokenboothError, match="calibration gate"):
        strict.check("a|rate=900|0", "a", "rate", 900.0, 900.0)
    strict.check("a|rate=500|0", "a", "rate", 500.0, 500.0)  # fits: no error


def test_gate_without_ceiling_judges_nothing() -> None:
    gate = Gate(None, chunks=64, processes=1, strict=True)
    gate.check("a|rate=1e9|0", "a", "rate", 1e9, 1e9)
    assert gate.verdicts == {}
    assert gate.describe()["ceiling"] is None
