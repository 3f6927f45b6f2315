"""Timeslice and SLO-edge figures and sentences: built from constructed frames and run dirs."""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loadgen.results import TIMESLICE_COLUMNS, Point, PointStatus, RunDir, Ts
from loadgen.search import Bounds, Probe, bracket
from reports import plots
from reports.analysis import analyze
from reports.figures import measured_figures
from reports.load import Rpt, load_run
from reports.search import search_paragraphs, search_spans
from reports.timeslices import timeslice_frames
from tests.unit.reports import synth


def slices(point_id: int, level: float, status: str, tokens: list[float]) -> pd.DataFrame:
    n = len(tokens)
    frame = pd.DataFrame(
        {
            Ts.POINT_ID: point_id,
            Ts.SLICE: range(n),
            Ts.START_S: [2.0 * k for k in range(n)],
            Ts.DURATION_S: 2.0,
            Ts.REQUESTS_PER_S: [t / 10 for t in tokens],
            Ts.OUTPUT_TOKENS_PER_S: tokens,
            Ts.ERRORS: 0,
            Ts.TTFT_P50_S: 0.1,
            Ts.TTFT_P95_S: [0.2 * (k + 1) for k in range(n)],
            Ts.IN_FLIGHT: [k * 3 for k in range(n)],
            Ts.QUEUE_DEPTH: math.nan,
            Ts.RUNNING: math.nan,
            Ts.SCRAPES: 1,
        }
    ).astype(TIMESLICE_COLUMNS)
    frame[Point.LOAD_MODE] = "rate"
    frame[Point.LOAD_LEVEL] = level
    frame[Point.STATUS] = status
    return frame


def test_timeslice_figure_draws_one_line_per_level() -> None:
    frame = pd.concat(
        [
            slices(5, 8.0, PointStatus.SATURATED, [80.0, 60.0]),
            slices(4, 4.0, PointStatus.OK, [40.0, 41.0, 39.0]),
        ]
    )
    fig = plots.timeslice_figure(frame, "int8 ×1")
    assert fig.canvas.manager is None  # not a pyplot figure
    axes = {ax.get_title(): ax for ax in fig.axes}
    tput = axes["throughput (output tokens/s)"]
    lines = {ln.get_label(): ln for ln in tput.get_lines()}
    assert list(lines) == ["4 req/s", "8 req/s (saturated)"]  # sorted by load level
    assert np.asarray(lines["4 req/s"].get_xdata(), dtype=float).tolist() == [1.0, 3.0, 5.0]
    assert np.asarray(lines["4 req/s"].get_ydata(), dtype=float).tolist() == [40.0, 41.0, 39.0]
    ttft = {ln.get_label(): ln for ln in axes["TTFT p95 (s)"].get_lines()}
    assert np.asarray(ttft["8 req/s (saturated)"].get_ydata(), dtype=float).tolist() == (
        pytest.approx([0.2, 0.4])
    )
    # No server gauge in the frame: the panel says so instead of drawing zeros.
    queue = axes["queue depth (server, requests waiting)"]
    assert not queue.get_lines()
    assert [t.get_text() for t in queue.texts] == ["not in the server metrics"]
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    assert buf.getvalue().startswith(b"\x89PNG")


@pytest.fixture(scope="module")
def searched_run(capacity_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic capacity run with a search.json and timeslices for its int8 ×1 points."""
    path = tmp_path_factory.mktemp("runs") / "searched"
    shutil.copytree(capacity_run, path)
    rd = RunDir(path)
    pts = rd.points()
    ids = pts[pts[Point.CONFIG_ID] == synth.INT8_X1_KEY][Point.POINT_ID].tolist()
    for pid in ids:
        rd.write_timeslices(pid, slices(pid, 0.0, "", [10.0, 11.0]).to_dict("records"))
    bounds = Bounds(1.0, 16.0, 0.05, 6)
    probes = [Probe(4.0, True, 0.6, ids[0]), Probe(6.0, False, 1.5, ids[1], "fails TTFT p95")]
    found = bracket(probes, bounds)
    rd.write_search(
        {
            synth.INT8_X1_KEY: {
                "bracket": found.to_json(),
                "describe": found.describe(),
                "probes": [p.__dict__ for p in probes],
            }
        }
    )
    return path


def test_report_states_and_shades_the_search_bracket(searched_run: Path) -> None:
    analysis = analyze(load_run(searched_run), n_resamples=0)
    assert search_spans(analysis) == {synth.INT8_X1: (4.0, 6.0)}
    (text,) = search_paragraphs(analysis)
    assert "holds at 4 req/s and fails at 6 req/s (50.0% apart, 2 points)" in text
    assert "point budget" not in text  # 2 of 6 points: still searching, not out of budget
    assert "6 req/s (fails: fails TTFT p95, achieved " in text
    assert "goodput " in text
    fig = plots.latency_vs_throughput(
        analysis.levels, analysis.slo, brackets=search_spans(analysis)
    )
    spans = [p for ax in fig.axes for p in ax.patches if abs(p.get_x() - 4.0) < 1e-9]
    assert len(spans) == 6  # every panel
    goodput = next(ax for ax in fig.axes if ax.get_title().startswith("Goodput"))
    curves = [ln for ln in goodput.get_lines() if ln.get_label() == "goodput"]
    assert len(curves) == analysis.levels[Rpt.CONFIG].nunique()


def test_goodput_is_recomputed_per_point_and_level(searched_run: Path) -> None:
    analysis = analyze(load_run(searched_run), n_resamples=0)
    pts = analysis.points
    g = pd.to_numeric(pts[Point.GOODPUT_RPS])
    assert g.notna().all()
    assert (g <= pd.to_numeric(pts[Point.ACHIEVED_RPS]) + 1e-9).all()
    assert analysis.levels[Point.GOODPUT_RPS].notna().all()


def test_one_timeslice_figure_per_configuration_with_slices(searched_run: Path) -> None:
    analysis = analyze(load_run(searched_run), n_resamples=0)
    frames = timeslice_frames(analysis.run, analysis.points)
    assert list(frames) == [synth.INT8_X1]
    keys = [f.key for f in measured_figures(analysis, None)]
    assert [k for k in keys if k.startswith("timeslices")] == ["timeslices_0"]
