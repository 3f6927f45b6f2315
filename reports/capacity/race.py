"""The closed-loop race between a batch's last request and the batch's release of its worker.

When a batch ends, the user of its last request sends again at once: the new request either
reaches the server before the batch frees its worker (and joins the requests already waiting)
or it does not (and waits a whole batch). How often it wins decides how closed-loop users
spread over batches; it is counted in the client rows of the fitted points.
"""

from __future__ import annotations

import itertools
import math
from typing import Final

import pandas as pd

from loadgen.results import Col, Point
from reports.capacity.columns import FitCol

__all__ = ["UNMEASURED_CATCH_P", "batch_catch_counts", "catch_probability"]

UNMEASURED_CATCH_P: Final = 0.5
"""Catch probability where the race cannot be counted: even odds."""
_SAME_BATCH_S: Final = 0.002
"""Client timestamps this close count as simultaneous when grouping rows into batches."""


def catch_probability(pts: pd.DataFrame, workers: int) -> tuple[float, str]:
    """How often the last request of a batch caught the next batch (closed loop), and a note.

    Counted from the client rows of the fitted points (:func:`batch_catch_counts`); only
    identifiable with one batch worker per replica, where a replica's batches do not overlap.
    """
    if workers != 1 or FitCol.CATCH_COUNTS not in pts.columns:
        closed = (pts[Point.LOAD_MODE] == "concurrency").any()
        return UNMEASURED_CATCH_P, (
            "closed-loop batch-catching race not identifiable with several batch workers: "
            "taken as even odds"
            if closed and workers != 1
            else ""
        )
    caught = chances = 0
    for counts in pts[FitCol.CATCH_COUNTS]:
        if isinstance(counts, tuple) and len(counts) == 2:
            caught += int(counts[0])
            chances += int(counts[1])
    if chances == 0:
        closed = (pts[Point.LOAD_MODE] == "concurrency").any()
        note = "batch-catching race never observed in the client rows: taken as even odds"
        return UNMEASURED_CATCH_P, note if closed else ""
    # Laplace's rule of succession: few chances (short windows) give a moderate estimate,
    # none give even odds.
    p = (caught + 1) / (chances + 2)
    note = (
        f"last request of a batch caught the next batch {caught}/{chances} times (estimate {p:.2f})"
    )
    return p, note


def batch_catch_counts(rows: pd.DataFrame) -> tuple[int, int]:
    """(times caught, chances) of the race between a batch's last request and its worker.

    Closed loop, one batch worker per replica: a replica's batches do not overlap, so its
    requests group into batches by their overlapping [first token, finish] spans. Whenever a
    batch ends with another request already waiting for that replica, the user of the batch's
    last request sends again at once: its request either reaches the server before the batch
    frees the worker (and joins the waiting request's batch) or does not (and waits a whole
    batch).

    Args:
        rows: Successful client rows of one point (``Col`` columns).

    Returns:
        The counts; (0, 0) when nothing could be counted.
    """
    need = (Col.TARGET, Col.USER, Col.SENT_AT, Col.FIRST_TOKEN_AT, Col.FINISHED_AT)
    if rows.empty or any(c not in rows.columns for c in need):
        return 0, 0
    rows = rows.dropna(subset=[Col.SENT_AT, Col.FIRST_TOKEN_AT, Col.FINISHED_AT])
    rows = rows[rows[Col.USER] >= 0]
    caught = chances = 0
    nxt: dict[int, int] = {}
    for _, g in rows.groupby(Col.USER):
        order = g.sort_values(Col.SENT_AT).index.tolist()
        nxt.update(itertools.pairwise(order))
    batch_of: dict[int, int] = {}
    batches: list[list[int]] = []
    by_target: dict[str, list[int]] = {}
    for target, g in rows.groupby(Col.TARGET):
        g = g.sort_values(Col.FIRST_TOKEN_AT)
        current: list[int] = []
        hi = -math.inf
        for idx, ft, fin in zip(g.index, g[Col.FIRST_TOKEN_AT], g[Col.FINISHED_AT], strict=True):
            if current and ft > hi + _SAME_BATCH_S:
                by_target.setdefault(str(target), []).append(len(batches))
                batches.append(current)
                current, hi = [], -math.inf
            current.append(idx)
            batch_of[idx] = len(batches)
            hi = max(hi, float(fin))
        if current:
            by_target.setdefault(str(target), []).append(len(batches))
            batches.append(current)
    sent, fin, tgt = rows[Col.SENT_AT], rows[Col.FINISHED_AT], rows[Col.TARGET]
    for target, ks in by_target.items():
        for a, b in itertools.pairwise(ks):
            last = max(batches[a], key=lambda i: float(fin[i]))
            follow = nxt.get(last)
            if follow is None or str(tgt[follow]) != target:
                continue
            end = float(fin[last])
            if not any(float(sent[i]) < end - _SAME_BATCH_S for i in batches[b] if i != follow):
                continue  # nobody waiting: the returning request simply starts the next batch
            chances += 1
            caught += batch_of.get(follow) == b
    return caught, chances
