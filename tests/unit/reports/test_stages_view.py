"""Stage profiles in the report: stages stay apart, read in time order, and stay out of the
knee, the SLO capacity and the capacity model (each meets the queue the one before left)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from loadgen.results import POINTS_FILE, Point
from reports import plots
from reports.analysis import STAGE_NOTE, analyze
from reports.capacity.fit_run import fit_analysis
from reports.figures import measured_figures
from reports.load import Rpt, load_run
from reports.sections import points_section
from tests.unit.reports import synth

# (offered req/s, TTFT p95 s): steady, a spike, then the recovery back at the first level.
STAGES = [(4.0, 0.10), (8.0, 2.00), (4.0, 0.60)]


def write_stage_run(path: Path) -> Path:
    """Three back-to-back stages of one configuration; stages 0 and 2 share a level."""
    pts = [
        synth.SynthPoint(synth.INT8_X1_KEY, rate, achieved_rps=rate, ttft_p95_s=ttft)
        for rate, ttft in STAGES
    ]
    synth.write_run(path, pts, name="stages")
    frame = pd.read_csv(path / POINTS_FILE)
    frame[Point.STAGE] = range(len(STAGES))
    frame[Point.STAGE_LEVEL_FROM] = [r for r, _ in STAGES]
    frame[Point.STAGE_LEVEL_TO] = [r for r, _ in STAGES]
    frame[Point.STARTED_AT] = synth.T0 + synth.DURATION_S * np.arange(len(STAGES))
    frame.to_csv(path / POINTS_FILE, index=False)
    return path


def test_stages_at_one_level_stay_apart_and_out_of_knee_capacity_and_model(
    tmp_path: Path,
) -> None:
    analysis = analyze(load_run(write_stage_run(tmp_path / "run")), n_resamples=50)
    lv = analysis.levels.sort_values(Point.STAGE)
    # Three levels, not two: the recovery at 4 req/s is not a repeat of the first stage.
    assert lv[Point.STAGE].tolist() == [0, 1, 2]
    assert lv[Rpt.N_POINTS].tolist() == [1, 1, 1]
    assert np.allclose(lv[Point.TTFT_P95_S], [t for _, t in STAGES], atol=1e-6)
    (key,) = analysis.knees
    assert not analysis.knees[key].found and analysis.knees[key].note == STAGE_NOTE
    assert analysis.capacity[key].status == "no_data"
    assert analysis.capacity[key].describe() == STAGE_NOTE
    model = fit_analysis(analysis)
    assert model.services == {} and model.points.empty


def test_points_table_lists_stages_in_time_order_with_their_label(tmp_path: Path) -> None:
    analysis = analyze(load_run(write_stage_run(tmp_path / "run")), n_resamples=50)
    table = points_section(analysis).tables[0]
    loads = [row[2] for row in table.rows]
    assert loads == [
        "stage 0: open loop, constant 4 req/s",
        "stage 1: open loop, constant 8 req/s",
        "stage 2: open loop, constant 4 req/s",
    ]
    keys = [f.key for f in measured_figures(analysis, None)]
    assert "stages" in keys


def test_stage_timeline_draws_each_stage_over_its_window(tmp_path: Path) -> None:
    analysis = analyze(load_run(write_stage_run(tmp_path / "run")), n_resamples=50)
    fig = plots.stage_timeline(analysis.points)
    ax_load, ax_ttft = fig.axes[:2]
    # Per stage: offered (dotted) and achieved on the left, TTFT p95 on the right.
    assert len(ax_load.get_lines()) == 2 * len(STAGES)
    ttft = [(tuple(ln.get_xdata()), tuple(ln.get_ydata())) for ln in ax_ttft.get_lines()]
    d = synth.DURATION_S
    assert [x for x, _ in ttft] == [(0.0, d), (d, 2 * d), (2 * d, 3 * d)]
    assert np.allclose([y[0] for _, y in ttft], [t for _, t in STAGES], atol=1e-6)
    empty = plots.stage_timeline(analysis.points.iloc[0:0])
    assert "no stage points" in empty.axes[0].texts[0].get_text()
