"""Timeslice frames: each point's ``timeslices.parquet`` rows joined to its load columns.

:func:`timeslice_frames` gives one frame per configuration, which
:func:`reports.plots.timeslice_figure` draws (throughput, TTFT p95, in-flight and queue depth
over time, one line per load level).
"""

from __future__ import annotations

import pandas as pd

from loadgen.results import Point, Ts
from reports.load import Rpt, Run

__all__ = ["timeslice_frames"]


def timeslice_frames(run: Run, points: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per configuration label (sorted): its points' timeslices with their load columns.

    Args:
        run: The run (its :attr:`Run.timeslices`).
        points: The analysis' points (labels, load mode, level, status).

    Returns:
        Frames with the :class:`loadgen.results.Ts` columns plus :attr:`Rpt.CONFIG`,
        :attr:`Point.LOAD_MODE`, :attr:`Point.LOAD_LEVEL` and :attr:`Point.STATUS`; a
        configuration without timeslices is absent.
    """
    ts = run.timeslices
    if ts.empty or Ts.POINT_ID not in ts:
        return {}
    cols = [Point.POINT_ID, Rpt.CONFIG, Point.LOAD_MODE, Point.LOAD_LEVEL, Point.STATUS]
    joined = ts.merge(points[cols], on=Point.POINT_ID, how="inner")
    return {str(k): g for k, g in joined.groupby(Rpt.CONFIG, sort=True)}
