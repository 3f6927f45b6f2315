"""The server's own view of each point, beside the client's, and what the server was.

Filled from the server's ``/metrics`` through its kind's adapter (:mod:`loadgen.servers`);
a figure the server does not export is named as absent, never shown as zero.
"""

from __future__ import annotations

from typing import Any, Final

import pandas as pd

from loadgen.results import Env, Point, Server
from loadgen.summary import SERVER_VIEW_COLUMNS
from reports.analysis import Analysis
from reports.cells import num, pct
from reports.compare import server_label
from reports.document import Table
from reports.load import Rpt

__all__ = ["server_rows", "server_unavailable", "server_view_table"]


_CLIENT_MINUS_SERVER_TTFT: Final = "client_minus_server_ttft_s"

# (column, header, format): the client's figure beside the server's, then the server's own.
_SERVER_VIEW_TABLE: Final[tuple[tuple[str, str, str], ...]] = (
    (Rpt.TTFT_MEAN_S, "client TTFT mean s", "s"),
    (Point.SERVER_TTFT_MEAN_S, "server TTFT mean s", "s"),
    (_CLIENT_MINUS_SERVER_TTFT, "client − server TTFT ms", "ms"),
    (Rpt.E2E_MEAN_S, "client E2E mean s", "s"),
    (Point.SERVER_E2E_MEAN_S, "server E2E mean s", "s"),
    (Point.SERVER_QUEUE_WAIT_MEAN_S, "server queue mean s", "s"),
    (Point.SERVER_REQUESTS, "server requests", "count"),
    (Point.SERVER_PROMPT_TOKENS, "server prompt tokens", "count"),
    (Point.SERVER_GENERATION_TOKENS, "server generated tokens", "count"),
    (Point.SERVER_KV_CACHE_USAGE_MAX, "KV cache use max", "pct"),
    (Point.SERVER_PREEMPTIONS, "preemptions", "count"),
)


def _server_of(analysis: Analysis) -> dict[str, Any] | None:
    server = analysis.run.environment.get(Env.SERVER)
    return server if isinstance(server, dict) else None


def _has_values(points: pd.DataFrame, col: str) -> bool:
    return col in points and bool(pd.to_numeric(points[col], errors="coerce").notna().any())


def server_unavailable(analysis: Analysis) -> str | None:
    """Why the run has no server-side figures, in words; ``None`` when it has them.

    A server that exports no metrics the harness reads (a generic OpenAI-compatible server, or
    one started without its metrics endpoint) is said to be so, never shown as blank columns.

    Args:
        analysis: The run's analysis.

    Returns:
        The sentence for the report, or ``None``.
    """
    server = _server_of(analysis)
    if server is not None and not server.get(Server.SERVER_VIEW):
        described = "; ".join(
            str(x) for x in (server_label(analysis.run), server.get(Server.DETECTED_FROM)) if x
        )
        return (
            f"Server-side figures are not available for this run: the server ({described}) "
            "exports no metrics the harness reads, so every figure here is the client's own "
            "measurement."
        )
    if not any(_has_values(analysis.points, c) for c in SERVER_VIEW_COLUMNS):
        return (
            "Server-side figures are not available for this run: no server metrics were "
            "recorded, so every figure here is the client's own measurement."
        )
    return None


def _server_cell(value: Any, fmt: str) -> str:
    if fmt == "pct":
        return pct(value)
    if fmt == "ms":
        try:
            return num(float(value) * 1e3)
        except (TypeError, ValueError):
            return "–"
    return num(value, 6) if fmt == "count" else num(value)


def server_view_table(analysis: Analysis, pts: pd.DataFrame) -> Table:
    """Per point, the client's figures beside the server's own (TTFT reconciled where both)."""
    pts = pts.copy()
    if _has_values(pts, Rpt.TTFT_MEAN_S) and _has_values(pts, Point.SERVER_TTFT_MEAN_S):
        client = pd.to_numeric(pts[Rpt.TTFT_MEAN_S], errors="coerce")
        server_ttft = pd.to_numeric(pts[Point.SERVER_TTFT_MEAN_S], errors="coerce")
        pts[_CLIENT_MINUS_SERVER_TTFT] = client - server_ttft
    shown = [c for c in _SERVER_VIEW_TABLE if _has_values(pts, c[0])]
    missing = [
        header
        for col, header, _ in _SERVER_VIEW_TABLE
        if col in SERVER_VIEW_COLUMNS and not _has_values(pts, col)
    ]
    headers = ["id", "configuration", "load"] + [h for _, h, _ in shown]
    rows = [
        [
            str(int(r[Point.POINT_ID])),
            str(r[Rpt.CONFIG]),
            f"{r[Point.LOAD_MODE]} {num(r[Point.LOAD_LEVEL])}",
            *(_server_cell(r.get(col), fmt) for col, _, fmt in shown),
        ]
        for _, r in pts.iterrows()
    ]
    server = server_label(analysis.run) or "the server"
    note = (
        f"Server-side figures from {server}'s own /metrics: deltas over each point's window "
        "(KV cache use: the largest value scraped). Client minus server TTFT is what the "
        "network, HTTP and SSE framing add to the server's own clock."
    )
    if missing:
        note += f" Not exported by {server}, so absent rather than zero: {', '.join(missing)}."
    return Table("Server view per point", headers, rows, note=note, key="server-view-table")


def server_rows(analysis: Analysis) -> list[list[str]]:
    server = _server_of(analysis)
    if server is None:
        return [["server", "not recorded (a run from before server detection)"]]
    view = server.get(Server.SERVER_VIEW)
    return [
        ["server", str(server.get(Server.KIND) or "unknown")],
        ["server version", str(server.get(Server.VERSION) or "not stated by the server")],
        ["server detected from", str(server.get(Server.DETECTED_FROM) or "unknown")],
        ["server-side metrics", "available" if view else "not available: client-side view only"],
    ]
