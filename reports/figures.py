"""The report's figures: which plots it draws, with their titles and captions, as PNG.

:mod:`reports.plots` draws each figure from a data frame; this module picks the frames (the
analysis' levels, the capacity model's frames) and says what every figure shows.
"""

from __future__ import annotations

from typing import Final

import pandas as pd

from loadgen.results import Point
from reports import plots
from reports.analysis import Analysis, is_stage
from reports.capacity import CapacityModel, Holdout, prediction_frame, scaling_frame
from reports.document import FigureSpec, figure
from reports.quality import QUALITY_BASIS
from reports.recommend import Recommendation
from reports.search import search_spans
from reports.timeslices import timeslice_frames

__all__ = [
    "MAX_MODEL_CONFIGS",
    "MAX_MODEL_REPLICAS",
    "MODEL_RATE_STEPS",
    "measured_figures",
    "model_figures",
    "quality_figures",
]

MAX_MODEL_CONFIGS: Final = 2
"""Base configurations drawn in the model's prediction figure (the recommended one first)."""
MAX_MODEL_REPLICAS: Final = 3
"""Replica counts per configuration in the model's predictions (figure and target table)."""
MODEL_RATE_STEPS: Final = 6
"""Offered rates per predicted curve, from 15% to 105% of its full-batch throughput."""


def _latency_figures(analysis: Analysis) -> list[FigureSpec]:
    lv, slo = analysis.levels, analysis.slo
    invalid = analysis.points[~analysis.points[Point.VALID]]
    spans = search_spans(analysis)
    searched = (
        " Shaded: the bracket the SLO-edge search found (passing to failing offered rate)."
        if spans
        else ""
    )
    return [
        figure(
            "latency_vs_rps",
            "Latency vs requests/s",
            "TTFT p50/p95/p99, ITL p95 and end-to-end p95 against achieved requests/s, one "
            "curve per configuration; dashed lines are the SLO limits, bars the 95% bootstrap "
            "intervals, grey crosses invalid points (excluded). Goodput: requests/s that met "
            "every per-request SLO term, beside the achieved throughput (dotted)." + searched,
            plots.latency_vs_throughput(
                lv, slo, x=Point.ACHIEVED_RPS, invalid=invalid, brackets=spans
            ),
        ),
        figure(
            "latency_vs_tokens",
            "Latency vs output tokens/s",
            "The same percentiles and goodput against output tokens/s.",
            plots.latency_vs_throughput(lv, slo, x=Point.OUTPUT_TOKENS_PER_S, invalid=invalid),
        ),
    ]


def _timeslice_figures(analysis: Analysis) -> list[FigureSpec]:
    frames = timeslice_frames(analysis.run, analysis.points)
    return [
        figure(
            f"timeslices_{i}",
            f"Timeslices: {label}",
            f"Every {analysis.run.spec.run.timeslice_s:g} s of each point's measured window: "
            "output tokens/s, TTFT p95 (requests whose first token came in the slice), "
            "measured requests in flight, and the server's requests waiting (summed over "
            "replicas); one line per load level. A line still rising or falling at the end "
            "drifted; one that starts off its level was not yet warm.",
            plots.timeslice_figure(frame, label),
        )
        for i, (label, frame) in enumerate(frames.items())
    ]


def _stage_figures(analysis: Analysis) -> list[FigureSpec]:
    stages = analysis.points[is_stage(analysis.points)]
    if stages.empty:
        return []
    return [
        figure(
            "stages",
            "Stage profile",
            "Each stage of the [load] stages profile over its own window, in time order: "
            "achieved requests/s (solid) against the offered rate (dotted, open loop), and "
            "TTFT p95. Stages run back to back, so a stage carries the queue the one before "
            "left: read them as a timeline, not as steady load levels.",
            plots.stage_timeline(stages),
        )
    ]


def _throughput_figures(analysis: Analysis, model: CapacityModel | None) -> list[FigureSpec]:
    lv = analysis.levels
    return [
        figure(
            "throughput_vs_load",
            "Throughput vs load",
            "Achieved requests/s and output tokens/s against concurrency or offered rate; a "
            "curve bending away from the offered line is saturating.",
            plots.throughput_vs_load(lv),
        ),
        figure(
            "pareto",
            "Pareto frontier",
            "Per-user output tokens/s against total output tokens/s across configurations; the "
            "frontier holds the points no other point beats on both.",
            plots.pareto_frontier(lv),
        ),
        figure(
            "scaling",
            "Replica scaling efficiency",
            "throughput(N) / (N × throughput(1)) per base configuration, from peak measured "
            "throughput, SLO capacity and the capacity model; 1.0 is perfect scaling.",
            plots.scaling_efficiency(scaling_frame(analysis, model)),
        ),
    ]


def _server_figures(analysis: Analysis) -> list[FigureSpec]:
    lv = analysis.levels
    figs = [
        figure(
            "batching",
            "Batch size and fill",
            "Mean batch size and batch fill (server metrics) per load level, beside the client's "
            "TTFT p95.",
            plots.batching(lv),
        ),
        figure(
            "ttft_decomposition",
            "TTFT decomposition",
            "Batch formation delay, the rest of the queue wait and prefill (server means) against "
            "the server's and the client's TTFT means; the gap is network, HTTP and streaming.",
            plots.ttft_decomposition(lv),
        ),
    ]
    if len(lv) and lv[Point.QUANTIZATION].nunique() > 1:
        figs.append(
            figure(
                "quantization",
                "Quantization comparison",
                "Peak throughput, GPU memory in use and TTFT p95 at the lowest load per "
                "quantization (smallest replica count).",
                plots.quantization_comparison(lv, analysis.capacity_table()),
            )
        )
    return figs


def measured_figures(analysis: Analysis, model: CapacityModel | None) -> list[FigureSpec]:
    """The stage timeline (stage profiles), latency and goodput against throughput, throughput
    against load, Pareto frontier, replica scaling, batching, TTFT decomposition, quantization
    (when the run varies it) and timeslices per configuration (when the run has them).

    Args:
        analysis: The run's analysis.
        model: The fitted model (its full-batch throughput joins the scaling figure), or
            ``None``.

    Returns:
        The figures, in reading order.
    """
    return [
        *_stage_figures(analysis),
        *_latency_figures(analysis),
        *_throughput_figures(analysis, model),
        *_server_figures(analysis),
        *_timeslice_figures(analysis),
    ]


def model_figures(
    analysis: Analysis, model: CapacityModel, holdout: Holdout | None, rec: Recommendation
) -> list[FigureSpec]:
    """The model against held-out measurements, and its predictions per replica count.

    Args:
        analysis: The run's analysis (measured open-loop levels are drawn as dots).
        model: The fitted model.
        holdout: Its hold-out error, or ``None`` (no hold-out figure).
        rec: The recommendation, whose configuration and replica count are drawn first.

    Returns:
        The figures.
    """
    figs = []
    if holdout is not None:
        figs.append(
            figure(
                "model_holdout",
                "Model vs held-out measurements",
                "Predicted against measured throughput and TTFT p95 on points left out of the "
                "fit; on the dashed line the prediction is exact.",
                plots.model_holdout(holdout.table),
            )
        )
    best = (rec.best.base_config_id, rec.best.replicas) if rec.best is not None else None
    pred = prediction_frame(
        model,
        analysis.points[Point.REPLICAS],
        best,
        max_configs=MAX_MODEL_CONFIGS,
        max_replicas=MAX_MODEL_REPLICAS,
        rate_steps=MODEL_RATE_STEPS,
    )
    figs.append(
        figure(
            "model_predictions",
            "Model predictions per replica count",
            "Predicted TTFT p95 and throughput against offered Poisson rate for measured and "
            "unmeasured replica counts; dots are measured open-loop levels.",
            plots.model_predictions(pred, analysis.levels, analysis.slo),
        )
    )
    return figs


def quality_figures(table: pd.DataFrame, agreement_tokens: int) -> list[FigureSpec]:
    """The speed-quality frontier of :func:`reports.quality.quality_table`.

    Args:
        table: One row per swept quantization, with capacity and quality.
        agreement_tokens: N of the greedy agreement.

    Returns:
        One figure.
    """
    return [
        figure(
            "speed_quality",
            "Speed vs quality",
            "SLO capacity against perplexity increase over the reference build, one point per "
            "quantization; squares joined by the line are the Pareto frontier (no other "
            "quantization has at least their capacity at no more perplexity increase); a "
            "triangle is a lower bound (the SLO held at every level measured). Right: "
            f"greedy agreement with the reference and task accuracy. {QUALITY_BASIS}",
            plots.speed_quality(table, agreement_tokens),
        )
    ]
