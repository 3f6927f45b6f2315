"""Goodput (``loadgen.summary.goodput``): requests/s that met every per-request SLO term."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

from loadgen.results import REQUEST_COLUMNS, Col, Point
from loadgen.spec import LoadLevel, SLOSpec
from loadgen.summary import goodput, slo_met, summarize_point

SLO = SLOSpec(ttft_p95_s=0.5, tpot_p95_s=0.05, e2e_p95_s=2.0, max_error_rate=0.01)


def req(
    ttft: float = 0.1, tpot: float = 0.02, e2e: float = 1.0, *, ok: bool = True, tokens: int = 8
) -> dict[str, Any]:
    """One request row; sent at 100 s, finished e2e later."""
    return {
        Col.SENT_AT: 100.0,
        Col.FINISHED_AT: 100.0 + e2e,
        Col.TTFT_S: ttft,
        Col.TPOT_S: tpot,
        Col.E2E_S: e2e,
        Col.COMPLETION_TOKENS: tokens,
        Col.ITL_S: [tpot] * (tokens - 1) if ok else [],
        Col.OK: ok,
    }


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(REQUEST_COLUMNS))


def constructed() -> pd.DataFrame:
    """3 good requests, and 6 that each miss in a different way."""
    return frame(
        [
            req(),
            req(ttft=0.5, tpot=0.05, e2e=2.0),  # exactly at every limit: meets it
            req(tpot=math.nan, tokens=1),  # one token: no inter-token time, meets TPOT
            req(ttft=0.51),  # TTFT only
            req(tpot=0.06),  # TPOT only
            req(e2e=2.5),  # E2E only
            req(ok=False),  # an error with good latencies
            req(ttft=math.nan, ok=True),  # no TTFT measured
            req(tpot=math.nan, tokens=8),  # several tokens but no TPOT: not measured
        ]
    )


def test_goodput_counts_only_requests_meeting_every_term() -> None:
    met = slo_met(constructed(), SLO)
    assert met.tolist() == [True, True, True, False, False, False, False, False, False]
    assert goodput(constructed(), SLO, 4.0) == pytest.approx(3 / 4.0)


def test_each_term_applies_only_when_given() -> None:
    only_ttft = SLOSpec(ttft_p95_s=0.5)
    # The TPOT and E2E misses now count; the error and the missing TTFT still do not.
    assert slo_met(constructed(), only_ttft).tolist() == [
        True, True, True, False, True, True, False, False, True,
    ]  # fmt: skip
    assert goodput(constructed(), SLOSpec(max_error_rate=None), 1.0) == 8.0  # every ok row


def test_goodput_without_a_window_is_nan() -> None:
    assert math.isnan(goodput(constructed(), SLO, 0.0))
    assert goodput(frame([]), SLO, 3.0) == 0.0


def test_summarize_point_writes_goodput_over_the_window() -> None:
    rows = [req(), req(ttft=0.9), req(ok=False)]
    rows[1][Col.SENT_AT] = 101.0
    rows[1][Col.FINISHED_AT] = 104.0  # window: 100 s to 104 s
    rows[1][Col.E2E_S] = 3.0
    out = summarize_point(
        rows, level=LoadLevel("rate", 1.0, "poisson"), lag_threshold_s=1, min_samples=0, slo=SLO
    )
    assert out[Point.GOODPUT_RPS] == pytest.approx(1 / 4.0)
    assert out[Point.ACHIEVED_RPS] == pytest.approx(2 / 4.0)
    without = summarize_point(
        rows, level=LoadLevel("rate", 1.0, "poisson"), lag_threshold_s=1, min_samples=0
    )
    assert Point.GOODPUT_RPS not in without
