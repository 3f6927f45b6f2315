"""Timeslice figures: each point's throughput, TTFT p95, in-flight and queue depth over time.

One small-multiples figure per configuration, one line per load level, so a point that drifts
(a queue that keeps growing, throughput sagging) or was not yet warm when its window opened
stands out at a glance. :func:`timeslice_frames` joins ``timeslices.parquet`` to the points;
:func:`timeslice_figure` is pure: frame in, ``Figure`` out.
"""

from __future__ import annotations

from typing import Final

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from loadgen.results import Point, Ts
from reports.load import Rpt, Run

__all__ = ["timeslice_figure", "timeslice_frames"]

_PANELS: Final = (
    (Ts.OUTPUT_TOKENS_PER_S, "throughput (output tokens/s)"),
    (Ts.TTFT_P95_S, "TTFT p95 (s)"),
    (Ts.IN_FLIGHT, "in flight (client, measured requests)"),
    (Ts.QUEUE_DEPTH, "queue depth (server, requests waiting)"),
)


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


def _level_label(mode: str, level: float, status: str, repeat: int) -> str:
    unit = "req/s" if mode == "rate" else "users"
    text = f"{level:g} {unit}" + (f" #{repeat + 1}" if repeat else "")
    return text + (f" ({status})" if status and status != "ok" else "")


def timeslice_figure(slices: pd.DataFrame, title: str) -> Figure:
    """Throughput, TTFT p95, in-flight and server queue depth against time, per load level.

    Args:
        slices: One configuration's timeslices (:func:`timeslice_frames`): Ts columns with
            :attr:`Point.LOAD_MODE`, :attr:`Point.LOAD_LEVEL` and :attr:`Point.STATUS`.
        title: The configuration's label.

    Returns:
        Four panels sharing the time axis (seconds since the measured window opened; each
        value drawn at its slice's middle), one line per point, coloured by load level.
    """
    fig = Figure(figsize=(12.0, 6.0), layout="constrained")
    axes = [ax for row in fig.subplots(2, 2, squeeze=False, sharex=True) for ax in row]
    points = (
        slices.groupby(Point.POINT_ID, sort=False)
        .first()
        .sort_values([Point.LOAD_LEVEL])
        .reset_index()
        if len(slices)
        else pd.DataFrame(columns=[Point.POINT_ID, Point.LOAD_LEVEL])
    )
    cmap = colormaps["viridis"]
    n = max(len(points) - 1, 1)
    seen: dict[float, int] = {}
    for i, (_, p) in enumerate(points.iterrows()):
        g = slices[slices[Point.POINT_ID] == p[Point.POINT_ID]].sort_values(Ts.SLICE)
        t = g[Ts.START_S] + g[Ts.DURATION_S] / 2
        level = float(p[Point.LOAD_LEVEL])
        repeat = seen.get(level, 0)
        seen[level] = repeat + 1
        label = _level_label(str(p[Point.LOAD_MODE]), level, str(p[Point.STATUS]), repeat)
        color = cmap(0.9 * i / n)
        for ax, (col, _) in zip(axes, _PANELS, strict=True):
            y = pd.to_numeric(g[col], errors="coerce")
            if y.notna().any():
                ax.plot(t, y, marker="o", ms=3, color=color, label=label)
    for ax, (col, name) in zip(axes, _PANELS, strict=True):
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        if not ax.get_lines():
            ax.text(
                0.5,
                0.5,
                "not in the server metrics" if col == Ts.QUEUE_DEPTH else "no data",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        else:
            ax.set_ylim(bottom=0)
    for ax in axes[2:]:
        ax.set_xlabel("seconds since the measured window opened")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, title="load level")
    fig.suptitle(f"Timeslices: {title}")
    return fig
