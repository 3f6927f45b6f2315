"""Build the capacity report: self-contained HTML, Markdown with PNG figures, a summary CSV.

:func:`build_report` runs the whole pipeline (load, analyse, fit the capacity model, recommend,
optionally compare against a baseline run, draw the figures) and writes::

    OUTPUT/
      report.html        images embedded as data URIs: one file, readable offline
      report.md          the same content, figures linked from figures/
      summary.csv        every point with its recomputed statistics, validity and SLO verdict
      figures/*.png
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import jinja2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from loadgen.results import Point
from reports import plots
from reports.analysis import (
    CAPACITY_INTERPOLATION,
    KNEE_METHOD,
    Analysis,
    analyze,
)
from reports.compare import Comparison, compare
from reports.load import Rpt, load_run
from reports.model import CapacityModel, Holdout, fit_analysis
from reports.recommend import Recommendation, recommend

__all__ = [
    "FigureSpec",
    "ReportFiles",
    "Table",
    "build_report",
    "render_html",
    "render_markdown",
]

HTML_FILE: Final = "report.html"
MARKDOWN_FILE: Final = "report.md"
SUMMARY_FILE: Final = "summary.csv"
FIGURES_DIR: Final = "figures"
FIGURE_DPI: Final = 100
_MAX_MODEL_CONFIGS: Final = 2
_MAX_MODEL_REPLICAS: Final = 3
_MODEL_RATE_STEPS: Final = 6


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report.

    Attributes:
        key: File stem (``figures/<key>.png``) and HTML id.
        title: Heading.
        caption: What the figure shows and how to read it.
        png: The rendered image.
    """

    key: str
    title: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class Table:
    """A table both renderers can draw.

    Attributes:
        title: Heading.
        headers: Column headings.
        rows: Cells, already formatted.
        note: Text shown under the table.
        key: HTML id.
    """

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    key: str = ""


@dataclass(frozen=True)
class Section:
    """A titled part of the report: paragraphs, bullet lists, tables, figures, code blocks."""

    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureSpec] = field(default_factory=list)
    code: list[tuple[str, str]] = field(default_factory=list)  # (caption, text)


@dataclass(frozen=True)
class ReportFiles:
    """Where the report went.

    Attributes:
        output: The output directory.
        html: Self-contained HTML report.
        markdown: Markdown report.
        summary_csv: Per-point summary.
        figures: PNG per figure key.
        recommendation: The recommendation shown at the top.
        analysis: The analysis of the (primary) run.
        comparison: The comparison, when a baseline was given.
    """

    output: Path
    html: Path
    markdown: Path
    summary_csv: Path
    figures: dict[str, Path]
    recommendation: Recommendation
    analysis: Analysis
    comparison: Comparison | None = None


# ------------------------------------------------------------------------------ formatting


def _f(value: Any, digits: int = 3, unit: str = "") -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(v):
        return "–"
    return f"{v:.{digits}g}{unit}"


def _pct(value: Any, signed: bool = False) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(v):
        return "–"
    return f"{v:+.1%}" if signed else f"{v:.1%}"


def _ci(row: pd.Series, col: str, lo: str, hi: str, n: str) -> str:
    v = _f(row.get(col))
    if v == "–":
        return v
    lo_s, hi_s = _f(row.get(lo)), _f(row.get(hi))
    count = row.get(n)
    count_s = f" n={int(count)}" if count is not None and np.isfinite(float(count)) else ""
    return f"{v} [{lo_s}, {hi_s}]{count_s}" if lo_s != "–" else f"{v}{count_s}"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI)
    return buf.getvalue()


# ------------------------------------------------------------------------------ tables


def _capacity_table(analysis: Analysis) -> Table:
    rows = []
    for _, r in analysis.capacity_table().iterrows():
        cap = analysis.capacity[str(r[Rpt.CONFIG])]
        knee = (
            f"{_f(r['knee_rps'])} req/s ({_f(r['knee_output_tokens_per_s'])} tok/s) at load "
            f"{_f(r['knee_load_level'])}, TTFT p95 {_f(r['knee_ttft_p95_s'])} s"
            if r[Rpt.KNEE_FOUND]
            else f"none: {r['knee_note']}"
        )
        conc_kind = "users" if r[Point.LOAD_MODE] == "concurrency" else "in flight (Little)"
        rows.append(
            [
                str(r[Rpt.CONFIG]),
                f"{r['valid_points']}/{r['points']}",
                knee,
                cap.describe(),
                _f(r[Rpt.CAPACITY_OUTPUT_TOKENS_PER_S]),
                _f(r[Rpt.CAPACITY_LOAD_LEVEL]),
                f"{_f(r['capacity_concurrency'])} {conc_kind}"
                if math.isfinite(float(r[Rpt.CAPACITY_CONCURRENCY]))
                else "–",
                _pct(r[Point.ERROR_RATE]),
                _f(r[Rpt.PEAK_RPS]),
                cap.note or "",
            ]
        )
    return Table(
        "Capacity per configuration",
        [
            "configuration",
            "valid points",
            "knee",
            "max sustainable rate under SLO",
            "tok/s at that rate",
            "load level",
            "concurrency",
            "error rate (all points)",
            "peak req/s",
            "note",
        ],
        rows,
        note=f"SLO: {analysis.slo.describe()}. Knee: {KNEE_METHOD} "
        f"Capacity: {CAPACITY_INTERPOLATION} Invalid points are excluded.",
        key="capacity-table",
    )


def _points_table(analysis: Analysis) -> Table:
    rows = []
    pts = analysis.points.sort_values([Rpt.CONFIG, Point.LOAD_LEVEL, Point.POINT_ID])
    for _, r in pts.iterrows():
        validity = "valid" if r[Point.VALID] else f"INVALID: {r[Point.INVALID_REASON]}"
        slo = (
            "meets"
            if r[Rpt.SLO_PASS]
            else f"fails: {r[Rpt.SLO_FAIL]}"
            if r[Point.VALID]
            else "(excluded)"
        )
        rows.append(
            [
                str(int(r[Point.POINT_ID])),
                str(r[Rpt.CONFIG]),
                f"{r[Point.LOAD_MODE]} {_f(r[Point.LOAD_LEVEL])}",
                validity,
                f"{_f(r[Point.N_OK], 6)}/{_f(r[Point.N_REQUESTS], 6)}",
                _pct(r[Point.ERROR_RATE]),
                _f(r[Point.ACHIEVED_RPS]),
                _f(r[Point.OUTPUT_TOKENS_PER_S]),
                _f(r[Point.TTFT_P50_S]),
                _ci(r, Point.TTFT_P95_S, Rpt.TTFT_P95_LO, Rpt.TTFT_P95_HI, Rpt.N_TTFT),
                _f(r[Point.TTFT_P99_S]),
                _ci(r, Point.ITL_P95_S, Rpt.ITL_P95_LO, Rpt.ITL_P95_HI, Rpt.N_ITL),
                _ci(r, Point.TPOT_P95_S, Rpt.TPOT_P95_LO, Rpt.TPOT_P95_HI, Rpt.N_TPOT),
                _ci(r, Point.E2E_P95_S, Rpt.E2E_P95_LO, Rpt.E2E_P95_HI, Rpt.N_E2E),
                _f(r[Point.LAG_P95_S]),
                slo,
            ]
        )
    return Table(
        "Every point",
        [
            "id",
            "configuration",
            "load",
            "validity",
            "ok/requests",
            "errors",
            "req/s",
            "out tok/s",
            "TTFT p50 s",
            "TTFT p95 s [95% CI] n",
            "TTFT p99 s",
            "ITL p95 s [95% CI] n",
            "TPOT p95 s [95% CI] n",
            "E2E p95 s [95% CI] n",
            "lag p95 s",
            "SLO",
        ],
        rows,
        note="Percentiles are exact over every successful request of the point (numpy linear "
        "interpolation); brackets hold a 95% percentile-bootstrap interval (1000 seeded "
        "resamples) and n the samples behind it. Invalid points stay listed with the reason "
        "and are left out of every capacity figure.",
        key="points-table",
    )


def _recommendation_section(rec: Recommendation, holdout: Holdout | None) -> Section:
    tables = []
    if rec.options:
        tables.append(
            Table(
                "Smallest deployment per configuration",
                [
                    "configuration",
                    "replicas",
                    "capacity req/s",
                    "headroom",
                    "evidence",
                    "CPU threads",
                    "note",
                ],
                [
                    [
                        o.base_config,
                        str(o.replicas),
                        _f(o.capacity_rps),
                        _pct(o.headroom, signed=True),
                        o.source,
                        str(o.cpu_threads),
                        o.note,
                    ]
                    for o in rec.options
                ],
                note="Ranked by replicas, then CPU threads (replicas × batch workers × intra "
                "threads), then measured before modelled evidence, then headroom. Headroom = "
                "capacity / target − 1.",
                key="options-table",
            )
        )
    bullets = [f"{base}: {why}" for base, why in sorted(rec.infeasible.items())]
    target = (
        f"Target load: {rec.target_rps:g} req/s (from {rec.target_source})."
        if rec.target_rps is not None
        else ""
    )
    paragraphs = [target] if target else []
    best = rec.best
    if best is not None and best.source == "model":
        how_sure = (
            f"This replica count was not measured: it rests on the capacity model, whose "
            f"throughput error on held-out measured points is {_pct(holdout.throughput_mape)} "
            f"and TTFT p95 error {_pct(holdout.ttft_p95_mape)} (see Capacity model)."
            if holdout is not None and holdout.by_kind
            else "This replica count was not measured and the model could not be checked on "
            "held-out points: treat it as an estimate and measure it."
        )
        paragraphs.append(how_sure)
    elif best is not None and best.source.startswith("measured"):
        paragraphs.append(
            "Measured: the capacity is interpolated between sweep points (95% CI in the "
            "capacity table, from the bootstrap bounds of the percentiles)."
        )
    return Section(
        "recommendation",
        "Recommendation",
        paragraphs=paragraphs,
        bullets=bullets,
        tables=tables,
    )


def _model_section(
    model: CapacityModel | None,
    holdout: Holdout | None,
    rec: Recommendation,
    figures: list[FigureSpec],
    error: str,
) -> Section:
    if model is None:
        return Section("model", "Capacity model", paragraphs=[f"Not fitted: {error}"])
    params = [
        [
            st.base_config,
            f"{st.prefill_s[0] * 1e3:.3g} + {st.prefill_s[1] * 1e3:.3g}·b ms",
            f"{st.step_s[0] * 1e3:.3g} + {st.step_s[1] * 1e3:.3g}·a ms",
            f"{st.client_overhead_s * 1e3:.3g} ms",
            f"{st.catch_next_batch_p:.2f}",
            f"{st.cpu_per_worker:.2f}"
            + ("" if math.isfinite(st.worker_cpu_cores) else " (assumed)"),
            f"{st.batch_size_range[0]:.3g}–{st.batch_size_range[1]:.3g}",
            f"{st.fit_points} ({', '.join(str(r) for r in st.fit_replicas)})",
            f"{_pct(st.prefill_rel_rmse)} / {_pct(st.step_rel_rmse)}",
            f"{_f(model.max_throughput(st.base_config, 1))}",
            "; ".join(st.notes),
        ]
        for st in model.services.values()
    ]
    tables = [
        Table(
            "Fitted batch service times",
            [
                "configuration",
                "prefill per batch",
                "decode step (a: active sequences)",
                "client overhead",
                "last request catches next batch",
                "CPU cores per busy worker",
                "batch sizes seen",
                "points (replicas)",
                "rel. RMSE prefill / decode",
                "full-batch req/s per replica",
                "notes",
            ],
            params,
            key="model-params",
        )
    ]
    if holdout is not None and holdout.by_kind:
        tables.append(
            Table(
                "Prediction error on held-out measured points",
                ["check", "points", "throughput MAPE", "TTFT p95 MAPE"],
                [
                    [kind, str(n), _pct(thr), _pct(ttft)]
                    for kind, (thr, ttft, n) in sorted(holdout.by_kind.items())
                ]
                + [
                    [
                        "all",
                        str(len(holdout.table)),
                        _pct(holdout.throughput_mape),
                        _pct(holdout.ttft_p95_mape),
                    ]
                ],
                note="leave-one-out: refit without the point, predict it. cross-replica: fit on "
                "the smallest replica count only, predict the larger ones (how unmeasured "
                "replica counts are predicted). MAPE: mean absolute relative error.",
                key="holdout-table",
            )
        )
    if rec.target_rps is not None:
        rows = []
        for base in model.configs[: _MAX_MODEL_CONFIGS + 2]:
            for n in range(1, _MAX_MODEL_REPLICAS + 1):
                if model.max_throughput(base, n) < 0.5 * rec.target_rps:
                    rows.append([base, str(n), "–", "–", "–", "cannot carry the target"])
                    continue
                p = model.predict(base, n, rec.target_rps)
                rows.append(
                    [
                        base,
                        str(n),
                        _f(p.throughput_rps),
                        _f(p.ttft_p95_s),
                        _f(p.e2e_p95_s),
                        "meets SLO" if p.meets(rec.slo) else "misses SLO",
                    ]
                )
        tables.append(
            Table(
                f"Predictions at the target load ({rec.target_rps:g} req/s, Poisson)",
                ["configuration", "replicas", "req/s", "TTFT p95 s", "E2E p95 s", "verdict"],
                rows,
                key="predictions-table",
            )
        )
    bullets = list(model.assumptions)
    bullets += [f"{base}: not fitted ({why})" for base, why in sorted(model.unfitted.items())]
    host = (
        f"Host for contention: {model.device}"
        + (f", {model.cpu_cores} cores" if model.cpu_cores else ", core count unknown")
        + f"; balancing {model.balance}; window {model.window.warmup_s:g} s warm-up + "
        f"{model.window.duration_s:g} s."
    )
    return Section(
        "model",
        "Capacity model",
        paragraphs=[
            "A batch-service queue per replica, fitted from the server's batch metrics and "
            "replayed in a discrete-event simulation to predict replica counts and rates that "
            "were not measured. Assumptions:",
        ],
        bullets=[*bullets, host],
        tables=tables,
        figures=figures,
    )


def _comparison_section(cmp: Comparison) -> Section:
    reg = cmp.regressions
    tables = []

    def rows_of(df: pd.DataFrame) -> list[list[str]]:
        return [
            [
                str(r[Rpt.CONFIG]),
                f"{r[Point.LOAD_MODE]} {_f(r[Point.LOAD_LEVEL])}",
                str(r[Rpt.METRIC]),
                _f(r[Rpt.A], 4),
                _f(r[Rpt.B], 4),
                _pct(r[Rpt.CHANGE], signed=True),
                str(r[Rpt.EVIDENCE]),
                str(r[Rpt.FLAG]).upper() if r[Rpt.FLAG] else "",
            ]
            for _, r in df.iterrows()
        ]

    headers = ["configuration", "load", "metric", cmp.a_name, cmp.b_name, "change", "noise", "flag"]
    if len(reg):
        tables.append(Table("Regressions", headers, rows_of(reg), key="regressions-table"))
    if len(cmp.capacity):
        tables.append(
            Table(
                "SLO capacity, side by side",
                ["configuration", cmp.a_name, cmp.b_name, "change", "flag"],
                [
                    [
                        str(r[Rpt.CONFIG]),
                        f"{_f(r['a_capacity_rps'])} ({r['a_status']})",
                        f"{_f(r['b_capacity_rps'])} ({r['b_status']})",
                        _pct(r[Rpt.CHANGE], signed=True),
                        str(r[Rpt.FLAG]).upper(),
                    ]
                    for _, r in cmp.capacity.iterrows()
                ],
                note="Capacity has no noise estimate of its own; it is flagged on size alone.",
                key="capacity-compare",
            )
        )
    if len(cmp.table):
        tables.append(
            Table("Every matched level", headers, rows_of(cmp.table), key="compare-table")
        )
    n_reg = len(reg)
    n_imp = int((cmp.table[Rpt.FLAG] == "improvement").sum()) if len(cmp.table) else 0
    return Section(
        "comparison",
        f"Comparison: {cmp.b_name} against {cmp.a_name}",
        paragraphs=[
            f"{n_reg} regression{'s' if n_reg != 1 else ''} and {n_imp} improvement"
            f"{'s' if n_imp != 1 else ''} beyond noise. {cmp.method}",
        ],
        bullets=[f"unmatched: {u}" for u in cmp.unmatched],
        tables=tables,
    )


def _environment_section(analysis: Analysis) -> Section:
    env = analysis.run.environment
    machine = env.get("machine") or {}
    gpu = env.get("gpu") or {}
    rows = [
        ["run directory", str(analysis.run.path)],
        ["tokenbooth", str(env.get("tokenbooth_version", "unknown"))],
        ["started", str(env.get("started_at", "unknown"))],
        ["git revision", str(env.get("git_revision") or "unknown")],
    ]
    if isinstance(machine, dict):
        rows += [[f"machine: {k}", str(v)] for k, v in machine.items()]
    if isinstance(gpu, dict):
        rows.append(["GPU", "available" if gpu.get("available") else "none"])
        if gpu.get("detail"):
            rows.append(["GPU detail", str(gpu["detail"])])
        for d in gpu.get("devices") or []:
            rows.append([f"GPU {d.get('index', '?')}", json.dumps(d, default=str)])
    packages = env.get("packages") or {}
    if isinstance(packages, dict):
        rows += [[f"package: {k}", str(v)] for k, v in sorted(packages.items())]
    if not env:
        rows.append(["environment.json", "missing: the numbers cannot be tied to a machine"])
    manifest = env.get("model_manifest")
    code = [
        (
            "model manifest",
            json.dumps(manifest, indent=2, default=str)
            if manifest
            else "none recorded (remote target or fake engine)",
        ),
        ("spec.toml", analysis.run.spec.text.strip()),
    ]
    return Section(
        "environment",
        "Environment",
        paragraphs=["What the numbers were measured on."],
        tables=[Table("Machine and versions", ["item", "value"], rows, key="env-table")],
        code=code,
    )


def _methods_section() -> Section:
    return Section(
        "methods",
        "Methods",
        bullets=[
            "Latency percentiles are computed exactly from the raw per-request rows (numpy "
            "linear interpolation), never from rounded summaries; ITL uses every inter-token gap.",
            "Confidence intervals: 95% percentile bootstrap, 1000 resamples, fixed seed; the "
            "resampled order statistics are drawn from their Beta distributions, which is the "
            "same bootstrap distribution as resampling every request.",
            "A point is invalid when its status is not ok, it has fewer successful requests than "
            "the spec's min_samples, its open-loop p95 schedule lag exceeds lag_threshold_s, the "
            "load generator was the bottleneck, or the harness marked it invalid.",
            f"Knee: {KNEE_METHOD}",
            f"SLO capacity: {CAPACITY_INTERPOLATION}",
            "Throughput noise: batch-means standard error over ten equal windows of finish times.",
            "Client TTFT is measured from the actual send; for open-loop points the "
            "schedule-corrected TTFT p95 is in summary.csv (ttft_sched_p95_s).",
        ],
    )


# ------------------------------------------------------------------------------ figures


def _figure(key: str, title: str, caption: str, make: Callable[[], Figure]) -> FigureSpec:
    return FigureSpec(key, title, caption, _png(make()))


def _scaling_frame(analysis: Analysis, model: CapacityModel | None) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    lv = analysis.levels
    for config, cap in analysis.capacity.items():
        g = lv[lv[Rpt.CONFIG] == config] if len(lv) else lv
        pts = analysis.points[analysis.points[Rpt.CONFIG] == config]
        base = str(pts[Rpt.BASE_CONFIG].iloc[0])
        n = int(pts[Point.REPLICAS].iloc[0])
        model_rps = math.nan
        if model is not None and base in model.services:
            model_rps = model.max_throughput(base, n)
        rows.append(
            {
                Rpt.BASE_CONFIG: base,
                Point.REPLICAS: n,
                Rpt.PEAK_RPS: float(g[Point.ACHIEVED_RPS].max()) if len(g) else math.nan,
                Rpt.CAPACITY_RPS: cap.rate_rps if cap.usable else math.nan,
                Rpt.MODEL_RPS: model_rps,
            }
        )
    if model is not None and rows:
        # The model's view of replica counts nobody measured.
        top = max(int(r[Point.REPLICAS]) for r in rows) + 2
        for base in model.configs:
            for n in range(1, top + 1):
                rows.append(
                    {
                        Rpt.BASE_CONFIG: base,
                        Point.REPLICAS: n,
                        Rpt.PEAK_RPS: math.nan,
                        Rpt.CAPACITY_RPS: math.nan,
                        Rpt.MODEL_RPS: model.max_throughput(base, n),
                    }
                )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # Several load modes of one configuration: keep the best of each replica count.
    return frame.groupby([Rpt.BASE_CONFIG, Point.REPLICAS], as_index=False).max()


def _prediction_frame(
    model: CapacityModel, analysis: Analysis, rec: Recommendation
) -> pd.DataFrame:
    bases = list(model.configs)
    if rec.best is not None and rec.best.base_config in bases:
        bases.remove(rec.best.base_config)
        bases.insert(0, rec.best.base_config)
    bases = bases[:_MAX_MODEL_CONFIGS]
    measured_n = sorted({int(n) for n in analysis.points[Point.REPLICAS]})
    rows = []
    for base in bases:
        ns = sorted(set(measured_n) | {max(measured_n) + 1})
        if rec.best is not None and rec.best.base_config == base:
            ns = sorted(set(ns) | {rec.best.replicas})
        for n in ns[:_MAX_MODEL_REPLICAS]:
            top = model.max_throughput(base, n)
            if not math.isfinite(top) or top <= 0:
                continue
            for frac in np.linspace(0.15, 1.05, _MODEL_RATE_STEPS):
                rate = float(f"{top * frac:.3g}")
                p = model.predict(base, n, rate)
                rows.append(
                    {
                        Rpt.BASE_CONFIG: base,
                        Point.REPLICAS: n,
                        Rpt.RATE_RPS: rate,
                        Rpt.THROUGHPUT_RPS: p.throughput_rps,
                        Rpt.PRED_TTFT_P95_S: p.ttft_p95_s,
                    }
                )
    return pd.DataFrame(rows)


def _figures(
    analysis: Analysis,
    model: CapacityModel | None,
    holdout: Holdout | None,
    rec: Recommendation,
) -> tuple[list[FigureSpec], list[FigureSpec]]:
    """(analysis figures, model figures)."""
    lv = analysis.levels
    pts = analysis.points
    invalid = pts[~pts[Point.VALID]]
    slo = analysis.slo
    figs = [
        _figure(
            "latency_vs_rps",
            "Latency vs requests/s",
            "TTFT p50/p95/p99, ITL p95 and end-to-end p95 against achieved requests/s, one "
            "curve per configuration; dashed lines are the SLO limits, bars the 95% bootstrap "
            "intervals, grey crosses invalid points (excluded).",
            lambda: plots.latency_vs_throughput(lv, slo, x=Point.ACHIEVED_RPS, invalid=invalid),
        ),
        _figure(
            "latency_vs_tokens",
            "Latency vs output tokens/s",
            "The same percentiles against output tokens/s.",
            lambda: plots.latency_vs_throughput(
                lv, slo, x=Point.OUTPUT_TOKENS_PER_S, invalid=invalid
            ),
        ),
        _figure(
            "throughput_vs_load",
            "Throughput vs load",
            "Achieved requests/s and output tokens/s against concurrency or offered rate; a "
            "curve bending away from the offered line is saturating.",
            lambda: plots.throughput_vs_load(lv),
        ),
        _figure(
            "pareto",
            "Pareto frontier",
            "Per-user output tokens/s against total output tokens/s across configurations; the "
            "frontier holds the points no other point beats on both.",
            lambda: plots.pareto_frontier(lv),
        ),
        _figure(
            "scaling",
            "Replica scaling efficiency",
            "throughput(N) / (N × throughput(1)) per base configuration, from peak measured "
            "throughput, SLO capacity and the capacity model; 1.0 is perfect scaling.",
            lambda: plots.scaling_efficiency(_scaling_frame(analysis, model)),
        ),
        _figure(
            "batching",
            "Batch size and fill",
            "Mean batch size and batch fill (server metrics) per load level, beside the client's "
            "TTFT p95.",
            lambda: plots.batching(lv),
        ),
        _figure(
            "ttft_decomposition",
            "TTFT decomposition",
            "Batch formation delay, the rest of the queue wait and prefill (server means) against "
            "the server's and the client's TTFT means; the gap is network, HTTP and streaming.",
            lambda: plots.ttft_decomposition(lv),
        ),
    ]
    if len(lv) and lv[Point.QUANTIZATION].nunique() > 1:
        figs.append(
            _figure(
                "quantization",
                "Quantization comparison",
                "Peak throughput, GPU memory in use and TTFT p95 at the lowest load per "
                "quantization (smallest replica count).",
                lambda: plots.quantization_comparison(lv, analysis.capacity_table()),
            )
        )
    model_figs: list[FigureSpec] = []
    if model is not None and model.services:
        if holdout is not None:
            table = holdout.table
            model_figs.append(
                _figure(
                    "model_holdout",
                    "Model vs held-out measurements",
                    "Predicted against measured throughput and TTFT p95 on points left out of "
                    "the fit; on the dashed line the prediction is exact.",
                    lambda: plots.model_holdout(table),
                )
            )
        pred = _prediction_frame(model, analysis, rec)
        model_figs.append(
            _figure(
                "model_predictions",
                "Model predictions per replica count",
                "Predicted TTFT p95 and throughput against offered Poisson rate for measured and "
                "unmeasured replica counts; dots are measured open-loop levels.",
                lambda: plots.model_predictions(pred, lv, slo),
            )
        )
    return figs, model_figs


# ------------------------------------------------------------------------------ renderers

_CSS: Final = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d1d1f; background: #fafafa; }
main { max-width: 1240px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 1.6em; margin: 0.4em 0 0.1em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.6em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
.meta { color: #555; }
.headline { background: #eef6ee; border-left: 5px solid #2e7d32; padding: 12px 16px;
            font-size: 1.1em; }
.headline.none { background: #fdf0ef; border-left-color: #c62828; }
nav a { margin-right: 12px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12.5px; background: #fff; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; position: sticky; top: 0; }
tr.invalid td { color: #8a8a8a; background: #f6f6f6; }
tr.flag td { background: #fdecea; }
figure { margin: 18px 0; background: #fff; border: 1px solid #e2e2e2; padding: 8px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: #444; font-size: 13px; margin-top: 6px; }
pre { background: #f4f4f4; padding: 10px; overflow-x: auto; font-size: 12px; }
.note { color: #555; font-size: 12.5px; }
"""

_HTML: Final = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ css }}</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
<p class="meta">{{ subtitle }}</p>
<nav>{% for s in sections %}<a href="#{{ s.key }}">{{ s.title }}</a>{% endfor %}</nav>
<p id="headline" class="headline{{ '' if has_best else ' none' }}">{{ headline }}</p>
{% for s in sections %}
<section id="{{ s.key }}">
<h2>{{ s.title }}</h2>
{% for p in s.paragraphs %}<p>{{ p }}</p>{% endfor %}
{% if s.bullets %}<ul>{% for b in s.bullets %}<li>{{ b }}</li>{% endfor %}</ul>{% endif %}
{% for t in s.tables %}
<h3>{{ t.title }}</h3>
<div class="table-wrap"><table id="{{ t.key }}">
<thead><tr>{% for h in t.headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}<tr class="{{ row_class(row) }}">
{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div>
{% if t.note %}<p class="note">{{ t.note }}</p>{% endif %}
{% endfor %}
{% for f in s.figures %}
<figure id="fig-{{ f.key }}">
<img alt="{{ f.title }}" src="data:image/png;base64,{{ b64(f.png) }}">
<figcaption><strong>{{ f.title }}.</strong> {{ f.caption }}</figcaption>
</figure>
{% endfor %}
{% for caption, text in s.code %}<h3>{{ caption }}</h3><pre>{{ text }}</pre>{% endfor %}
</section>
{% endfor %}
</main>
</body>
</html>
"""


def _row_class(row: Sequence[str]) -> str:
    if any(c.startswith("INVALID") for c in row):
        return "invalid"
    if any(c == "REGRESSION" for c in row):
        return "flag"
    return ""


def render_html(
    title: str, subtitle: str, headline: str, has_best: bool, sections: list[Section]
) -> str:
    """Render sections as one self-contained HTML page (figures as data URIs).

    Args:
        title: Page title.
        subtitle: Line under the title.
        headline: The recommendation sentence.
        has_best: Whether a recommendation exists (styles the headline).
        sections: Content.

    Returns:
        The HTML text.
    """
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(_HTML)
    return template.render(
        title=title,
        subtitle=subtitle,
        headline=headline,
        has_best=has_best,
        sections=sections,
        css=_CSS,
        b64=lambda data: base64.b64encode(data).decode("ascii"),
        row_class=_row_class,
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(
    title: str, subtitle: str, headline: str, sections: list[Section], figures_dir: str
) -> str:
    """Render sections as Markdown with figures linked from ``figures_dir``.

    Args:
        title: Document title.
        subtitle: Line under the title.
        headline: The recommendation sentence.
        sections: Content.
        figures_dir: Relative directory of the PNG files.

    Returns:
        The Markdown text.
    """
    out = [f"# {title}", "", f"_{subtitle}_", "", f"**{headline}**", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for p in s.paragraphs:
            out += [p, ""]
        if s.bullets:
            out += [f"- {b}" for b in s.bullets] + [""]
        for t in s.tables:
            out += [f"### {t.title}", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in t.headers) + " |")
            out.append("|" + "---|" * len(t.headers))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            out.append("")
            if t.note:
                out += [f"_{t.note}_", ""]
        for f in s.figures:
            out += [f"![{f.title}]({figures_dir}/{f.key}.png)", "", f"*{f.title}.* {f.caption}", ""]
        for caption, text in s.code:
            lang = "toml" if caption.endswith(".toml") else "json"
            out += [f"### {caption}", "", f"```{lang}", text, "```", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------ pipeline


def _summary_frame(analysis: Analysis) -> pd.DataFrame:
    pts = analysis.points.drop(columns=[c for c in analysis.points if c.startswith("_")])
    return pts.sort_values(Point.POINT_ID).reset_index(drop=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def build_report(
    run_dir: Path | str,
    run_dir_b: Path | str | None = None,
    *,
    output: Path | str | None = None,
    target_rps: float | None = None,
    seed: int = 0,
) -> ReportFiles:
    """Analyse a run (optionally against a baseline run) and write the report files.

    With two runs, ``run_dir`` is the baseline (A) and ``run_dir_b`` the candidate (B): the
    report analyses B in full and compares it against A, as ``tokenbooth report A B`` reads.

    Args:
        run_dir: Run directory (A).
        run_dir_b: Second run directory (B), compared against A.
        output: Output directory; default ``RUN_DIR/report`` (``B/report-vs-<A>`` with two).
        target_rps: Load the recommendation must carry; default the spec's
            ``[report] target_rps``.
        seed: Seed of bootstraps and simulations.

    Returns:
        The written files and the analysis behind them.

    Raises:
        FileNotFoundError: A directory is not a run directory.
    """
    run_a = load_run(run_dir)
    analysis_a = analyze(run_a, seed=seed)
    comparison: Comparison | None = None
    if run_dir_b is not None:
        run_b = load_run(run_dir_b)
        analysis = analyze(run_b, seed=seed)
        comparison = compare(analysis_a, analysis, seed=seed)
        default_out = run_b.path / f"report-vs-{_slug(run_a.path.name)}"
    else:
        analysis = analysis_a
        default_out = run_a.path / "report"
    run = analysis.run
    out = Path(output) if output is not None else default_out
    (out / FIGURES_DIR).mkdir(parents=True, exist_ok=True)

    model: CapacityModel | None = None
    model_error = ""
    try:
        model = fit_analysis(analysis, seed=seed)
        if not model.services:
            model_error = "; ".join(f"{k}: {v}" for k, v in model.unfitted.items()) or (
                "no valid points"
            )
    except (ValueError, KeyError) as exc:  # a degenerate run must still give a report
        model_error = str(exc)
        model = None
    holdout = model.holdout_error() if model is not None and model.services else None
    source = "--target-rps" if target_rps is not None else "spec [report] target_rps"
    target = target_rps if target_rps is not None else run.spec.target_rps
    rec = recommend(
        analysis,
        model if model is not None and model.services else None,
        target,
        target_source=source,
    )

    figs, model_figs = _figures(analysis, model, holdout, rec)
    sections = [
        _recommendation_section(rec, holdout),
        Section("capacity", "Capacity", tables=[_capacity_table(analysis)]),
        Section("figures", "Figures", figures=figs),
        Section("points", "Points", tables=[_points_table(analysis)]),
        _model_section(
            model if model is not None and model.services else None,
            holdout,
            rec,
            model_figs,
            model_error,
        ),
    ]
    if comparison is not None:
        sections.insert(1, _comparison_section(comparison))
    sections += [_environment_section(analysis), _methods_section()]

    figure_paths: dict[str, Path] = {}
    for f in [*figs, *model_figs]:
        path = out / FIGURES_DIR / f"{f.key}.png"
        path.write_bytes(f.png)
        figure_paths[f.key] = path

    title = f"tokenbooth capacity report: {run.name}"
    if comparison is not None:
        title += f" vs {comparison.a_name}"
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (
        f"{len(analysis.points)} points, {int(analysis.points[Point.VALID].sum())} valid, "
        f"{analysis.points[Rpt.CONFIG].nunique()} configurations · SLO: "
        f"{analysis.slo.describe()} · generated {generated}"
    )
    html = out / HTML_FILE
    html.write_text(
        render_html(title, subtitle, rec.headline(), rec.best is not None, sections),
        encoding="utf-8",
    )
    md = out / MARKDOWN_FILE
    md.write_text(render_markdown(title, subtitle, rec.headline(), sections, FIGURES_DIR), "utf-8")
    csv = out / SUMMARY_FILE
    _summary_frame(analysis).to_csv(csv, index=False)
    return ReportFiles(
        output=out,
        html=html,
        markdown=md,
        summary_csv=csv,
        figures=figure_paths,
        recommendation=rec,
        analysis=analysis,
        comparison=comparison,
    )
