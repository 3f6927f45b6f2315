"""The run's SLO-edge search (``search.json``) and saturated points, as the report states them.

``[load] mode = "slo_search"`` leaves one bracket per configuration: the highest offered rate
that met the SLO and the lowest that failed, with the harness's sentence for it and every probe.
The report says it under the capacity table and shades it on the latency-vs-requests/s figure;
it reads the file only (the search logic stays in ``loadgen``).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from loadgen.results import Point, PointStatus
from reports.analysis import Analysis
from reports.cells import num
from reports.load import Rpt

__all__ = ["saturation_notes", "search_entries", "search_paragraphs", "search_spans"]


def search_entries(analysis: Analysis) -> dict[str, dict[str, Any]]:
    """Per configuration label (sorted): its ``search.json`` entry (bracket, describe, probes)."""
    out = {}
    pts = analysis.points
    for config_id, entry in analysis.run.search.items():
        hit = pts[pts[Point.CONFIG_ID] == config_id]
        out[str(hit[Rpt.CONFIG].iloc[0]) if len(hit) else config_id] = entry
    return dict(sorted(out.items()))


def search_spans(analysis: Analysis) -> dict[str, tuple[float, float]]:
    """Per configuration label: the ``(passing, failing)`` rates of a closed bracket."""
    spans = {}
    for label, entry in search_entries(analysis).items():
        b = entry.get("bracket", {})
        if b.get("low") is not None and b.get("high") is not None:
            spans[label] = (float(b["low"]), float(b["high"]))
    return spans


def _probe_cell(probe: dict[str, Any], points: pd.DataFrame) -> str:
    """A probe's offered rate and verdict, with what the point achieved: a short window's
    arrivals can stray well off the offered rate, and the verdict is for what it got."""
    verdict = "meets" if probe["passed"] else f"fails: {probe['reason']}"
    hit = points[points[Point.POINT_ID] == int(probe["point_id"])]
    row = hit.iloc[0] if len(hit) else pd.Series(dtype=float)
    measured = [
        f"{name} {num(row.get(col))} req/s"
        for name, col in (("achieved", Point.ACHIEVED_RPS), ("goodput", Point.GOODPUT_RPS))
        if math.isfinite(pd.to_numeric(row.get(col, math.nan), errors="coerce"))
    ]
    return f"{num(probe['rate'])} req/s ({', '.join([verdict, *measured])})"


def search_paragraphs(analysis: Analysis) -> list[str]:
    """One sentence per searched configuration: the bracket, then every rate probed in order."""
    out = []
    for label, entry in search_entries(analysis).items():
        order = "; ".join(_probe_cell(p, analysis.points) for p in entry.get("probes", []))
        found = entry.get("describe") or f"bracket {entry.get('bracket')}"
        out.append(
            f"SLO-edge search ({analysis.slo.describe()}), {label}: {found}. "
            f"Rates probed, in order: {order}."
        )
    return out


def saturation_notes(points: pd.DataFrame) -> list[str]:
    """A sentence per point ended early as saturated (their rows are kept, the point invalid)."""
    sat = points[points[Point.STATUS] == PointStatus.SATURATED]
    return [
        f"Point {int(r[Point.POINT_ID])} ({r[Rpt.CONFIG]}, {num(r[Point.LOAD_LEVEL])} req/s "
        f"offered) was ended early as saturated: {r[Point.STATUS_DETAIL]}. Its latencies "
        "describe a growing queue, not a steady state; it is left out of capacity figures."
        for _, r in sat.sort_values(Point.POINT_ID).iterrows()
    ]
