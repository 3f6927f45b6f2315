"""The written report: figures, tables, recommendation, summary CSV, environment, Markdown."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from loadgen.results import Point
from reports.render import build_report
from tests.unit.reports import synth
from tests.unit.reports.conftest import CliReport

FIGURES = {
    "latency_vs_rps",
    "latency_vs_tokens",
    "throughput_vs_load",
    "pareto",
    "scaling",
    "batching",
    "ttft_decomposition",
    "quantization",  # the run varies int8 / float16
    "model_holdout",
    "model_predictions",
}


def test_html_is_self_contained_with_every_figure(capacity_report: CliReport) -> None:
    html = capacity_report.html.read_text()
    images = re.findall(r'<img alt="[^"]+" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(FIGURES)
    assert all(len(b) > 10_000 for b in images)
    assert set(re.findall(r'<figure id="fig-([a-z_]+)"', html)) == FIGURES
    assert "http://" not in html.replace("http://127.0.0.1", "")  # nothing fetched online
    assert set(capacity_report.figures) == FIGURES
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in capacity_report.figures.values())


def test_html_states_the_recommendation_and_capacity(capacity_report: CliReport) -> None:
    html = capacity_report.html.read_text()
    headline = re.search(r'<p id="headline" class="headline">(.*?)</p>', html, re.S)
    assert headline is not None
    # --target-rps 10 (the spec says 9): 11.4 req/s of int8 ×2 leaves 14% headroom.
    assert "Run 2 replicas of int8 b8 d5ms w1 t1 for 10 req/s" in headline.group(1)
    assert "headroom +14%" in headline.group(1)
    assert "Target load: 10 req/s (from --target-rps)" in html
    # The SLO crossings, interpolated, with the binding metric and the neighbours named.
    assert re.search(r"5 req/s \[95% CI 4\.9\d–5\.\d+\] \(TTFT p95 binds between 4 and 6\)", html)
    assert re.search(r"5\.44 req/s \[95% CI [\d.–]+\] \(TTFT p95 binds between 5 and 6\)", html)
    assert re.search(r"11\.4 req/s \[95% CI [\d.–]+\] \(TTFT p95 binds between 10 and 12\)", html)
    assert "4 req/s (64 tok/s) at load 4, TTFT p95 0.12 s" in html  # the knee
    assert "Kneedle" in html and "Linear interpolation" in html
    assert "INVALID: schedule lag p95 500 ms &gt; 50 ms" in html
    assert "0.12 [" in html  # a p95 with its bootstrap interval


def test_model_section_states_assumptions_and_error(capacity_report: CliReport) -> None:
    html = capacity_report.html.read_text()
    assert "Fitted batch service times" in html
    assert "Prediction error on held-out measured points" in html
    assert "cross-replica" in html
    # The mechanisms the model rests on are stated.
    assert "forces the longer prompts" in html  # CTranslate2's static batches
    assert "races the batch" in html  # closed-loop desynchronisation
    assert "demand / cores" in html  # CPU contention
    assert "last request catches next batch" in html  # fitted race probability
    assert "Predictions at the target load (10 req/s, Poisson)" in html


def test_environment_block(capacity_report: CliReport) -> None:
    html = capacity_report.html.read_text()
    assert "synth-host" in html and "Synthetic CPU" in html
    assert "Synthetic GPU" in html
    assert "package: ctranslate2" in html
    assert "synthetic-model" in html  # model manifest
    assert "target_rps = 9.0" in html  # the spec itself
    assert "Machine and versions" in html


def test_summary_csv_has_every_point_with_computed_values(capacity_report: CliReport) -> None:
    summary = pd.read_csv(capacity_report.summary_csv)
    assert len(summary) == len(synth.capacity_points())
    by_id = summary.set_index(Point.POINT_ID)
    assert by_id.loc[3, Point.TTFT_P95_S] == pytest.approx(0.12)
    assert by_id.loc[4, Point.TTFT_P95_S] == pytest.approx(0.60)
    lagging = by_id.loc[6]
    assert not lagging[Point.VALID]
    assert "schedule lag" in lagging[Point.INVALID_REASON]
    assert summary[Point.VALID].sum() == len(summary) - 1


def test_markdown_links_existing_figures(capacity_report: CliReport) -> None:
    md = capacity_report.markdown.read_text()
    links = re.findall(r"!\[[^\]]+\]\((figures/[a-z_]+\.png)\)", md)
    assert len(links) == len(FIGURES)
    assert all((capacity_report.output / link).exists() for link in links)
    assert "**Run 2 replicas of int8 b8 d5ms w1 t1" in md
    assert "## Comparison: capacity against faster" in md
    assert "| configuration | valid points | knee |" in md


def test_a_run_without_valid_points_still_reports_why(tmp_path: Path) -> None:
    # 10 requests per point, under min_samples = 20: every point is invalid.
    pts = [synth.SynthPoint("c1", r, 0.5, 0.1) for r in (1.0, 2.0, 3.0)]
    run = synth.write_run(tmp_path / "thin", pts, name="thin")
    files = build_report(run, output=tmp_path / "out")
    assert files.recommendation.best is None
    assert list(files.recommendation.infeasible) == ["int8 b8 d5ms w1 t1"]
    assert "no valid points" in files.recommendation.infeasible["int8 b8 d5ms w1 t1"]
    html = files.html.read_text()
    assert html.count("INVALID: too few samples: 10 successful requests &lt; 20") == 3
    assert "Not fitted" in html  # the model says why it is absent
    assert pd.read_csv(files.summary_csv)[Point.VALID].sum() == 0
