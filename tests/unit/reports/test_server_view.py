"""What the report says about the measured server: its kind and version, its server-side view
per point, or plainly that there is none; and run labels that name the server."""

from __future__ import annotations

import dataclasses
from typing import Any

from loadgen.results import Env, Point, Server
from reports.analysis import Analysis
from reports.compare import compare, run_label, server_label
from reports.sections import environment_section, points_section
from reports.server_view import server_unavailable


def _with_server(analysis: Analysis, server: dict[str, Any] | None) -> Analysis:
    """The same analysis as if its environment.json had recorded ``server``."""
    env = {k: v for k, v in analysis.run.environment.items() if k != Env.SERVER}
    if server is not None:
        env[Env.SERVER] = server
    return dataclasses.replace(analysis, run=dataclasses.replace(analysis.run, environment=env))


def _server(kind: str, version: str, *, view: bool) -> dict[str, Any]:
    return {
        Server.KIND: kind,
        Server.VERSION: version,
        Server.DETECTED_FROM: f"/metrics: {kind}: samples" if view else "not recognised",
        Server.SERVER_VIEW: view,
    }


def _env_rows(analysis: Analysis) -> dict[str, str]:
    (table,) = environment_section(analysis).tables
    return {row[0]: row[1] for row in table.rows}


def test_the_environment_names_the_server_kind_and_version(capacity_analysis: Analysis) -> None:
    llama = _with_server(capacity_analysis, _server("llamacpp", "b11434-unknown", view=True))
    rows = _env_rows(llama)
    assert rows["server"] == "llamacpp"
    assert rows["server version"] == "b11434-unknown"
    assert rows["server detected from"] == "/metrics: llamacpp: samples"
    assert rows["server-side metrics"] == "available"
    quiet = _with_server(capacity_analysis, _server("openai", "", view=False))
    assert _env_rows(quiet)["server version"] == "not stated by the server"
    assert _env_rows(quiet)["server-side metrics"] == "not available: client-side view only"
    old = _with_server(capacity_analysis, None)
    assert _env_rows(old)["server"].startswith("not recorded")


def test_a_server_without_a_view_is_said_to_have_none(capacity_analysis: Analysis) -> None:
    generic = _with_server(capacity_analysis, _server("openai", "", view=False))
    reason = server_unavailable(generic)
    assert reason is not None
    assert reason.startswith("Server-side figures are not available for this run")
    section = points_section(generic)
    assert section.paragraphs[0] == reason
    assert [t.title for t in section.tables] == ["Every point"]


def test_a_server_with_a_view_gets_the_per_point_table(capacity_analysis: Analysis) -> None:
    tb = _with_server(capacity_analysis, _server("tokenbooth", "0.1.0", view=True))
    assert server_unavailable(tb) is None
    section = points_section(tb)
    assert not any("not available" in p for p in section.paragraphs)
    table = section.tables[-1]
    assert table.title == "Server view per point"
    assert table.headers[:3] == ["id", "configuration", "load"]
    assert len(table.rows) == len(tb.points)
    assert "server TTFT mean s" in table.headers
    # The synthetic run records no server e2e or KV cache: left out, and the note says why.
    assert "server E2E mean s" not in table.headers
    assert "KV cache use max" not in table.headers
    assert table.note is not None
    assert "absent rather than zero: server E2E mean s" in table.note
    assert "KV cache use max" in table.note


def test_client_minus_server_ttft_is_shown_where_both_exist(capacity_analysis: Analysis) -> None:
    points = capacity_analysis.points.copy()
    points[Point.SERVER_TTFT_MEAN_S] = points["ttft_mean_s"] - 0.002
    tb = _with_server(
        dataclasses.replace(capacity_analysis, points=points),
        _server("tokenbooth", "0.1.0", view=True),
    )
    table = points_section(tb).tables[-1]
    gap = table.headers.index("client − server TTFT ms")
    cells = {row[gap] for row in table.rows}
    assert "2" in cells and cells <= {"2", "–"}  # "–": a point without client TTFT


def test_no_recorded_server_data_is_no_view(capacity_analysis: Analysis) -> None:
    points = capacity_analysis.points.copy()
    for col in points.columns:
        if col.startswith("server_"):
            points[col] = float("nan")
    bare = _with_server(dataclasses.replace(capacity_analysis, points=points), None)
    assert (server_unavailable(bare) or "").startswith("Server-side figures are not available")


def test_comparison_labels_name_each_runs_server(capacity_analysis: Analysis) -> None:
    a = _with_server(capacity_analysis, _server("tokenbooth", "0.1.0", view=True))
    b = _with_server(capacity_analysis, _server("llamacpp", "b11434-unknown", view=True))
    assert server_label(b.run) == "llamacpp b11434-unknown"
    cmp = compare(a, b)
    assert cmp.a_name == f"{a.run.name} (tokenbooth 0.1.0)"
    assert cmp.b_name == f"{b.run.name} (llamacpp b11434-unknown)"
    # A run that recorded no server keeps its plain name.
    assert run_label(_with_server(capacity_analysis, None).run) == capacity_analysis.run.name
