"""``[load] mode = "slo_search"`` end to end on the fake engine, whose capacity is known.

One replica, batches of one, one worker, TTFT 50 ms and one output token: the replica serves one
request at a time in a little over 50 ms, so it saturates just under 20 req/s, and a TTFT p95
limit of 200 ms (150 ms of queueing on top of the service) is met well below that. The sweep
runs as a subprocess (Locust's gevent patching must not reach the test process) and every
point is bounded: 1 s warm-up, 3-4 s measured, at most 6 points, the file well under 60 s.

Starting at 8 req/s, two points bracket the edge and the rest interpolate; it usually closes to
5% in 5 points. A 4 s point's TTFT p95 rests on some 50 requests, though, so now and then the
noise sends one probe to the wrong side and the 6-point budget ends a little wider: then the
bracket must still be true and say so (loadgen.search's unit tests pin the noise-free case).
"""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from loadgen.results import SEARCH_FILE, Point, PointStatus, Ts
from loadgen.search import SearchStatus
from tests.support.sweeps import fake_target_toml, run_sweep, run_toml

pytestmark = pytest.mark.integration

SERVICE_S = 0.050  # fake_ttft_ms: one request's service time, batches of one
CAPACITY_RPS = 1 / SERVICE_S


def spec(*, name: str, load: str, duration_s: float = 3.0) -> str:
    return (
        run_toml(
            name=name,
            duration_s=duration_s,
            warmup_s=1.0,
            min_samples=10,
            request_timeout_s=20.0,
            timeslice_s=1.0,
            saturation_s=2.0,
        )
        + fake_target_toml(ttft_ms=SERVICE_S * 1000, itl_ms=0, max_batch_size=1, batch_workers=1)
        + textwrap.dedent(
            f"""
            [load]
            arrival = "poisson"
            {load}

            [workload]
            api = "chat"
            input_tokens = {{ dist = "fixed", value = 8 }}
            output_tokens = {{ dist = "fixed", value = 1 }}

            [slo]
            ttft_p95_s = 0.2
            max_error_rate = 0.01
            """
        ).lstrip()
    )


def test_search_brackets_the_slo_edge_below_capacity(tmp_path: Path) -> None:
    load = (
        'mode = "slo_search"\nsearch_min_rate = 8.0\nsearch_max_rate = 40.0\n'
        "search_tolerance = 0.05\nsearch_max_points = 6"
    )
    run = run_sweep(
        tmp_path, "search", spec(name="search", load=load, duration_s=4.0), timeout_s=60
    )
    found = json.loads((run.path / SEARCH_FILE).read_text())
    (entry,) = found.values()
    b, probes = entry["bracket"], entry["probes"]
    # Stated at the rates the probes' schedules realised; one sequence for every probe, so the
    # realised rate rises with the nominal one.
    assert f"fails at {b['high_scheduled']:.3g} scheduled req/s" in entry["describe"], entry
    by_rate = sorted((p["rate"], p["scheduled_rate"]) for p in probes)
    assert all(a[1] <= c[1] for a, c in itertools.pairwise(by_rate)), by_rate
    assert 2 <= len(probes) <= 6
    assert probes[0]["rate"] == 8.0 and probes[0]["passed"], probes
    # The edge lies below the capacity: queueing alone passes 150 ms before the queue diverges.
    assert 8.0 <= b["low"] < b["high"] <= CAPACITY_RPS * 1.1, b
    if b["status"] == SearchStatus.CONVERGED:
        assert b["width"] <= 0.05
    else:  # see the module docstring: the budget ran out on noise, not far from the edge
        assert b["status"] == SearchStatus.MAX_POINTS and len(probes) == 6, entry
        assert b["width"] <= 0.15, entry
    points = run.points()
    assert len(points) == len(probes)
    # Every probe is a point of the run, judged as the report judges it.
    by_id = points.set_index(Point.POINT_ID)
    for p in probes:
        row = by_id.loc[p["point_id"]]
        assert row[Point.OFFERED_RPS] == pytest.approx(p["rate"])
        meets = row[Point.TTFT_P95_S] <= 0.2 and row[Point.ERROR_RATE] <= 0.01
        assert p["passed"] == (bool(meets) and bool(row[Point.VALID])), (p, row)
    # Goodput: never above throughput; at a passing point most requests met the TTFT limit.
    good = pd.to_numeric(points[Point.GOODPUT_RPS])
    assert (good <= pd.to_numeric(points[Point.ACHIEVED_RPS]) + 1e-9).all()
    low = by_id[by_id[Point.OFFERED_RPS] == b["low"]].iloc[0]
    assert low[Point.GOODPUT_RPS] >= 0.9 * low[Point.ACHIEVED_RPS]
    # Timeslices: one per second of every point's window, the server's queue gauge read.
    slices = run.timeslices()
    assert set(slices[Ts.POINT_ID]) == set(points[Point.POINT_ID])
    assert slices.groupby(Ts.POINT_ID).size().min() >= 3
    assert slices[Ts.QUEUE_DEPTH].notna().mean() > 0.8


def test_an_overloaded_point_ends_early_as_saturated(tmp_path: Path) -> None:
    # Three times the capacity: the queue grows by ~40 requests a second.
    load = f'mode = "rate"\nrate = [{3 * CAPACITY_RPS:g}]'
    run = run_sweep(
        tmp_path, "overload", spec(name="overload", load=load, duration_s=8.0), timeout_s=40
    )
    (row,) = [r for _, r in run.points().iterrows()]
    assert row[Point.STATUS] == PointStatus.SATURATED, row
    assert "grows without bound" in row[Point.STATUS_DETAIL]
    assert not row[Point.VALID] and "saturated" in row[Point.INVALID_REASON]
    # Ended after about saturation_s of its 8 s window: the last send well before the end.
    reqs = run.requests()
    sent = pd.to_numeric(reqs["sent_at"])
    assert sent.max() - sent.min() < 6.0
