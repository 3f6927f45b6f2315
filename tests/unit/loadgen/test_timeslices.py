"""Timeslice binning (``loadgen.timeslices``): client rows and server gauges per interval."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

from loadgen.results import REQUEST_COLUMNS, TIMESLICE_COLUMNS, Col, RunDir, Ts
from loadgen.timeslices import bin_timeslices, gauge_frame
from telemetry import names

T0 = 1000.0


def req(
    sent: float, ttft: float, e2e: float, *, ok: bool = True, tokens: int = 4
) -> dict[str, Any]:
    return {
        Col.SENT_AT: T0 + sent,
        Col.FIRST_TOKEN_AT: T0 + sent + ttft if ok else math.nan,
        Col.FINISHED_AT: T0 + sent + e2e,
        Col.TTFT_S: ttft if ok else math.nan,
        Col.E2E_S: e2e,
        Col.COMPLETION_TOKENS: tokens if ok else 0,
        Col.OK: ok,
    }


def requests() -> pd.DataFrame:
    rows = [
        req(0.0, 0.1, 0.5),  # first token and finish in slice 0
        req(0.5, 0.2, 1.0),  # finishes at 1.5 in slice 0
        req(1.5, 0.3, 1.0),  # first token 1.8 (slice 0), finishes 2.5 (slice 1)
        req(2.5, 0.4, 1.5, tokens=10),  # first token 2.9, finishes at the end, 4.0
        req(3.0, 0.0, 0.5, ok=False),  # an error finishing at 3.5 in slice 1
    ]
    return pd.DataFrame(rows, columns=list(REQUEST_COLUMNS))


def gauges() -> pd.DataFrame:
    waiting, running = names.TOKENBOOTH_REQUESTS_WAITING, names.TOKENBOOTH_REQUESTS_RUNNING
    reads = [
        # round 0 at t=1 s, two replicas: waiting 2 + 3, running 1 + 1
        (0, T0 + 1.0, "a", {(waiting, "", ""): 2.0, (running, "", ""): 1.0}),
        (0, T0 + 1.0, "b", {(waiting, "", ""): 3.0, (running, "", ""): 1.0}),
        # round 1 at t=3 s, one replica only exports running
        (1, T0 + 3.0, "a", {(running, "", ""): 4.0}),
        (1, T0 + 3.0, "b", {(running, "", "x=1"): 1.0, (running, "", "x=2"): 2.0}),
    ]
    return gauge_frame(reads)


def test_rows_and_gauges_land_in_their_slices() -> None:
    out = bin_timeslices(7, requests(), gauges(), start=T0, end=T0 + 4.0, interval_s=2.0)
    assert list(out.columns) == list(TIMESLICE_COLUMNS)
    assert out[Ts.SLICE].tolist() == [0, 1]
    assert out[Ts.POINT_ID].tolist() == [7, 7]
    assert out[Ts.START_S].tolist() == [0.0, 2.0]
    assert out[Ts.REQUESTS_PER_S].tolist() == [1.0, 1.0]  # 2 ok per 2 s in each
    assert out[Ts.OUTPUT_TOKENS_PER_S].tolist() == [4.0, 7.0]
    assert out[Ts.ERRORS].tolist() == [0, 1]
    # TTFT by first-token time: 0.1, 0.2, 0.3 in slice 0; 0.4 in slice 1.
    assert out[Ts.TTFT_P50_S].iloc[0] == pytest.approx(0.2)
    assert out[Ts.TTFT_P95_S].iloc[0] == pytest.approx(0.29)
    assert out[Ts.TTFT_P50_S].iloc[1] == pytest.approx(0.4)
    # In flight at 2 s: the request sent at 1.5 s; at 4 s: none (the last finished at 4).
    assert out[Ts.IN_FLIGHT].tolist() == [1, 0]
    assert out[Ts.QUEUE_DEPTH].iloc[0] == 5.0
    assert math.isnan(out[Ts.QUEUE_DEPTH].iloc[1])  # not exported in that round: never 0
    assert out[Ts.RUNNING].tolist() == [2.0, 7.0]
    assert out[Ts.SCRAPES].tolist() == [2, 2]


def test_a_short_remainder_joins_the_last_slice() -> None:
    out = bin_timeslices(0, requests(), gauges(), start=T0, end=T0 + 4.0, interval_s=1.8)
    assert out[Ts.DURATION_S].tolist() == pytest.approx([1.8, 2.2])
    longer = bin_timeslices(0, requests(), gauges(), start=T0, end=T0 + 4.0, interval_s=1.5)
    assert longer[Ts.DURATION_S].tolist() == pytest.approx([1.5, 1.5, 1.0])
    ok_rows = (longer[Ts.REQUESTS_PER_S] * longer[Ts.DURATION_S]).sum()
    assert ok_rows == pytest.approx(4.0)  # every successful row in exactly one slice


def test_empty_window_and_no_rows() -> None:
    assert bin_timeslices(0, requests(), gauges(), start=T0, end=T0, interval_s=2.0).empty
    empty = pd.DataFrame(columns=list(REQUEST_COLUMNS))
    out = bin_timeslices(0, empty, gauge_frame([]), start=T0, end=T0 + 2.0, interval_s=2.0)
    assert out[Ts.REQUESTS_PER_S].tolist() == [0.0]
    assert math.isnan(out[Ts.TTFT_P95_S].iloc[0]) and math.isnan(out[Ts.QUEUE_DEPTH].iloc[0])


def test_run_dir_keeps_one_set_of_slices_per_point(tmp_path: Any) -> None:
    rd = RunDir(tmp_path).create()
    assert rd.timeslices().empty
    a = bin_timeslices(0, requests(), gauges(), start=T0, end=T0 + 4.0, interval_s=2.0)
    b = bin_timeslices(1, requests(), gauges(), start=T0, end=T0 + 4.0, interval_s=1.0)
    rd.write_timeslices(0, a.to_dict("records"))
    rd.write_timeslices(1, b.to_dict("records"))
    rd.write_timeslices(0, a.to_dict("records"))  # a resumed point replaces its own
    back = rd.timeslices()
    assert back.groupby(Ts.POINT_ID).size().to_dict() == {0: 2, 1: 4}
    assert dict(back.dtypes.astype(str)) == TIMESLICE_COLUMNS
