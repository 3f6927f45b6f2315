"""Stage profiles end to end on the fake engine: one continuous run, one point per stage.

Open loop: a 4 req/s stage then a 12 req/s stage (constant arrivals) must come back as two points
whose offered and achieved rates are the stages' own. Closed loop: 1 user then 4 users through
Locust's ``LoadTestShape`` must show one and four users' sends in the two stage points.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest

from loadgen.results import Col, Point, Ts
from tests.support.sweeps import fake_target_toml, run_sweep, run_toml

pytestmark = pytest.mark.integration


def profile_spec(name: str, load: str) -> str:
    return (
        run_toml(
            name=name,
            warmup_s=1.0,
            max_requests=1000,
            min_samples=5,
            request_timeout_s=10.0,
            timeslice_s=1.0,
        )
        + fake_target_toml(ttft_ms=20, itl_ms=5)
        + textwrap.dedent(
            f"""
            [load]
            {load}

            [workload]
            api = "chat"
            input_tokens = {{ dist = "fixed", value = 16 }}
            output_tokens = {{ dist = "fixed", value = 8 }}

            [slo]
            ttft_p95_s = 1.0
            """
        ).lstrip()
    )


def test_two_rate_stages_give_two_points_at_their_offered_rates(tmp_path: Path) -> None:
    spec = profile_spec(
        "rate-stages",
        'arrival = "constant"\nstages = [{duration_s = 4, rate = 4}, {duration_s = 4, rate = 12}]',
    )
    run = run_sweep(tmp_path, "rate-stages", spec, timeout_s=60)
    points = run.points().sort_values(Point.STAGE)
    assert points[Point.STAGE].tolist() == [0, 1]
    assert points[Point.LOAD_MODE].tolist() == ["rate", "rate"]
    assert points[Point.OFFERED_RPS].tolist() == [4.0, 12.0]
    assert points[Point.STAGE_LEVEL_FROM].tolist() == points[Point.STAGE_LEVEL_TO].tolist()
    assert points[Point.VALID].all(), points[Point.INVALID_REASON].tolist()
    for _, p in points.iterrows():
        reqs = run.requests()
        rows = reqs[reqs[Col.POINT_ID] == p[Point.POINT_ID]]
        # Constant arrivals: exactly rate x 4 s sends in the stage's window.
        assert len(rows) == int(p[Point.OFFERED_RPS] * 4), len(rows)
        assert abs(p[Point.ACHIEVED_RPS] - p[Point.OFFERED_RPS]) < 0.15 * p[Point.OFFERED_RPS]
    # The stages are back to back: stage 1 opens where stage 0 closes.
    starts = points[Point.STARTED_AT].tolist()
    assert abs(starts[1] - starts[0] - 4.0) < 1e-6
    # Each stage's server view covers its own requests.
    assert (points[Point.SERVER_REQUESTS] >= points[Point.N_REQUESTS] - 2).all()
    # The shared point-finishing path: rates over the stage's own 4 s window, goodput against
    # the SLO, and timeslices covering the stage (1 s each).
    assert points[Point.DURATION_S].tolist() == [4.0, 4.0]
    assert (points[Point.GOODPUT_RPS] > 0.8 * points[Point.OFFERED_RPS]).all()
    slices = run.timeslices()
    for pid in points[Point.POINT_ID]:
        mine = slices[slices[Ts.POINT_ID] == pid]
        assert mine[Ts.SLICE].tolist() == [0, 1, 2, 3], mine
    assert points[Point.STAGE_USERS_MAX].isna().all()


def test_concurrency_stages_change_the_users_through_the_shape(tmp_path: Path) -> None:
    spec = profile_spec(
        "user-stages",
        "stages = [{duration_s = 4, concurrency = 1}, {duration_s = 4, concurrency = 4}]",
    )
    spec = spec.replace(
        "[load]\n",
        "[load]\n# A slow start ramp: later stage steps must not reuse its pace.\nramp_s = 3.0\n",
    )
    run = run_sweep(tmp_path, "user-stages", spec, timeout_s=60)
    points = run.points().sort_values(Point.STAGE)
    assert points[Point.LOAD_LEVEL].tolist() == [1.0, 4.0]
    reqs = run.requests()
    users = [reqs[reqs[Col.POINT_ID] == pid][Col.USER].nunique() for pid in points[Point.POINT_ID]]
    assert users[0] == 1 and users[1] >= 4, users
    # Little's law over each stage's window: requests in flight on average = the stage's users.
    in_flight = []
    for pid in points[Point.POINT_ID]:
        rows = reqs[reqs[Col.POINT_ID] == pid]
        window = rows[Col.FINISHED_AT].max() - rows[Col.SENT_AT].min()
        in_flight.append(rows[Col.E2E_S].sum() / window)
    assert 0.7 < in_flight[0] <= 1.05, in_flight
    assert 3.0 < in_flight[1] <= 4.2, in_flight
    assert pd.isna(points[Point.OFFERED_RPS]).all()
    # Only the first users follow the 3 s ramp (1 user/s); the step to 4 users is at once.
    assert points[Point.STAGE_USERS_MAX].tolist() == [1, 4]
