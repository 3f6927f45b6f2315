"""The report's view of multi-turn sessions and shared prefixes: TTFT by turn, prefix notes.

A sessions workload's later turns send the whole conversation back, so their prompts are
longer: without a prefix cache every turn prefills all of it again and TTFT grows with the
turn, with one it stays near turn 1's. A shared-prefix workload says how much of each prompt
is shared; whether that helps depends on the server, which the section says plainly. With a
baseline run that has no prefixes (``tokenbooth report BASELINE THIS``) TTFT is compared at
matched configurations and load levels.
"""

from __future__ import annotations

import math

import pandas as pd

from loadgen.results import Col, Env, Point, Server
from loadgen.summary import Stat, turn_summary
from reports import plots
from reports.analysis import Analysis
from reports.cells import num, pct
from reports.document import FigureSpec, Section, Table, figure
from reports.load import Rpt

__all__ = ["offered_rate", "sessions_section"]


def offered_rate(r: pd.Series) -> str:
    """An open-loop point's offered load: ``2 sessions/s (≈ 8 req/s)`` with sessions, else
    ``8 req/s`` (its load level is requests/s either way)."""
    rps = num(r[Point.LOAD_LEVEL])
    sessions = pd.to_numeric(r.get(Point.OFFERED_SESSIONS_PER_S), errors="coerce")
    if isinstance(sessions, float) and math.isfinite(sessions):
        return f"{num(sessions)} sessions/s (≈ {rps} req/s)"
    return f"{rps} req/s"


def _load_label(r: pd.Series) -> str:
    if r[Point.LOAD_MODE] == "rate":
        return f"open loop {offered_rate(r)}"
    return f"closed loop {num(r[Point.LOAD_LEVEL])} users"


def _labels(points: pd.DataFrame) -> dict[int, str]:
    return {
        int(r[Point.POINT_ID]): f"#{int(r[Point.POINT_ID])} {_load_label(r)}"
        for _, r in points.iterrows()
    }


def _turn_table(turns: pd.DataFrame, labels: dict[int, str]) -> Table:
    rows = []
    for pid, g in turns.groupby(Col.POINT_ID, sort=True):
        first = g[g[Col.TURN] == 1][Point.TTFT_P50_S]
        base = float(first.iloc[0]) if len(first) else math.nan
        for _, r in g.sort_values(Col.TURN).iterrows():
            ratio = r[Point.TTFT_P50_S] / base if base > 0 else math.nan
            rows.append(
                [
                    labels.get(int(pid), str(pid)),
                    str(int(r[Col.TURN])),
                    str(int(r[Stat.N_TTFT])),
                    num(r[Col.PROMPT_TOKENS]),
                    num(r[Point.TTFT_P50_S]),
                    num(r[Point.TTFT_P95_S]),
                    "–" if not math.isfinite(ratio) else f"{ratio:.2f}×",
                ]
            )
    headers = ["point", "turn", "n", "prompt tokens (mean)", "TTFT p50 s", "TTFT p95 s"]
    headers.append("p50 vs turn 1")
    note = (
        "Successful requests of each turn of every session; prompt tokens are the server's "
        "usage (the workload's count where it sends none)."
    )
    return Table("TTFT by turn", headers, rows, note=note, key="turns-table")


def _server_kind(analysis: Analysis) -> str:
    server = analysis.run.environment.get(Env.SERVER) or {}
    return str(server.get(Server.KIND, "")) if isinstance(server, dict) else ""


def _prefix_paragraph(analysis: Analysis) -> str:
    w = analysis.run.spec.workload
    req = analysis.run.requests
    ok = req[req[Col.OK].eq(True)] if len(req) else req
    mean_prompt = float(pd.to_numeric(ok[Col.PROMPT_TOKENS]).mean()) if len(ok) else math.nan
    share = w.prefix_tokens / mean_prompt if mean_prompt > 0 else math.nan
    kind = _server_kind(analysis)
    text = (
        f"Shared prefixes: every request starts with one of {w.prefix_groups} system prompts of "
        f"{w.prefix_tokens} tokens (its group drawn at random with the seed), "
        f"{pct(share)} of the mean prompt ({num(mean_prompt)} tokens). "
    )
    if kind == "tokenbooth":
        return text + (
            "tokenbooth's service has no prefix cache: it prefills every prompt in full, the "
            "shared prefix included, so these TTFTs carry the prefix's whole prefill cost "
            "(a server with prefix caching would prefill each group's prefix once)."
        )
    return text + (
        f"Whether the server ({kind or 'unknown kind'}) reuses the prefix shows against a run "
        "without prefixes: tokenbooth report NO_PREFIX_RUN THIS_RUN."
    )


def _valid_points(analysis: Analysis) -> pd.DataFrame:
    """Valid points with their mean prompt tokens (successful requests)."""
    pts = analysis.points[analysis.points[Point.VALID]]
    req = analysis.run.requests
    ok = req[req[Col.OK].eq(True)] if len(req) else req
    prompt = pd.to_numeric(ok[Col.PROMPT_TOKENS]).groupby(ok[Col.POINT_ID]).mean()
    keys = [Rpt.CONFIG, Point.LOAD_MODE, Point.LOAD_LEVEL]
    out = pts[[*keys, Point.POINT_ID, Point.TTFT_P50_S, Point.TTFT_P95_S]].copy()
    out[Col.PROMPT_TOKENS] = out[Point.POINT_ID].map(prompt)
    return out.drop(columns=[Point.POINT_ID])


def _baseline_table(analysis: Analysis, baseline: Analysis) -> Table | None:
    """TTFT with prefixes against a no-prefix run's, at matched configuration and load.

    The fair baseline sends prompts as long but unshared (``input_tokens`` raised by
    ``prefix_tokens``): then any TTFT gap is the server's reuse of the prefix, not length.
    """
    if baseline.run.spec.workload.prefix_groups > 0:
        return None
    keys = [Rpt.CONFIG, Point.LOAD_MODE, Point.LOAD_LEVEL]
    both = _valid_points(analysis).merge(_valid_points(baseline), on=keys, suffixes=("", "_b"))
    if both.empty:
        return None
    rows = [
        [
            str(r[Rpt.CONFIG]),
            _load_label(r),
            f"{num(r[f'{Col.PROMPT_TOKENS}_b'])} / {num(r[Col.PROMPT_TOKENS])}",
            num(r[f"{Point.TTFT_P50_S}_b"]),
            num(r[Point.TTFT_P50_S]),
            pct(r[Point.TTFT_P50_S] / r[f"{Point.TTFT_P50_S}_b"] - 1, signed=True),
            num(r[f"{Point.TTFT_P95_S}_b"]),
            num(r[Point.TTFT_P95_S]),
        ]
        for _, r in both.iterrows()
    ]
    headers = ["configuration", "load", "prompt tokens without / with", "TTFT p50 s without"]
    headers += ["with prefix", "change", "TTFT p95 s without", "with prefix"]
    note = (
        "Valid points matched by configuration and load level. A like-for-like baseline has "
        "prompts as long as these but nothing shared; then a lower TTFT with prefixes is the "
        "server reusing them, and no change is a server without a prefix cache."
    )
    return Table(
        f"TTFT with shared prefixes against {baseline.run.name} (no prefixes)",
        headers,
        rows,
        note=note,
        key="prefix-table",
    )


def sessions_section(analysis: Analysis, baseline: Analysis | None = None) -> Section | None:
    """TTFT by turn (sessions) and the shared-prefix notes; ``None`` for other workloads.

    Args:
        analysis: The run's analysis.
        baseline: A run to compare against (its TTFT is shown when it has no prefixes).

    Returns:
        The section, or ``None`` when the workload has neither sessions nor prefixes.
    """
    w = analysis.run.spec.workload
    if w.kind != "sessions" and w.prefix_groups <= 0:
        return None
    paragraphs: list[str] = []
    tables: list[Table] = []
    figures: list[FigureSpec] = []
    if w.kind == "sessions":
        paragraphs.append(
            "Multi-turn sessions: each turn sends the conversation so far (earlier user "
            "messages and the model's actual replies) and a new user message, so prompts grow "
            "with the turn. Without a prefix cache each turn prefills the whole history again "
            "and TTFT grows with it; with one, later turns stay near turn 1. Open-loop load is "
            "sessions started per second; its load level and figures are in requests/s "
            "(sessions/s times the mean turns per session)."
        )
        turns = turn_summary(analysis.run.requests)
        labels = _labels(analysis.points)
        if turns.empty:
            paragraphs.append("No successful session turns were recorded.")
        else:
            tables.append(_turn_table(turns, labels))
            figures.append(
                figure(
                    "ttft_by_turn",
                    "TTFT by turn",
                    "TTFT p50 (solid) and p95 (dashed) per session turn, beside the mean "
                    "prompt length of that turn, one curve per point.",
                    plots.ttft_by_turn(turns, labels),
                )
            )
    if w.prefix_groups > 0:
        paragraphs.append(_prefix_paragraph(analysis))
        compared = _baseline_table(analysis, baseline) if baseline is not None else None
        if compared is not None:
            tables.append(compared)
    return Section(
        "sessions",
        "Sessions and shared prefixes",
        paragraphs=paragraphs,
        tables=tables,
        figures=figures,
    )
