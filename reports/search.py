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
    """A probe's realised scheduled rate (its nominal rate when unrecorded) and verdict, with
    what the point achieved: the verdict is for the load the probe's schedule realised."""
    verdict = "meets" if probe["passed"] else f"fails: {probe['reason']}"
    hit = points[points[Point.POINT_ID] == int(probe["point_id"])]
    row = hit.iloc[0] if len(hit) else pd.Series(dtype=float)
    measured = [
        f"{name} {num(row.get(col))} req/s"
        for name, col in (("achieved", Point.ACHIEVED_RPS), ("goodput", Point.GOODPUT_RPS))
        if math.isfinite(pd.to_numeric(row.get(col, math.nan), errors="coerce"))
    ]
    scheduled = pd.to_numeric(probe.get("scheduled_rate", math.nan), errors="coerce")
    if math.isfinite(scheduled):
        rate = f"{num(scheduled)} req/s scheduled ({num(probe['rate'])} nominal"
        return f"{rate}; {', '.join([verdict, *measured])})"
    return f"{num(probe['rate'])} req/s ({', '.join([verdict, *measured])})"


def search_paragraphs(analysis: Analysis) -> list[str]:
    """One sentence per searched configuration: the bracket, then every rate probed in order."""
    out = []
    for label, entry in search_entries(analysis).items():
        order = "; ".join(_probe_cell(p, analysis.points) for p in entry.get("probes", []))
        found = entry.get("describe") or f"bracket {entry.get('bracket')}"
        out.append(
            f"SLO-edge search ({analysis.slo.describe()}), {label}: {found}. "
            f"Rates probed, in order: {order}. {_capacity_evidence(analysis, label, entry)}"
        )
    return out


def _capacity_evidence(analysis: Analysis, label: str, entry: dict[str, Any]) -> str:
    """How the capacity table's figure relates to the bracket: the bracket (verdicts on the
    load each probe realised) is the evidence; the table interpolates achieved req/s."""
    b = entry.get("bracket", {})
    lo, hi = (b.get(f"{end}_scheduled", b.get(end)) for end in ("low", "high"))
    text = (
        "For this search the bracket is the capacity evidence; the capacity table's figure "
        "interpolates achieved req/s between the same points"
    )
    pts = analysis.points
    keys = pts.loc[pts[Rpt.CONFIG] == label, Rpt.CONFIG_KEY]
    cap = analysis.capacity.get(str(keys.iloc[0])) if len(keys) else None
    rate = cap.rate_rps if cap is not None else math.nan
    if not math.isfinite(rate) or lo is None or hi is None:
        return text + "."
    if float(lo) <= rate <= float(hi):
        return text + f" ({num(rate)} req/s, inside the bracket)."
    return (
        text + f" and lands outside the bracket at {num(rate)} req/s: achieved rates of short "
        "windows stray from the scheduled ones, so trust the bracket."
    )


def saturation_notes(points: pd.DataFrame) -> list[str]:
    """A sentence per point ended early as saturated (their rows are kept, the point invalid)."""
    sat = points[points[Point.STATUS] == PointStatus.SATURATED]
    return [
        f"Point {int(r[Point.POINT_ID])} ({r[Rpt.CONFIG]}, {num(r[Point.LOAD_LEVEL])} req/s "
        f"offered) was ended early as saturated: {r[Point.STATUS_DETAIL]}. Its latencies "
        "describe a growing queue, not a steady state; it is left out of capacity figures."
        for _, r in sat.sort_values(Point.POINT_ID).iterrows()
    ]
