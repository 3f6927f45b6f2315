"""Speed against quality: each swept quantization's SLO capacity beside what it costs in quality.

Quality comes from the run's ``quality/quality.json`` (:mod:`service.models.quality`, written by
``tokenbooth model eval`` when the sweep asks for it); capacity from the analysis' capacity table.
Quantizations are compared at the run's smallest replica count (as the quantization figure
does), each by its best SLO capacity there; where the run has open-loop points only their
capacities count (as in the recommendation). A variant is on the frontier when no other variant
has at least its capacity and at most its perplexity increase, and is better on one of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import msgspec
import pandas as pd

from loadgen.results import QUALITY_DIR, Point
from reports.analysis import Analysis
from reports.load import Rpt, Run
from service.models.quality import QUALITY_FILE, QualityReport, read_quality

__all__ = [
    "LOWER_BOUND",
    "QUALITY_BASIS",
    "QUALITY_HOWTO",
    "Q",
    "QualityInput",
    "baseline",
    "cost_sentence",
    "load_quality",
    "quality_table",
]

QUALITY_HOWTO: Final = (
    f"This run has no {QUALITY_DIR}/{QUALITY_FILE}: sweep two or more [server] quantizations "
    "against local replicas (or set [report] quality = true), or run `tokenbooth model eval "
    f"--model SOURCE --quantizations Q1,Q2 --output RUN_DIR/{QUALITY_DIR}`, to add the "
    "speed-quality comparison."
)


QUALITY_BASIS: Final = (
    "Capacities are compared at the run's smallest replica count, each quantization by its best "
    "configuration there (open-loop points only where the run has any)."
)


LOWER_BOUND: Final = "not_reached"
"""The capacity status of a configuration whose SLO held at every measured level."""


class Q:
    """Columns of :func:`quality_table`."""

    QUANTIZATION: Final = "quantization"
    CONFIG: Final = "config"  # the configuration whose capacity is shown
    REPLICAS: Final = "replicas"
    CAPACITY_STATUS: Final = "capacity_status"
    CAPACITY_RPS: Final = "capacity_rps"
    CAPACITY_RATIO: Final = "capacity_ratio"  # capacity / the baseline's capacity
    MEASURED: Final = "quality_measured"  # the variant is in quality.json
    PERPLEXITY: Final = "perplexity"
    PERPLEXITY_INCREASE: Final = "perplexity_increase"
    GREEDY_AGREEMENT: Final = "greedy_agreement"
    MEAN_FIRST_DIVERGENCE: Final = "mean_first_divergence"
    TASK_ACCURACY: Final = "task_accuracy"
    SIZE_BYTES: Final = "size_bytes"
    FRONTIER: Final = "frontier"


@dataclass(frozen=True)
class QualityInput:
    """A run's quality report, or why it has none.

    Attributes:
        report: The parsed ``quality.json``; ``None`` when absent or unreadable.
        error: Why a present file could not be read (``""`` when absent or fine).
    """

    report: QualityReport | None
    error: str = ""


def load_quality(run: Run) -> QualityInput:
    """Read ``RUN_DIR/quality/quality.json`` if the run has one; say why when it is unreadable."""
    path = run.path / QUALITY_DIR / QUALITY_FILE
    if not path.exists():
        return QualityInput(None)
    try:
        return QualityInput(read_quality(path))
    except (msgspec.ValidationError, msgspec.DecodeError, OSError) as exc:
        return QualityInput(None, f"{path} could not be read: {exc}")


def _capacity_rows(analysis: Analysis) -> pd.DataFrame:
    """The capacity table at the run's smallest replica count, open-loop rows when it has any."""
    table = analysis.capacity_table()
    if table.empty:
        return table
    if analysis.has_open_loop:
        pts = analysis.points
        open_keys = set(pts.loc[pts[Rpt.OPEN_LOOP], Rpt.CONFIG_KEY])
        table = table[table[Rpt.CONFIG_KEY].isin(open_keys)]
    return table[table[Point.REPLICAS] == table[Point.REPLICAS].min()]


def _frontier(capacity: list[float], increase: list[float]) -> list[bool]:
    """Pareto-optimal (max capacity, min perplexity increase); non-finite entries never are."""
    ok = [math.isfinite(c) and math.isfinite(p) for c, p in zip(capacity, increase, strict=True)]
    flags = []
    for i in range(len(capacity)):
        if not ok[i]:
            flags.append(False)
            continue
        beaten = any(
            ok[j]
            and capacity[j] >= capacity[i]
            and increase[j] <= increase[i]
            and (capacity[j] > capacity[i] or increase[j] < increase[i])
            for j in range(len(capacity))
        )
        flags.append(not beaten)
    return flags


def quality_table(analysis: Analysis, report: QualityReport) -> pd.DataFrame:
    """Per swept quantization: its capacity under the SLO, its quality, the frontier flag.

    Args:
        analysis: The run's analysis.
        report: The run's quality report.

    Returns:
        One row per quantization (columns :class:`Q`), in name order; ``capacity_ratio`` is
        relative to :func:`baseline`'s row, NaN where either capacity is unusable.
    """
    rows = []
    for quant, group in _capacity_rows(analysis).groupby(Point.QUANTIZATION, sort=True):
        usable = group[group[Rpt.CAPACITY_STATUS].isin(("interpolated", "not_reached"))]
        best = usable.loc[usable[Rpt.CAPACITY_RPS].idxmax()] if len(usable) else group.iloc[0]
        variant = report.variant(str(quant))
        rows.append(
            {
                Q.QUANTIZATION: str(quant),
                Q.CONFIG: str(best[Rpt.CONFIG]),
                Q.REPLICAS: int(best[Point.REPLICAS]),
                Q.CAPACITY_STATUS: str(best[Rpt.CAPACITY_STATUS]),
                Q.CAPACITY_RPS: float(best[Rpt.CAPACITY_RPS]) if len(usable) else math.nan,
                Q.MEASURED: variant is not None,
                Q.PERPLEXITY: variant.perplexity if variant else math.nan,
                Q.PERPLEXITY_INCREASE: variant.perplexity_increase if variant else math.nan,
                Q.GREEDY_AGREEMENT: variant.greedy_agreement if variant else math.nan,
                Q.MEAN_FIRST_DIVERGENCE: variant.mean_first_divergence if variant else math.nan,
                Q.TASK_ACCURACY: variant.task_accuracy if variant else math.nan,
                Q.SIZE_BYTES: float(variant.size_bytes) if variant else math.nan,
            }
        )
    table = pd.DataFrame(rows, columns=[v for k, v in vars(Q).items() if k.isupper()])
    if table.empty:
        return table
    table[Q.FRONTIER] = _frontier(
        table[Q.CAPACITY_RPS].tolist(), table[Q.PERPLEXITY_INCREASE].tolist()
    )
    base = baseline(table, report)
    base_rate = (
        float(table.loc[table[Q.QUANTIZATION] == base, Q.CAPACITY_RPS].iloc[0])
        if base
        else math.nan
    )
    table[Q.CAPACITY_RATIO] = table[Q.CAPACITY_RPS] / base_rate
    return table


def baseline(table: pd.DataFrame, report: QualityReport) -> str:
    """The quantization capacities are compared with: the reference build when it was swept
    with a usable capacity, else the swept one closest to it in perplexity; ``""`` if none."""
    ok = table[table[Q.CAPACITY_RPS].map(math.isfinite)]
    if report.reference in set(ok[Q.QUANTIZATION]):
        return report.reference
    ok = ok[ok[Q.PERPLEXITY_INCREASE].map(math.isfinite)]
    if ok.empty:
        return ""
    return str(ok.loc[ok[Q.PERPLEXITY_INCREASE].idxmin(), Q.QUANTIZATION])


def cost_sentence(table: pd.DataFrame, report: QualityReport, quantization: str) -> str:
    """What ``quantization`` costs in quality, and buys in capacity, in one clause.

    For example ``int8: +1.9 % perplexity, 92 % greedy agreement at 32 tokens, 75 % task
    accuracy, 2.3x the capacity of float32``; both capacities instead of a ratio when either is
    only a lower bound; ``""`` when the table has no such row.
    """
    hit = table[table[Q.QUANTIZATION] == quantization]
    if hit.empty:
        return ""
    r = hit.iloc[0]
    if not r[Q.MEASURED]:
        return f"{quantization}: not measured in {QUALITY_FILE}"
    n = report.sample.agreement_tokens
    parts = [
        "the reference build"
        if quantization == report.reference
        else f"{r[Q.PERPLEXITY_INCREASE] * 100:+.1f} % perplexity",
        f"{r[Q.GREEDY_AGREEMENT] * 100:.0f} % greedy agreement at {n} tokens",
        f"{r[Q.TASK_ACCURACY] * 100:.0f} % task accuracy",
    ]
    base = baseline(table, report)
    ratio = float(r[Q.CAPACITY_RATIO])
    if base and base != quantization and math.isfinite(ratio):
        b = table[table[Q.QUANTIZATION] == base].iloc[0]
        if LOWER_BOUND in (r[Q.CAPACITY_STATUS], b[Q.CAPACITY_STATUS]):
            # A ratio of lower bounds bounds nothing: give both figures for what they are.
            parts.append(
                f"capacity ≥ {r[Q.CAPACITY_RPS]:.3g} req/s against ≥ {b[Q.CAPACITY_RPS]:.3g} "
                f"for {base} (the SLO held at every level measured: ratio not established)"
            )
        else:
            parts.append(f"{ratio:.3g}x the capacity of {base}")
    return f"{quantization}: {', '.join(parts)}"
