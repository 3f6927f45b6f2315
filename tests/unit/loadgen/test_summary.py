"""Per-point statistics and validity (``loadgen.summary``), the one computation behind
``points.csv`` and the report.

``loadgen.summary`` imports no Locust, so it is tested in-process.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from loadgen.results import Col, Point
from loadgen.spec import LoadLevel
from loadgen.summary import (
    SYNC_WINDOW_S,
    bootstrap_quantile_ci,
    bootstrap_quantile_draws,
    percentile,
    poisson_sync_share,
    summarize_point,
    summarize_requests,
    sync_share,
    synchronised,
    synchrony,
    validity_reasons,
    window_duration,
)

CLOSED = ("concurrency", 4.0, "closed")
OPEN = ("rate", 10.0, "poisson")


def row(i: int, *, lag: float = 0.0, ok: bool = True, open_loop: bool = False) -> dict[str, Any]:
    """A request sent at t=i*0.1 with TTFT (20+i) ms, 8 tokens 10 ms apart."""
    sent = 1000.0 + i * 0.1
    ttft = 0.020 + i * 0.001
    itl = [0.010 + 0.0001 * k for k in range(7)]
    e2e = ttft + sum(itl)
    scheduled = sent - lag if open_loop else math.nan
    return {
        Col.SENT_AT: sent,
        Col.SCHEDULED_AT: scheduled,
        Col.FINISHED_AT: sent + e2e,
        Col.SCHEDULE_LAG_S: lag,
        Col.TTFT_S: ttft if ok else math.nan,
        Col.TTFT_FROM_SCHEDULE_S: ttft + lag if ok else math.nan,
        Col.E2E_S: e2e,
        Col.E2E_FROM_SCHEDULE_S: e2e + lag,
        Col.TPOT_S: (e2e - ttft) / 7 if ok else math.nan,
        Col.ITL_S: itl if ok else [],
        Col.PROMPT_TOKENS: 16 if ok else 0,
        Col.COMPLETION_TOKENS: 8 if ok else 0,
        Col.OK: ok,
    }


def case(
    rows: list[dict[str, Any]],
    level: tuple[str, float, str] = CLOSED,
    *,
    lag_threshold_s: float = 0.05,
    min_samples: int = 5,
) -> dict[str, Any]:
    mode, value, arrival = level
    return summarize_point(
        rows,
        level=LoadLevel(mode, value, arrival),
        lag_threshold_s=lag_threshold_s,
        min_samples=min_samples,
    )


CLOSED_ROWS = [row(i) for i in range(40)]
OPEN_ON_TIME = [row(i, lag=0.001 * (i % 5), open_loop=True) for i in range(40)]
OPEN_LAGGING = [row(i, lag=0.002 * i, open_loop=True) for i in range(40)]  # p95 ~74 ms
FEW = [row(i) for i in range(3)]
MOSTLY_ERRORS = [row(i, ok=i % 4 == 0) for i in range(40)]


@pytest.fixture(scope="module")
def summaries() -> list[dict[str, Any]]:
    """Summaries of every case below."""
    return [
        case(CLOSED_ROWS),
        case(OPEN_ON_TIME, OPEN),
        case(OPEN_LAGGING, OPEN),
        case(FEW),
        case(MOSTLY_ERRORS),
        case([]),
        case(OPEN_LAGGING, CLOSED),
    ]


def test_closed_loop_statistics_are_exact(summaries: list[dict[str, Any]]) -> None:
    s = summaries[0]
    rows = CLOSED_ROWS
    ttft = np.array([r[Col.TTFT_S] for r in rows])
    e2e = np.array([r[Col.E2E_S] for r in rows])
    itl = np.array([g for r in rows for g in r[Col.ITL_S]])
    duration = max(r[Col.FINISHED_AT] for r in rows) - min(r[Col.SENT_AT] for r in rows)
    assert (s[Point.N_REQUESTS], s[Point.N_OK], s[Point.N_ERRORS]) == (40, 40, 0)
    assert s[Point.ERROR_RATE] == 0.0
    assert math.isnan(s[Point.OFFERED_RPS])
    assert s[Point.DURATION_S] == pytest.approx(duration)
    assert s[Point.ACHIEVED_RPS] == pytest.approx(40 / duration)
    assert s[Point.OUTPUT_TOKENS_PER_S] == pytest.approx(40 * 8 / duration)
    assert s[Point.INPUT_TOKENS_PER_S] == pytest.approx(40 * 16 / duration)
    for col, q in ((Point.TTFT_P50_S, 50), (Point.TTFT_P90_S, 90), (Point.TTFT_P99_S, 99)):
        assert s[col] == pytest.approx(np.percentile(ttft, q))
    assert s[Point.ITL_P50_S] == pytest.approx(np.percentile(itl, 50))
    assert s[Point.ITL_P99_S] == pytest.approx(np.percentile(itl, 99))
    assert s[Point.E2E_P95_S] == pytest.approx(np.percentile(e2e, 95))
    assert s[Point.PER_USER_TOKENS_PER_S] == pytest.approx(np.median(8 / e2e))
    # Closed loop: no schedule, no lag; corrected equals uncorrected.
    assert s[Point.LAG_P95_S] == 0.0
    assert s[Point.LAG_MAX_S] == 0.0
    assert s[Point.TTFT_SCHED_P95_S] == pytest.approx(s[Point.TTFT_P95_S])
    assert s[Point.E2E_SCHED_P95_S] == pytest.approx(s[Point.E2E_P95_S])
    assert s[Point.VALID] is True
    assert s[Point.INVALID_REASON] == ""


def test_open_loop_on_schedule_is_valid(summaries: list[dict[str, Any]]) -> None:
    s = summaries[1]
    assert s[Point.OFFERED_RPS] == 10.0
    assert s[Point.LAG_MAX_S] == pytest.approx(0.004)
    assert s[Point.LAG_P95_S] == pytest.approx(0.004)
    assert s[Point.VALID] is True
    assert s[Point.TTFT_SCHED_P95_S] > s[Point.TTFT_P95_S]


def test_open_loop_behind_schedule_is_invalid(summaries: list[dict[str, Any]]) -> None:
    s = summaries[2]
    lag = np.array([r[Col.SCHEDULE_LAG_S] for r in OPEN_LAGGING])
    assert s[Point.LAG_P95_S] == pytest.approx(np.percentile(lag, 95))
    assert s[Point.LAG_MAX_S] == pytest.approx(0.078)
    assert s[Point.VALID] is False
    assert "schedule lag p95 74 ms > 50 ms" in s[Point.INVALID_REASON]
    # Coordinated-omission correction: latency from the schedule includes the lag.
    corrected = np.array([r[Col.TTFT_FROM_SCHEDULE_S] for r in OPEN_LAGGING])
    assert s[Point.TTFT_SCHED_P95_S] == pytest.approx(np.percentile(corrected, 95))
    assert s[Point.TTFT_SCHED_P95_S] > s[Point.TTFT_P95_S] + 0.05
    assert s[Point.E2E_SCHED_P95_S] > s[Point.E2E_P95_S] + 0.05


def test_lag_does_not_invalidate_a_closed_loop_point(summaries: list[dict[str, Any]]) -> None:
    assert summaries[6][Point.VALID] is True


def test_too_few_samples_is_invalid(summaries: list[dict[str, Any]]) -> None:
    s = summaries[3]
    assert s[Point.VALID] is False
    assert s[Point.INVALID_REASON] == "too few samples: 3 successful requests < 5"


def test_mostly_errors_is_invalid_and_errors_are_excluded(
    summaries: list[dict[str, Any]],
) -> None:
    s = summaries[4]
    assert (s[Point.N_REQUESTS], s[Point.N_OK], s[Point.N_ERRORS]) == (40, 10, 30)
    assert s[Point.ERROR_RATE] == 0.75
    assert s[Point.VALID] is False
    assert "mostly errors (75% of requests failed)" in s[Point.INVALID_REASON]
    ok_ttft = [r[Col.TTFT_S] for r in MOSTLY_ERRORS if r[Col.OK]]
    assert s[Point.TTFT_P50_S] == pytest.approx(np.percentile(ok_ttft, 50))
    assert s[Point.OUTPUT_TOKENS_PER_S] == pytest.approx(10 * 8 / s[Point.DURATION_S])


def test_no_rows(summaries: list[dict[str, Any]]) -> None:
    s = summaries[5]
    assert s[Point.N_REQUESTS] == 0
    assert math.isnan(s[Point.DURATION_S])
    assert math.isnan(s[Point.ACHIEVED_RPS])
    assert math.isnan(s[Point.TTFT_P50_S])
    assert math.isnan(s[Point.PER_USER_TOKENS_PER_S])
    assert s[Point.VALID] is False
    assert "too few samples: 0 successful requests < 5" in s[Point.INVALID_REASON]


def test_the_report_recomputes_what_the_harness_wrote() -> None:
    # One computation: the report's pooled statistics of one point's rows equal the harness's.
    harness = case(OPEN_ON_TIME, OPEN)
    frame = pd.DataFrame(OPEN_ON_TIME)
    report = summarize_requests(frame, window_duration(frame), n_resamples=0)
    for col in (Point.ACHIEVED_RPS, Point.TTFT_P95_S, Point.ITL_P99_S, Point.E2E_SCHED_P95_S):
        assert report[col] == harness[col]


def test_validity_reasons_name_every_rule_that_fails() -> None:
    reasons = validity_reasons(
        n_ok=3, error_rate=0.6, lag_p95_s=0.2, open_loop=True, lag_threshold_s=0.05, min_samples=5
    )
    assert reasons == [
        "too few samples: 3 successful requests < 5",
        "mostly errors (60% of requests failed)",
        "schedule lag p95 200 ms > 50 ms (load generator fell behind)",
    ]
    # Lag of a closed-loop point is not a schedule it fell behind.
    assert (
        validity_reasons(
            n_ok=30,
            error_rate=0.0,
            lag_p95_s=0.2,
            open_loop=False,
            lag_threshold_s=0.05,
            min_samples=5,
        )
        == []
    )


def test_bootstrap_matches_brute_force_resampling() -> None:
    rng = np.random.default_rng(1)
    x = rng.lognormal(mean=-2.0, sigma=0.6, size=400)
    draws = bootstrap_quantile_draws(x, 0.95, n_resamples=4000, seed=3)
    idx = rng.integers(0, x.size, size=(4000, x.size))
    brute = np.quantile(x[idx], 0.95, axis=1)
    assert np.mean(draws) == pytest.approx(np.mean(brute), rel=0.02)
    assert np.std(draws) == pytest.approx(np.std(brute), rel=0.12)
    lo, hi = bootstrap_quantile_ci(x, 0.95, seed=3)
    b_lo, b_hi = np.quantile(brute, [0.025, 0.975])
    assert lo == pytest.approx(b_lo, rel=0.05)
    assert hi == pytest.approx(b_hi, rel=0.05)


def test_bootstrap_is_seeded_and_handles_degenerate_input() -> None:
    x = np.arange(100.0)
    assert bootstrap_quantile_ci(x, 0.95, seed=5) == bootstrap_quantile_ci(x, 0.95, seed=5)
    assert all(math.isnan(v) for v in bootstrap_quantile_ci([], 0.95))
    assert bootstrap_quantile_ci([2.5], 0.95) == (2.5, 2.5)
    assert math.isnan(percentile([math.nan], 0.5))


# ------------------------------------------------------------------------------ synchrony


def lockstep_sends(users: int, cycles: int, cycle_s: float, spread_s: float) -> np.ndarray:
    """``users`` closed-loop users re-sending together every ``cycle_s``, ``spread_s`` apart."""
    starts = np.arange(cycles) * cycle_s
    return (starts[:, None] + np.arange(users)[None, :] * spread_s).ravel()


def test_lockstep_sends_are_all_synchronised() -> None:
    # The case: 8 users re-sending within 1 ms of each other after every batch.
    sent = lockstep_sends(8, 200, 0.7, 0.0005)
    sync = synchrony(sent)
    assert sync[Point.SYNC_SHARE] == 1.0
    rate = (sent.size - 1) / (sent.max() - sent.min())
    assert sync[Point.SYNC_SHARE_POISSON] == pytest.approx(1 - math.exp(-2 * rate * 0.002))
    assert sync[Point.SYNC_RATIO] > 20
    assert synchronised(sync[Point.SYNC_SHARE], sync[Point.SYNC_SHARE_POISSON])


def test_evenly_spread_sends_share_nothing() -> None:
    sent = lockstep_sends(8, 200, 0.8, 0.1)  # one user every 100 ms, the ramp's spacing
    sync = synchrony(sent)
    assert sync[Point.SYNC_SHARE] == 0.0
    assert not synchronised(sync[Point.SYNC_SHARE], sync[Point.SYNC_SHARE_POISSON])


@pytest.mark.parametrize("rate", [10.0, 50.0, 200.0])
def test_poisson_sends_give_the_poisson_share(rate: float) -> None:
    rng = np.random.default_rng(int(rate))
    n = 40000
    sent = np.cumsum(rng.exponential(1 / rate, size=n))
    expected = 1 - math.exp(-2 * rate * SYNC_WINDOW_S)
    assert poisson_sync_share(rate) == pytest.approx(expected)
    # Binomial-like spread of a share over n sends (neighbours correlate: a generous 6 sigma).
    tol = 6 * math.sqrt(expected * (1 - expected) / n) + 1e-3
    sync = synchrony(sent)
    assert sync[Point.SYNC_SHARE] == pytest.approx(expected, abs=tol)
    assert sync[Point.SYNC_RATIO] == pytest.approx(1.0, abs=tol / expected)
    assert not synchronised(sync[Point.SYNC_SHARE], sync[Point.SYNC_SHARE_POISSON])


def test_pairs_within_the_window_count_both_sends() -> None:
    # 0 and 0.001 are within 2 ms of each other; 0.5 and 1.0 have no close neighbour.
    assert sync_share([0.0, 0.001, 0.5, 1.0]) == pytest.approx(0.5)
    assert sync_share([1.0, np.nan, 0.0, 0.0015]) == pytest.approx(2 / 3)  # unsorted, NaN dropped
    assert math.isnan(sync_share([1.0]))
    empty = synchrony([])
    assert all(math.isnan(v) for v in empty.values())
    assert not synchronised(math.nan, math.nan)


def test_a_synchronised_point_needs_a_real_share_and_a_large_ratio() -> None:
    assert not synchronised(0.08, 0.01)  # 8x Poisson but under 10% of sends
    assert not synchronised(0.5, 0.2)  # half the sends, but only 2.5x Poisson at a high rate
    assert synchronised(0.5, 0.1)


def test_the_point_summary_carries_the_synchrony(summaries: list[dict[str, Any]]) -> None:
    s = summaries[0]  # CLOSED_ROWS: one send every 100 ms
    assert s[Point.SYNC_SHARE] == 0.0
    assert s[Point.SYNC_SHARE_POISSON] == pytest.approx(1 - math.exp(-2 * 10 * 0.002))
    assert s[Point.SYNC_RATIO] == 0.0
    assert math.isnan(summaries[5][Point.SYNC_SHARE])  # no rows
