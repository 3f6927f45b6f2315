"""The whole pipeline: every point in the summary CSV, and a report even without valid points."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from loadgen.results import Point
from reports.pipeline import build_report
from tests.unit.reports import synth
from tests.unit.reports.conftest import CliReport


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


def test_a_run_without_valid_points_still_reports_why(tmp_path: Path) -> None:
    # 10 requests per point, under min_samples = 20: every point is invalid.
    pts = [synth.SynthPoint("c1", r, 0.5, 0.1) for r in (1.0, 2.0, 3.0)]
    run = synth.write_run(tmp_path / "thin", pts, name="thin")
    files = build_report(run, output=tmp_path / "out")
    assert files.recommendation.best is None
    assert list(files.recommendation.infeasible) == [synth.INT8_BASE_ID]
    assert "no valid points" in files.recommendation.infeasible[synth.INT8_BASE_ID]
    assert files.recommendation.base_labels[synth.INT8_BASE_ID] == "int8 b8 d5ms w1 t1"
    html = files.html.read_text()
    assert html.count("INVALID: too few samples: 10 successful requests &lt; 20") == 3
    assert "Not fitted" in html  # the model says why it is absent
    assert pd.read_csv(files.summary_csv)[Point.VALID].sum() == 0
