"""Timeslices: a point's client and server figures per fixed interval, to see drift and warm-up.

During a point the runner reads every target's ``/metrics`` text every ``[run] timeslice_s``
(:class:`ScrapeLog`; the text is only stored then, and parsed after the point, so the Locust
greenlets pay for the socket I/O only). :func:`bin_timeslices` then cuts the measured window
into intervals and puts the client's rows (throughput, TTFT, in-flight) beside the server's
gauges (requests waiting and running, summed over replicas) in each: the rows of
``timeslices.parquet`` (:data:`loadgen.results.TIMESLICE_COLUMNS`). Pure apart from
:meth:`ScrapeLog.fetch`; no Locust import.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

import numpy as np
import pandas as pd
import requests

from loadgen.results import REQUEST_COLUMNS, TIMESLICE_COLUMNS, Col, Ts
from loadgen.scrape import parse
from loadgen.servers.adapter import Adapter
from loadgen.summary import finite, percentile
from telemetry import names

__all__ = ["GAUGE_COLUMNS", "ScrapeLog", "bin_timeslices", "gauge_frame"]

GAUGE_COLUMNS: Final = ("round", "t", "replica", Ts.QUEUE_DEPTH, Ts.RUNNING)
"""Columns of :func:`gauge_frame`: one row per ``/metrics`` read."""
_GAUGES: Final = (
    (Ts.QUEUE_DEPTH, names.TOKENBOOTH_REQUESTS_WAITING),
    (Ts.RUNNING, names.TOKENBOOTH_REQUESTS_RUNNING),
)


class ScrapeLog:
    """The raw ``/metrics`` texts read during one point: ``(round, wall time, url, text)``."""

    def __init__(self) -> None:
        self.reads: list[tuple[int, float, str, str]] = []
        self._round = 0

    def fetch(self, urls: Iterable[str], headers: Mapping[str, str], timeout_s: float) -> None:
        """Read every url's ``/metrics`` once (one round); an unreadable one is left out."""
        for url in urls:
            try:
                r = requests.get(url + "/metrics", timeout=timeout_s, headers=dict(headers))
                r.raise_for_status()
            except requests.RequestException:
                continue
            self.reads.append((self._round, time.time(), url, r.text))
        self._round += 1

    def gauges(self, adapter: Adapter) -> pd.DataFrame:
        """Parse the stored texts through the server kind's adapter (:func:`gauge_frame`)."""
        return gauge_frame(
            (rnd, t, url, _snapshot(text, adapter)) for rnd, t, url, text in self.reads
        )


def _snapshot(text: str, adapter: Adapter) -> Mapping[tuple[str, str, str], float]:
    try:
        return parse(text, adapter)
    except ValueError:
        return {}


def gauge_frame(
    reads: Iterable[tuple[int, float, str, Mapping[tuple[str, str, str], float]]],
) -> pd.DataFrame:
    """One row per read: the queue-depth and running gauges, summed over their label sets.

    Args:
        reads: ``(round, wall time, replica, parsed snapshot)``; a snapshot is keyed like
            :class:`loadgen.scrape.Snapshot`, by canonical sample name first.

    Returns:
        :data:`GAUGE_COLUMNS`; a gauge the server does not export is NaN.
    """
    rows = []
    for rnd, t, replica, snap in reads:
        row: dict[str, Any] = {"round": rnd, "t": t, "replica": replica}
        for col, metric in _GAUGES:
            values = [v for (name, _, _), v in snap.items() if name == metric]
            row[col] = float(sum(values)) if values else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=list(GAUGE_COLUMNS))


def _edges(start: float, end: float, interval_s: float) -> list[float]:
    """Slice bounds from ``start``; a remainder under half an interval joins the last slice."""
    n = max(1, math.floor((end - start) / interval_s))
    if (end - start) - n * interval_s >= interval_s / 2:
        n += 1
    edges = [start + k * interval_s for k in range(n)]
    return [*edges, max(end, edges[-1] + 1e-9)]


def bin_timeslices(
    point_id: int,
    requests: pd.DataFrame,
    gauges: pd.DataFrame,
    *,
    start: float,
    end: float,
    interval_s: float,
) -> pd.DataFrame:
    """Cut one point's measured window into intervals and summarise each.

    Args:
        point_id: The point.
        requests: Its measured rows (:class:`loadgen.results.Col` columns).
        gauges: Its ``/metrics`` reads (:func:`gauge_frame`); replicas of one round are summed,
            rounds within a slice averaged.
        start: Wall time the measured window opened (slice 0 starts here).
        end: Wall time the point ended (its last finish); the last slice ends here.
        interval_s: Slice length (``[run] timeslice_s``).

    Returns:
        :data:`loadgen.results.TIMESLICE_COLUMNS`; empty when ``end <= start``.
    """
    if not (interval_s > 0 and end > start):
        return pd.DataFrame(columns=list(TIMESLICE_COLUMNS)).astype(TIMESLICE_COLUMNS)
    req = requests if len(requests) else pd.DataFrame(columns=list(REQUEST_COLUMNS))
    ok = req[Col.OK].fillna(False).astype(bool).to_numpy()
    finished = np.asarray(pd.to_numeric(req[Col.FINISHED_AT], errors="coerce"), dtype=float)
    sent = np.asarray(pd.to_numeric(req[Col.SENT_AT], errors="coerce"), dtype=float)
    first = np.asarray(pd.to_numeric(req[Col.FIRST_TOKEN_AT], errors="coerce"), dtype=float)
    ttft = np.asarray(pd.to_numeric(req[Col.TTFT_S], errors="coerce"), dtype=float)
    tokens = np.nan_to_num(
        np.asarray(pd.to_numeric(req[Col.COMPLETION_TOKENS], errors="coerce"), dtype=float)
    )
    rounds = _rounds(gauges)
    edges = _edges(start, end, interval_s)
    last = len(edges) - 2
    rows = []
    for k, (a, b) in enumerate(itertools.pairwise(edges)):
        # The last slice is closed: a request finishing at `end` belongs to it.
        done = (finished >= a) & ((finished <= b) if k == last else (finished < b))
        got_first = ok & (first >= a) & ((first <= b) if k == last else (first < b))
        dur = b - a
        in_slice = rounds[(rounds["t"] >= a) & (rounds["t"] < b)] if len(rounds) else rounds
        rows.append(
            {
                Ts.POINT_ID: point_id,
                Ts.SLICE: k,
                Ts.START_S: a - start,
                Ts.DURATION_S: dur,
                Ts.REQUESTS_PER_S: float((done & ok).sum()) / dur,
                Ts.OUTPUT_TOKENS_PER_S: float(tokens[done & ok].sum()) / dur,
                Ts.ERRORS: int((done & ~ok).sum()),
                Ts.TTFT_P50_S: percentile(finite(ttft[got_first]), 0.50),
                Ts.TTFT_P95_S: percentile(finite(ttft[got_first]), 0.95),
                Ts.IN_FLIGHT: int(((sent <= b) & ~(finished <= b)).sum()),
                Ts.QUEUE_DEPTH: _mean(in_slice, Ts.QUEUE_DEPTH),
                Ts.RUNNING: _mean(in_slice, Ts.RUNNING),
                Ts.SCRAPES: int(in_slice["reads"].sum()) if len(in_slice) else 0,
            }
        )
    return pd.DataFrame(rows, columns=list(TIMESLICE_COLUMNS)).astype(TIMESLICE_COLUMNS)


def _rounds(gauges: pd.DataFrame) -> pd.DataFrame:
    """Per scrape round: its mean time, the gauges summed over replicas, and its reads."""
    if gauges.empty:
        return pd.DataFrame(columns=["t", Ts.QUEUE_DEPTH, Ts.RUNNING, "reads"])
    g = gauges.groupby("round")
    return pd.DataFrame(
        {
            "t": g["t"].mean(),
            # min_count=1: a round where no replica exported the gauge stays NaN, never 0.
            Ts.QUEUE_DEPTH: g[Ts.QUEUE_DEPTH].sum(min_count=1),
            Ts.RUNNING: g[Ts.RUNNING].sum(min_count=1),
            "reads": g["t"].size(),
        }
    ).reset_index(drop=True)


def _mean(frame: pd.DataFrame, col: str) -> float:
    values = finite(frame[col]) if len(frame) else np.empty(0)
    return float(values.mean()) if values.size else math.nan
