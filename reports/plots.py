"""Report figures: one pure function per figure, data frame in, ``Figure`` out.

No pyplot: every function builds a :class:`matplotlib.figure.Figure` directly (rendered by Agg
when saved), so nothing leaks between figures or threads. Colours follow the configuration's
position in the sorted list of labels, so one configuration keeps its colour in every figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from loadgen.results import Col, Point, Ts
from loadgen.spec import SLOSpec
from reports.load import Rpt
from reports.quality import LOWER_BOUND, Q

__all__ = [
    "batching",
    "config_colors",
    "latency_vs_throughput",
    "model_holdout",
    "model_predictions",
    "pareto_frontier",
    "quantization_comparison",
    "scaling_efficiency",
    "speed_quality",
    "stage_timeline",
    "throughput_vs_load",
    "timeslice_figure",
    "ttft_by_turn",
    "ttft_decomposition",
]

WIDTH_IN: Final = 12.0
_PALETTE: Final = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
)  # fmt: skip
_INVALID: Final = "#9a9a9a"
_SLO: Final = "#444444"


def config_colors(configs: Sequence[str]) -> dict[str, str]:
    """A stable colour per configuration label.

    Args:
        configs: Labels (any order, duplicates allowed).

    Returns:
        ``{label: colour}``.
    """
    return {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(sorted(set(configs)))}


def _figure(rows: int, cols: int, height_per_row: float = 3.2) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(WIDTH_IN, max(2.5, height_per_row * rows)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _legend(ax: Axes, **kw: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=8, **kw)


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _sorted(df: pd.DataFrame, col: str) -> pd.DataFrame:
    return df.sort_values(col) if len(df) else df


_LATENCY_PANELS: Final[tuple[tuple[str, str, str | None, str | None], ...]] = (
    # (column, title, CI low column, CI high column)
    (Point.TTFT_P50_S, "TTFT p50", None, None),
    (Point.TTFT_P95_S, "TTFT p95", Rpt.TTFT_P95_LO, Rpt.TTFT_P95_HI),
    (Point.TTFT_P99_S, "TTFT p99", None, None),
    (Point.ITL_P95_S, "ITL p95", Rpt.ITL_P95_LO, Rpt.ITL_P95_HI),
    (Point.E2E_P95_S, "E2E p95", Rpt.E2E_P95_LO, Rpt.E2E_P95_HI),
)


def latency_vs_throughput(
    levels: pd.DataFrame,
    slo: SLOSpec,
    *,
    x: str = Point.ACHIEVED_RPS,
    invalid: pd.DataFrame | None = None,
    brackets: Mapping[str, tuple[float, float]] | None = None,
) -> Figure:
    """Latency percentiles and goodput against throughput, one curve per configuration.

    Args:
        levels: Valid load levels (analysis ``levels``).
        slo: Objective; TTFT p95 and E2E p95 limits are drawn on their panels, the TPOT limit
            on the ITL panel as a reference.
        x: :attr:`Point.ACHIEVED_RPS` or :attr:`Point.OUTPUT_TOKENS_PER_S`.
        invalid: Invalid points, drawn as grey crosses (excluded from the curves).
        brackets: SLO-edge search brackets ``(passing, failing)`` offered req/s per
            configuration label, shaded on every panel when ``x`` is requests/s.

    Returns:
        A 2 x 3 figure: TTFT p50/p95/p99, ITL p95, E2E p95 (bars: 95% bootstrap CI), and
        goodput beside achieved throughput.
    """
    fig, axes = _figure(2, 3)
    colors = config_colors(list(levels[Rpt.CONFIG]) if len(levels) else [])
    xlabel = "requests/s (achieved)" if x == Point.ACHIEVED_RPS else "output tokens/s"
    limits = {
        Point.TTFT_P95_S: (slo.ttft_p95_s, "SLO"),
        Point.E2E_P95_S: (slo.e2e_p95_s, "SLO"),
        Point.ITL_P95_S: (slo.tpot_p95_s, "TPOT SLO"),
    }
    for ax, (col, title, lo_col, hi_col) in zip(axes, _LATENCY_PANELS, strict=False):
        for config, g in levels.groupby(Rpt.CONFIG, sort=True) if len(levels) else []:
            g = _sorted(g, Point.LOAD_LEVEL)
            ax.plot(g[x], g[col], marker="o", ms=4, color=colors[config], label=str(config))
            if lo_col and hi_col and lo_col in g and hi_col in g:
                yerr = np.vstack(
                    [(g[col] - g[lo_col]).clip(lower=0), (g[hi_col] - g[col]).clip(lower=0)]
                )
                ax.errorbar(g[x], g[col], yerr=yerr, fmt="none", ecolor=colors[config], alpha=0.5)
        if invalid is not None and len(invalid) and col in invalid:
            ax.scatter(
                invalid[x], invalid[col], marker="x", color=_INVALID, label="invalid (excluded)"
            )
        limit, label = limits.get(col, (None, ""))
        if limit is not None:
            title += _slo_line(ax, limit, label)
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3)
    _goodput_panel(axes[5], levels, x, xlabel, colors)
    if brackets and x == Point.ACHIEVED_RPS:
        for config, (low, high) in sorted(brackets.items()):
            for i, ax in enumerate(axes):
                ax.axvspan(
                    low,
                    high,
                    color=colors.get(config, _SLO),
                    alpha=0.18,
                    label=f"SLO edge (search): {config}" if i == 1 else None,
                )
    handles, labels = axes[1].get_legend_handles_labels()
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(
            handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8
        )
    fig.suptitle(f"Latency vs {xlabel}")
    return fig


def _goodput_panel(
    ax: Axes, levels: pd.DataFrame, x: str, xlabel: str, colors: Mapping[str, str]
) -> None:
    """Goodput (requests/s meeting every per-request SLO term) beside achieved requests/s."""
    drawn = False
    for config, g in levels.groupby(Rpt.CONFIG, sort=True) if len(levels) else []:
        if Point.GOODPUT_RPS not in g or not g[Point.GOODPUT_RPS].notna().any():
            continue
        g = _sorted(g, Point.LOAD_LEVEL)
        c = colors[config]
        ax.plot(g[x], g[Point.ACHIEVED_RPS], ls=":", color=c, label="throughput (achieved)")
        ax.plot(g[x], g[Point.GOODPUT_RPS], marker="s", ms=4, color=c, label="goodput")
        drawn = True
    if not drawn:
        _empty(ax, "no goodput (no per-request SLO term)")
    else:
        ax.set_ylim(bottom=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("requests/s")
        ax.grid(alpha=0.3)
    ax.set_title("Goodput (dotted: throughput)")


def _slo_line(ax: Axes, limit: float, label: str) -> str:
    """Draw an SLO limit; one far above the data is named instead of squashing the curves.

    Returns:
        A title suffix naming an off-scale limit, else ``""``.
    """
    ys = [np.asarray(ln.get_ydata(), dtype=np.float64) for ln in ax.get_lines()]
    finite = [y[np.isfinite(y)] for y in ys]
    top = max((float(y.max()) for y in finite if y.size), default=math.nan)
    if np.isfinite(top) and limit > 3 * top:
        return f" ({label} {limit:g} s, off scale)"
    ax.axhline(limit, color=_SLO, ls="--", lw=1.2, label="SLO limit")
    return ""


def throughput_vs_load(levels: pd.DataFrame) -> Figure:
    """Achieved requests/s and output tokens/s against the load level, per configuration.

    Args:
        levels: Valid load levels.

    Returns:
        Two panels; open-loop configurations also show the offered rate as a dotted line.
    """
    fig, (ax_r, ax_t) = _figure(1, 2, 3.8)
    colors = config_colors(list(levels[Rpt.CONFIG]) if len(levels) else [])
    modes = set(levels[Point.LOAD_MODE]) if len(levels) else set()
    xlabel = {
        frozenset({"concurrency"}): "concurrency (users)",
        frozenset({"rate"}): "offered requests/s",
    }.get(frozenset(modes), "load level (users or offered requests/s)")
    for config, g in levels.groupby(Rpt.CONFIG, sort=True) if len(levels) else []:
        g = _sorted(g, Point.LOAD_LEVEL)
        c = colors[config]
        ax_r.plot(g[Point.LOAD_LEVEL], g[Point.ACHIEVED_RPS], marker="o", color=c, label=config)
        ax_t.plot(
            g[Point.LOAD_LEVEL], g[Point.OUTPUT_TOKENS_PER_S], marker="o", color=c, label=config
        )
    if "rate" in modes:
        hi = float(levels[Point.LOAD_LEVEL].max())
        ax_r.plot([0, hi], [0, hi], ls=":", color=_SLO, label="offered = achieved")
    for ax, ylabel in ((ax_r, "requests/s (achieved)"), (ax_t, "output tokens/s")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        _legend(ax)
    fig.suptitle("Throughput vs load")
    return fig


def _frontier(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats on both axes, by increasing x."""
    order = np.argsort(-x, kind="stable")
    best_y = -math.inf
    keep = []
    for i in order:
        if y[i] > best_y:
            keep.append(i)
            best_y = y[i]
    return np.asarray(sorted(keep, key=lambda i: x[i]), dtype=int)


def pareto_frontier(levels: pd.DataFrame) -> Figure:
    """Per-user output tokens/s against total output tokens/s, Pareto frontier highlighted.

    Args:
        levels: Valid load levels of every configuration.

    Returns:
        One panel; the frontier joins the points no other point beats on both axes.
    """
    fig, (ax,) = _figure(1, 1, 4.5)
    d = (
        levels.dropna(subset=[Point.OUTPUT_TOKENS_PER_S, Point.PER_USER_TOKENS_PER_S])
        if len(levels)
        else levels
    )
    if d.empty:
        _empty(ax, "no valid points with token rates")
        return fig
    colors = config_colors(list(d[Rpt.CONFIG]))
    for config, g in d.groupby(Rpt.CONFIG, sort=True):
        ax.scatter(
            g[Point.OUTPUT_TOKENS_PER_S],
            g[Point.PER_USER_TOKENS_PER_S],
            color=colors[config],
            label=config,
            s=30,
        )
    x = d[Point.OUTPUT_TOKENS_PER_S].to_numpy(dtype=float)
    y = d[Point.PER_USER_TOKENS_PER_S].to_numpy(dtype=float)
    idx = _frontier(x, y)
    ax.plot(
        x[idx],
        y[idx],
        color=_SLO,
        lw=1.5,
        ls="-",
        marker="s",
        mfc="none",
        ms=9,
        label="Pareto frontier",
    )
    ax.set_xlabel("total output tokens/s")
    ax.set_ylabel("per-user output tokens/s (median)")
    ax.grid(alpha=0.3)
    _legend(ax)
    ax.set_title("Per-user vs total token throughput")
    return fig


def scaling_efficiency(scaling: pd.DataFrame) -> Figure:
    """Replica scaling efficiency ``throughput(N) / (N x throughput(1))`` per base configuration.

    Args:
        scaling: Columns :attr:`Rpt.BASE_CONFIG`, :attr:`Point.REPLICAS`, ``peak_rps`` (highest
            valid measured throughput), ``capacity_rps`` (SLO capacity, may be NaN) and
            optionally ``model_rps`` (capacity model's full-batch throughput).

    Returns:
        One panel; 1.0 is perfect scaling.
    """
    fig, (ax,) = _figure(1, 1, 4.0)
    if scaling.empty:
        _empty(ax, "no replica counts to compare")
        return fig
    colors = config_colors(list(scaling[Rpt.BASE_CONFIG]))
    plotted = False
    for base, g in scaling.groupby(Rpt.BASE_CONFIG, sort=True):
        g = _sorted(g, Point.REPLICAS)
        c = colors[base]
        for col, style, label in (
            (Rpt.PEAK_RPS, "-o", "peak throughput"),
            (Rpt.CAPACITY_RPS, "--s", "SLO capacity"),
            (Rpt.MODEL_RPS, ":^", "model"),
        ):
            if col not in g:
                continue
            one = g[g[Point.REPLICAS] == 1][col]
            if one.empty or not np.isfinite(one.iloc[0]) or one.iloc[0] <= 0:
                continue
            eff = g[col] / (g[Point.REPLICAS] * float(one.iloc[0]))
            ok = np.isfinite(eff)
            if ok.sum() >= 1:
                ax.plot(g[Point.REPLICAS][ok], eff[ok], style, color=c, label=f"{base}: {label}")
                plotted = True
    if not plotted:
        _empty(ax, "no single-replica baseline measured")
        return fig
    ax.axhline(1.0, color=_SLO, ls="--", lw=1, label="perfect scaling")
    ax.set_ylim(0, max(1.2, ax.get_ylim()[1]))
    ax.set_xlabel("replicas")
    ax.set_ylabel("throughput(N) / (N × throughput(1))")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    _legend(ax)
    ax.set_title("Replica scaling efficiency")
    return fig


def batching(levels: pd.DataFrame) -> Figure:
    """Server batch size and batch fill per load level, beside the client's TTFT p95.

    Args:
        levels: Valid load levels with the server means.

    Returns:
        Three panels sharing the load axis.
    """
    fig, axes = _figure(1, 3, 3.6)
    colors = config_colors(list(levels[Rpt.CONFIG]) if len(levels) else [])
    panels = (
        (Point.SERVER_BATCH_SIZE_MEAN, "mean batch size (server)"),
        (Point.SERVER_BATCH_FILL_MEAN, "mean batch fill (server)"),
        (Point.TTFT_P95_S, "TTFT p95 (client, s)"),
    )
    for ax, (col, title) in zip(axes, panels, strict=True):
        any_data = False
        for config, g in levels.groupby(Rpt.CONFIG, sort=True) if len(levels) else []:
            g = _sorted(g, Point.LOAD_LEVEL)
            if col in g and g[col].notna().any():
                ax.plot(g[Point.LOAD_LEVEL], g[col], marker="o", color=colors[config], label=config)
                any_data = True
        if not any_data:
            _empty(ax, "not in the server metrics")
        ax.set_title(title)
        ax.set_xlabel("load level")
        ax.grid(alpha=0.3)
    if col == Point.TTFT_P95_S:
        _legend(axes[2])
    fig.suptitle("Batching (server) beside client latency")
    return fig


def ttft_decomposition(levels: pd.DataFrame) -> Figure:
    """Server-side TTFT parts per load level against the client's TTFT.

    Bars stack the batch formation delay, the rest of the queue wait and the prefill (server
    means); markers show the server's TTFT mean and the client's TTFT mean. The gap between the
    markers is what the network, HTTP and SSE add.

    Args:
        levels: Valid load levels with the server means.

    Returns:
        One horizontal bar per configuration and load level.
    """
    need = (Point.SERVER_QUEUE_WAIT_MEAN_S, Point.SERVER_PREFILL_MEAN_S)
    d = (
        levels.dropna(subset=list(need))
        if len(levels) and all(c in levels for c in need)
        else levels.iloc[0:0]
    )
    fig, (ax,) = _figure(1, 1, max(3.0, 0.32 * len(d) + 1.5) / 1.0)
    if d.empty:
        _empty(ax, "no server queue-wait / prefill metrics in this run")
        return fig
    d = d.sort_values([Rpt.CONFIG, Point.LOAD_LEVEL])
    labels = [f"{c} @ {lv:g}" for c, lv in zip(d[Rpt.CONFIG], d[Point.LOAD_LEVEL], strict=True)]
    y = np.arange(len(d))
    formation = d[Point.SERVER_BATCH_FORMATION_MEAN_S].fillna(0).to_numpy(dtype=float)
    queue = d[Point.SERVER_QUEUE_WAIT_MEAN_S].to_numpy(dtype=float)
    rest = np.clip(queue - formation, 0, None)
    prefill = d[Point.SERVER_PREFILL_MEAN_S].to_numpy(dtype=float)
    ax.barh(y, formation, color="#9ecae1", label="batch formation delay")
    ax.barh(y, rest, left=formation, color="#3182bd", label="queue wait (beyond formation)")
    ax.barh(y, prefill, left=formation + rest, color="#fd8d3c", label="prefill (batch)")
    if Point.SERVER_TTFT_MEAN_S in d:
        ax.scatter(
            d[Point.SERVER_TTFT_MEAN_S],
            y,
            marker="D",
            color="black",
            zorder=3,
            label="server TTFT mean",
        )
    ax.scatter(
        d[Rpt.TTFT_MEAN_S],
        y,
        marker="|",
        s=200,
        color="#d62728",
        zorder=3,
        label="client TTFT mean",
    )
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (means)")
    ax.grid(axis="x", alpha=0.3)
    _legend(ax, loc="lower right")
    ax.set_title("TTFT decomposition: queue wait, batch formation, prefill (server) vs client TTFT")
    return fig


def quantization_comparison(levels: pd.DataFrame, capacity: pd.DataFrame | None = None) -> Figure:
    """Throughput, memory and latency per quantization, where the sweep varied it.

    Compares single-replica (smallest replica count) configurations: peak achieved throughput
    (and SLO capacity, hatched, when ``capacity`` is given), GPU memory in use (server's GPU
    series; "not measured" without a GPU) and TTFT p95 at the lowest load level.

    Args:
        levels: Valid load levels with :attr:`Point.QUANTIZATION`.
        capacity: Optional per-configuration capacity table with :attr:`Point.QUANTIZATION`,
            :attr:`Point.REPLICAS` and ``capacity_rps``.

    Returns:
        Three panels, one bar (group) per quantization.
    """
    fig, axes = _figure(1, 3, 3.6)
    if levels.empty or levels[Point.QUANTIZATION].nunique() < 2:
        _empty(axes[0], "the sweep did not vary quantization")
        for ax in axes[1:]:
            ax.axis("off")
        return fig
    n_min = int(levels[Point.REPLICAS].min())
    smallest = levels[levels[Point.REPLICAS] == n_min]
    rows: list[tuple[str, float, float, float, float]] = []
    for quant, g in smallest.groupby(Point.QUANTIZATION, sort=True):
        low = g.sort_values(Point.LOAD_LEVEL).iloc[0]
        mem = g[Rpt.GPU_MEMORY_USED_BYTES].max() if Rpt.GPU_MEMORY_USED_BYTES in g else math.nan
        cap = math.nan
        if capacity is not None and len(capacity):
            sel = capacity[
                (capacity[Point.QUANTIZATION] == quant) & (capacity[Point.REPLICAS] == n_min)
            ]
            cap = float(sel[Rpt.CAPACITY_RPS].max()) if len(sel) else math.nan
        rows.append(
            (
                str(quant),
                float(g[Point.ACHIEVED_RPS].max()),
                float(mem),
                float(low[Point.TTFT_P95_S]),
                cap,
            )
        )
    names = [r[0] for r in rows]
    colors = [_PALETTE[i % len(_PALETTE)] for i in range(len(rows))]
    x = np.arange(len(rows))
    panels = (
        (1, "peak throughput (req/s)", 1.0),
        (2, "GPU memory in use (GiB)", 1 / 2**30),
        (3, "TTFT p95 at lowest load (s)", 1.0),
    )
    for ax, (i, title, scale) in zip(axes, panels, strict=True):
        vals = np.asarray([r[i] for r in rows], dtype=np.float64) * scale
        if not np.isfinite(vals).any():
            _empty(ax, "not measured (no GPU series)")
            ax.set_title(title)
            continue
        caps = np.asarray([r[4] for r in rows], dtype=np.float64)
        if i == 1 and np.isfinite(caps).any():
            ax.bar(x - 0.2, np.nan_to_num(vals), width=0.4, color=colors, label="peak")
            ax.bar(
                x + 0.2,
                np.nan_to_num(caps),
                width=0.4,
                color=colors,
                hatch="//",
                alpha=0.6,
                label="SLO capacity",
            )
            _legend(ax)
            title = "peak throughput / SLO capacity (req/s)"
        else:
            ax.bar(x, np.nan_to_num(vals), color=colors)
        ax.set_xticks(x)
        ax.set_xticklabels(names)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(title)
    fig.suptitle("Quantization comparison (smallest replica count)")
    return fig


def model_holdout(holdout: pd.DataFrame) -> Figure:
    """Capacity model predictions against held-out measurements.

    Args:
        holdout: :attr:`reports.capacity.Holdout.table`.

    Returns:
        Two panels (throughput, TTFT p95), predicted against measured, with the y = x line.
    """
    fig, axes = _figure(1, 2, 4.0)
    if holdout.empty:
        for ax in axes:
            _empty(ax, "no held-out points (needs at least two fitted points)")
        return fig
    kinds = sorted(holdout[Rpt.HOLDOUT_KIND].unique())
    marks = {k: m for k, m in zip(kinds, ("o", "s", "^", "D"), strict=False)}
    colors = config_colors(list(holdout[Rpt.BASE_CONFIG]))
    for ax, (meas, pred, title) in zip(
        axes,
        (
            (Rpt.MEASURED_RPS, Rpt.PREDICTED_RPS, "throughput (req/s)"),
            (Rpt.MEASURED_TTFT_P95_S, Rpt.PREDICTED_TTFT_P95_S, "TTFT p95 (s)"),
        ),
        strict=True,
    ):
        for (kind, base), g in holdout.groupby([Rpt.HOLDOUT_KIND, Rpt.BASE_CONFIG], sort=True):
            ax.scatter(
                g[meas], g[pred], marker=marks[kind], color=colors[base], label=f"{base} ({kind})"
            )
        both = pd.concat([holdout[meas], holdout[pred]]).replace([np.inf, -np.inf], np.nan).dropna()
        if len(both):
            lo, hi = float(both.min()), float(both.max())
            ax.plot([lo, hi], [lo, hi], ls="--", color=_SLO, lw=1, label="perfect prediction")
        ax.set_xlabel(f"measured {title}")
        ax.set_ylabel(f"predicted {title}")
        ax.grid(alpha=0.3)
        ax.set_title(title)
    _legend(axes[0])
    fig.suptitle("Capacity model: predictions on held-out points")
    return fig


def model_predictions(predictions: pd.DataFrame, measured: pd.DataFrame, slo: SLOSpec) -> Figure:
    """Predicted TTFT p95 and throughput against offered rate for several replica counts.

    Args:
        predictions: Columns :attr:`Rpt.BASE_CONFIG`, :attr:`Point.REPLICAS`, ``rate_rps``,
            ``throughput_rps``, ``ttft_p95_s``.
        measured: Valid load levels (open-loop ones are overlaid as points).
        slo: Its TTFT p95 limit is drawn.

    Returns:
        Two panels; line style per replica count, colour per base configuration.
    """
    fig, (ax_t, ax_r) = _figure(1, 2, 4.0)
    if predictions.empty:
        for ax in (ax_t, ax_r):
            _empty(ax, "no fitted configuration")
        return fig
    colors = config_colors(list(predictions[Rpt.BASE_CONFIG]))
    styles = ("-", "--", "-.", ":")
    for (base, n), g in predictions.groupby([Rpt.BASE_CONFIG, Point.REPLICAS], sort=True):
        g = _sorted(g, Rpt.RATE_RPS)
        ls = styles[(int(n) - 1) % len(styles)]
        label = f"{base} ×{int(n)} (model)"
        ax_t.plot(g[Rpt.RATE_RPS], g[Rpt.PRED_TTFT_P95_S], ls=ls, color=colors[base], label=label)
        ax_r.plot(g[Rpt.RATE_RPS], g[Rpt.THROUGHPUT_RPS], ls=ls, color=colors[base], label=label)
    if len(measured):
        m = measured[(measured[Point.LOAD_MODE] == "rate") & measured[Rpt.BASE_CONFIG].isin(colors)]
        for (base, n), g in m.groupby([Rpt.BASE_CONFIG, Point.REPLICAS], sort=True):
            lab = f"{base} ×{int(n)} (measured)"
            ax_t.scatter(
                g[Point.LOAD_LEVEL],
                g[Point.TTFT_P95_S],
                color=colors[base],
                marker="o",
                s=18,
                label=lab,
            )
            ax_r.scatter(
                g[Point.LOAD_LEVEL],
                g[Point.ACHIEVED_RPS],
                color=colors[base],
                marker="o",
                s=18,
                label=lab,
            )
    if slo.ttft_p95_s is not None:
        ax_t.axhline(slo.ttft_p95_s, color=_SLO, ls="--", lw=1.2, label="TTFT p95 SLO")
    ax_t.set_yscale("log")
    ax_t.set_ylabel("TTFT p95 (s, log)")
    ax_r.set_ylabel("throughput (req/s)")
    for ax in (ax_t, ax_r):
        ax.set_xlabel("offered requests/s (Poisson)")
        ax.grid(alpha=0.3)
    _legend(ax_r)
    fig.suptitle("Capacity model: predicted TTFT p95 and throughput per replica count")
    return fig


def ttft_by_turn(turns: pd.DataFrame, labels: dict[int, str]) -> Figure:
    """TTFT p50/p95 and mean prompt tokens against the session turn, one curve per point.

    Args:
        turns: :func:`loadgen.summary.turn_summary` rows.
        labels: Legend label per point id.

    Returns:
        The figure.
    """
    fig, (ax_ttft, ax_tokens) = _figure(1, 2)
    if turns.empty:
        _empty(ax_ttft, "no session turns")
        _empty(ax_tokens, "no session turns")
        return fig
    for i, (pid, g) in enumerate(turns.groupby(Col.POINT_ID, sort=True)):
        g = _sorted(g, Col.TURN)
        color = _PALETTE[i % len(_PALETTE)]
        label = labels.get(int(pid), f"point {int(pid)}")
        ax_ttft.plot(g[Col.TURN], g[Point.TTFT_P50_S], "o-", color=color, label=f"{label} p50")
        ax_ttft.plot(g[Col.TURN], g[Point.TTFT_P95_S], "s--", color=color, label=f"{label} p95")
        ax_tokens.plot(g[Col.TURN], g[Col.PROMPT_TOKENS], "o-", color=color, label=label)
    ax_ttft.set(xlabel="turn", ylabel="TTFT (s)", title="TTFT by turn")
    ax_tokens.set(xlabel="turn", ylabel="prompt tokens (mean)", title="Prompt length by turn")
    for ax in (ax_ttft, ax_tokens):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        _legend(ax)
    return fig


_TIMESLICE_PANELS: Final = (
    (Ts.OUTPUT_TOKENS_PER_S, "throughput (output tokens/s)"),
    (Ts.TTFT_P95_S, "TTFT p95 (s)"),
    (Ts.IN_FLIGHT, "in flight (client, measured requests)"),
    (Ts.QUEUE_DEPTH, "queue depth (server, requests waiting)"),
)


def _timeslice_label(mode: str, level: float, status: str, repeat: int) -> str:
    unit = "req/s" if mode == "rate" else "users"
    text = f"{level:g} {unit}" + (f" #{repeat + 1}" if repeat else "")
    return text + (f" ({status})" if status and status != "ok" else "")


def timeslice_figure(slices: pd.DataFrame, title: str) -> Figure:
    """Throughput, TTFT p95, in-flight and server queue depth against time, per load level.

    Args:
        slices: One configuration's timeslices (:func:`timeslice_frames`): Ts columns with
            :attr:`Point.LOAD_MODE`, :attr:`Point.LOAD_LEVEL` and :attr:`Point.STATUS`.
        title: The configuration's label.

    Returns:
        Four panels sharing the time axis (seconds since the measured window opened; each
        value drawn at its slice's middle), one line per point, coloured by load level.
    """
    fig = Figure(figsize=(12.0, 6.0), layout="constrained")
    axes = [ax for row in fig.subplots(2, 2, squeeze=False, sharex=True) for ax in row]
    points = (
        slices.groupby(Point.POINT_ID, sort=False)
        .first()
        .sort_values([Point.LOAD_LEVEL])
        .reset_index()
        if len(slices)
        else pd.DataFrame(columns=[Point.POINT_ID, Point.LOAD_LEVEL])
    )
    cmap = colormaps["viridis"]
    n = max(len(points) - 1, 1)
    seen: dict[float, int] = {}
    for i, (_, p) in enumerate(points.iterrows()):
        g = slices[slices[Point.POINT_ID] == p[Point.POINT_ID]].sort_values(Ts.SLICE)
        t = g[Ts.START_S] + g[Ts.DURATION_S] / 2
        level = float(p[Point.LOAD_LEVEL])
        repeat = seen.get(level, 0)
        seen[level] = repeat + 1
        label = _timeslice_label(str(p[Point.LOAD_MODE]), level, str(p[Point.STATUS]), repeat)
        color = cmap(0.9 * i / n)
        for ax, (col, _) in zip(axes, _TIMESLICE_PANELS, strict=True):
            y = pd.to_numeric(g[col], errors="coerce")
            if y.notna().any():
                ax.plot(t, y, marker="o", ms=3, color=color, label=label)
    for ax, (col, name) in zip(axes, _TIMESLICE_PANELS, strict=True):
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        if not ax.get_lines():
            ax.text(
                0.5,
                0.5,
                "not in the server metrics" if col == Ts.QUEUE_DEPTH else "no data",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        else:
            ax.set_ylim(bottom=0)
    for ax in axes[2:]:
        ax.set_xlabel("seconds since the measured window opened")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, title="load level")
    fig.suptitle(f"Timeslices: {title}")
    return fig


def stage_timeline(points: pd.DataFrame) -> Figure:
    """A stage profile in time order: offered and achieved load, and TTFT p95, per stage.

    Args:
        points: Stage points (:attr:`Point.STAGE` set) with :attr:`Rpt.CONFIG`,
            :attr:`Point.REPEAT`, :attr:`Point.STARTED_AT` and :attr:`Point.DURATION_S`.

    Returns:
        Two panels against seconds since the profile's first stage opened, each stage drawn
        over its own window; one colour per configuration, repeats dashed.
    """
    fig, (ax_load, ax_ttft) = _figure(1, 2)
    stages = points[pd.to_numeric(points[Point.STAGE], errors="coerce").notna()]
    if stages.empty:
        _empty(ax_load, "no stage points")
        _empty(ax_ttft, "no stage points")
        return fig
    colors = config_colors(list(stages[Rpt.CONFIG]))
    closed = bool((stages[Point.LOAD_MODE] != "rate").all())
    for (label, rep), g in stages.groupby([Rpt.CONFIG, Point.REPEAT], sort=True):
        g = g.sort_values(Point.STAGE)
        t0 = float(g[Point.STARTED_AT].min())
        color, style = colors[str(label)], "-" if int(rep) == 0 else "--"
        name = str(label) + (f" #{int(rep) + 1}" if int(rep) else "")
        for i, (_, r) in enumerate(g.iterrows()):
            a = float(r[Point.STARTED_AT]) - t0
            b = a + float(r[Point.DURATION_S])
            first = i == 0
            if r[Point.LOAD_MODE] == "rate":
                ax_load.plot(
                    [a, b],
                    [float(r[Point.STAGE_LEVEL_FROM]), float(r[Point.STAGE_LEVEL_TO])],
                    ":",
                    color=color,
                    label=f"{name} offered" if first else None,
                )
            ax_load.plot(
                [a, b],
                [float(r[Point.ACHIEVED_RPS])] * 2,
                style,
                color=color,
                lw=2,
                label=f"{name} achieved" if first else None,
            )
            ax_ttft.plot(
                [a, b],
                [float(r[Point.TTFT_P95_S])] * 2,
                style,
                color=color,
                lw=2,
                label=name if first else None,
            )
            ax_ttft.annotate(
                f"{int(r[Point.STAGE])}",
                ((a + b) / 2, float(r[Point.TTFT_P95_S])),
                textcoords="offset points",
                xytext=(0, 4),
                ha="center",
                fontsize=7,
            )
    ax_load.set(
        xlabel="seconds since the first stage opened",
        ylabel="requests/s",
        title="Achieved (solid) per stage" + ("" if closed else " against offered (dotted)"),
    )
    ax_ttft.set(
        xlabel="seconds since the first stage opened",
        ylabel="TTFT p95 (s)",
        title="TTFT p95 per stage (stage index above)",
    )
    for ax in (ax_load, ax_ttft):
        ax.margins(y=0.15)  # room for the stage labels above the highest stage
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        _legend(ax)
    return fig


def speed_quality(table: pd.DataFrame, agreement_tokens: int) -> Figure:
    """SLO capacity against perplexity increase per quantization, the frontier marked; and the
    greedy agreement and task accuracy of each.

    Args:
        table: :func:`reports.quality.quality_table` (one row per quantization).
        agreement_tokens: N of the greedy agreement (first N tokens equal the reference's).

    Returns:
        Two panels: the speed-quality frontier, and agreement and accuracy bars.
    """
    fig, (ax, ax_q) = _figure(1, 2, 4.0)
    if table.empty:
        _empty(ax, "no quantization to compare")
        _empty(ax_q, "no quantization measured")
        return fig
    ok = table[
        table[Q.CAPACITY_RPS].map(math.isfinite) & table[Q.PERPLEXITY_INCREASE].map(math.isfinite)
    ]
    if ok.empty:
        _empty(ax, "no quantization has both an SLO capacity and a quality measurement")
    else:
        colors = {q: _PALETTE[i % len(_PALETTE)] for i, q in enumerate(table[Q.QUANTIZATION])}
        for _, r in ok.iterrows():
            x, y = float(r[Q.PERPLEXITY_INCREASE]) * 100, float(r[Q.CAPACITY_RPS])
            bound = r[Q.CAPACITY_STATUS] == LOWER_BOUND  # SLO held everywhere: at least y
            marker = "^" if bound else "o"
            ax.scatter([x], [y], color=colors[r[Q.QUANTIZATION]], s=40, marker=marker, zorder=3)
            ax.annotate(str(r[Q.QUANTIZATION]), (x, y), textcoords="offset points", xytext=(6, 4))
        front = ok[ok[Q.FRONTIER]].sort_values(Q.PERPLEXITY_INCREASE)
        ax.plot(
            front[Q.PERPLEXITY_INCREASE] * 100,
            front[Q.CAPACITY_RPS],
            color=_SLO,
            lw=1.5,
            marker="s",
            mfc="none",
            ms=11,
            label="Pareto frontier",
        )
        ax.set_xlabel("perplexity increase over the reference (%)")
        ax.set_ylabel("SLO capacity (req/s)")
        ax.grid(alpha=0.3)
        _legend(ax)
    ax.set_title("Capacity vs quality")
    measured = table[table[Q.MEASURED]]
    if measured.empty:
        _empty(ax_q, "no quantization measured")
    else:
        pos = np.arange(len(measured))
        ax_q.bar(
            pos - 0.2,
            measured[Q.GREEDY_AGREEMENT] * 100,
            width=0.4,
            color=_PALETTE[0],
            label=f"greedy agreement ({agreement_tokens} tokens)",
        )
        ax_q.bar(
            pos + 0.2,
            measured[Q.TASK_ACCURACY] * 100,
            width=0.4,
            color=_PALETTE[2],
            label="task accuracy",
        )
        ax_q.set_xticks(pos, list(measured[Q.QUANTIZATION]))
        ax_q.set_ylim(0, 105)
        ax_q.set_ylabel("%")
        ax_q.grid(alpha=0.3, axis="y")
        _legend(ax_q, loc="lower right")
    ax_q.set_title("Agreement with the reference and task accuracy")
    return fig
