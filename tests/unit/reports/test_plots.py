"""Figures are pure: frame in, Figure out, showing the data they were given."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from loadgen.results import Point
from loadgen.spec import SLOSpec
from reports import plots
from reports.analysis import Analysis
from reports.load import Rpt
from tests.unit.reports import synth


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


def test_latency_figure_has_one_curve_per_config_and_the_slo(
    capacity_analysis: Analysis,
) -> None:
    lv = capacity_analysis.levels
    pts = capacity_analysis.points
    fig = plots.latency_vs_throughput(lv, capacity_analysis.slo, invalid=pts[~pts[Point.VALID]])
    assert fig.canvas.manager is None  # not a pyplot figure
    axes = {ax.get_title(): ax for ax in fig.axes}
    p95 = axes["TTFT p95"]
    curves = [ln for ln in p95.get_lines() if ln.get_label() in set(lv[Rpt.CONFIG])]
    assert len(curves) == 3
    knee_curve = next(ln for ln in curves if ln.get_label() == synth.INT8_X1)
    assert np.asarray(knee_curve.get_ydata(), dtype=float).tolist() == pytest.approx(
        synth.KNEE_TTFT
    )
    slo_lines = [ln for ln in p95.get_lines() if ln.get_label() == "SLO limit"]
    assert len(slo_lines) == 1 and np.asarray(slo_lines[0].get_ydata(), dtype=float).tolist() == [
        1.0,
        1.0,
    ]
    # The E2E limit (30 s) is far above the data: named in the title, not drawn.
    e2e = axes["E2E p95 (SLO 30 s, off scale)"]
    assert not [ln for ln in e2e.get_lines() if ln.get_label() == "SLO limit"]
    assert _png(fig).startswith(b"\x89PNG")


def test_scaling_efficiency_values() -> None:
    frame = pd.DataFrame(
        {
            Rpt.BASE_CONFIG: [Rpt.A, Rpt.A, Rpt.A],
            Point.REPLICAS: [1, 2, 4],
            Rpt.PEAK_RPS: [10.0, 18.0, 30.0],
            Rpt.CAPACITY_RPS: [np.nan, np.nan, np.nan],
        }
    )
    fig = plots.scaling_efficiency(frame)
    (ax,) = fig.axes
    peak = next(ln for ln in ax.get_lines() if ln.get_label() == "a: peak throughput")
    assert np.asarray(peak.get_ydata(), dtype=float).tolist() == pytest.approx([1.0, 0.9, 0.75])


def test_pareto_frontier_keeps_only_undominated_points() -> None:
    x = np.array([10.0, 20.0, 30.0, 25.0, 5.0])
    y = np.array([50.0, 40.0, 10.0, 5.0, 45.0])
    assert list(plots._frontier(x, y)) == [0, 1, 2]


def test_quantization_figure_only_compares_what_varied(capacity_analysis: Analysis) -> None:
    lv = capacity_analysis.levels
    fig = plots.quantization_comparison(lv, capacity_analysis.capacity_table())
    bars = [p.get_height() for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    # peak (float16 8, int8 6) then SLO capacity (float16 5, int8 5.44).
    assert bars == pytest.approx([8.0, 6.0, 5.0, synth.INT8_X1_CAPACITY_RPS])
    one = plots.quantization_comparison(lv[lv[Point.QUANTIZATION] == "int8"])
    assert any("did not vary" in t.get_text() for t in one.axes[0].texts)


@pytest.mark.parametrize(
    "make",
    [
        lambda e: plots.latency_vs_throughput(e, SLOSpec(max_error_rate=None)),
        plots.throughput_vs_load,
        plots.pareto_frontier,
        plots.batching,
        plots.ttft_decomposition,
        plots.quantization_comparison,
        plots.scaling_efficiency,
        plots.model_holdout,
        lambda e: plots.model_predictions(e, e, SLOSpec(max_error_rate=None)),
    ],
)
def test_every_figure_survives_empty_input(make: Callable[[pd.DataFrame], Figure]) -> None:
    fig = make(pd.DataFrame())
    assert isinstance(fig, Figure)
    assert _png(fig).startswith(b"\x89PNG")


def test_ttft_decomposition_bars_stack_server_parts(capacity_analysis: Analysis) -> None:
    lv = capacity_analysis.levels
    fig = plots.ttft_decomposition(lv)
    (ax,) = fig.axes
    assert len(ax.get_yticklabels()) == len(lv)
    assert len(ax.patches) == 3 * len(lv)  # formation, rest of queue, prefill per level
