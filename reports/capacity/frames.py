"""Model frames for figures: replica scaling beside the measurements, predicted curves per rate.

Pure functions of the fitted model (and the analysis it came from) that return the data frames
:mod:`reports.plots` draws.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from loadgen.results import Point
from reports.analysis import Analysis
from reports.capacity.model import CapacityModel
from reports.load import Rpt

__all__ = ["prediction_frame", "scaling_frame"]


def scaling_frame(analysis: Analysis, model: CapacityModel | None) -> pd.DataFrame:
    """Peak measured throughput, SLO capacity and the model's full-batch throughput per base
    configuration and replica count, the model's extending two replicas past the measured ones.

    Args:
        analysis: The run's analysis.
        model: The fitted model, or ``None`` (measured columns only).

    Returns:
        Columns :attr:`Rpt.BASE_CONFIG_ID`, :attr:`Rpt.BASE_CONFIG`, :attr:`Point.REPLICAS`,
        :attr:`Rpt.PEAK_RPS`, :attr:`Rpt.CAPACITY_RPS`, :attr:`Rpt.MODEL_RPS` (as
        :func:`reports.plots.scaling_efficiency` reads them).
    """
    rows: list[dict[str, Any]] = []
    lv = analysis.levels
    for key, cap in analysis.capacity.items():
        g = lv[lv[Rpt.CONFIG_KEY] == key] if len(lv) else lv
        pts = analysis.points[analysis.points[Rpt.CONFIG_KEY] == key]
        base = str(pts[Rpt.BASE_CONFIG_ID].iloc[0])
        n = int(pts[Point.REPLICAS].iloc[0])
        model_rps = math.nan
        if model is not None and base in model.services:
            model_rps = model.max_throughput(base, n)
        rows.append(
            {
                Rpt.BASE_CONFIG_ID: base,
                Rpt.BASE_CONFIG: str(pts[Rpt.BASE_CONFIG].iloc[0]),
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
                        Rpt.BASE_CONFIG_ID: base,
                        Rpt.BASE_CONFIG: model.label(base),
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
    by = [Rpt.BASE_CONFIG, Rpt.BASE_CONFIG_ID, Point.REPLICAS]  # the label first: display order
    return frame.groupby(by, as_index=False).max()


def prediction_frame(
    model: CapacityModel,
    measured_replicas: Iterable[int],
    first: tuple[str, int] | None,
    *,
    max_configs: int,
    max_replicas: int,
    rate_steps: int,
) -> pd.DataFrame:
    """Predicted TTFT p95 and throughput over a range of Poisson rates per curve.

    Args:
        model: The fitted model.
        measured_replicas: Replica counts the sweep measured (one more is predicted).
        first: ``(base configuration id, replicas)`` drawn first and always, e.g. the
            recommendation; ``None`` for none.
        max_configs: Base configurations drawn.
        max_replicas: Replica counts per configuration.
        rate_steps: Rates per curve, from 15% to 105% of its full-batch throughput.

    Returns:
        Columns :attr:`Rpt.BASE_CONFIG_ID`, :attr:`Rpt.BASE_CONFIG`, :attr:`Point.REPLICAS`,
        :attr:`Rpt.RATE_RPS`, :attr:`Rpt.THROUGHPUT_RPS`, :attr:`Rpt.PRED_TTFT_P95_S`.
    """
    bases = list(model.configs)
    if first is not None and first[0] in bases:
        bases.remove(first[0])
        bases.insert(0, first[0])
    bases = bases[:max_configs]
    measured_n = sorted({int(n) for n in measured_replicas})
    rows = []
    for base in bases:
        ns = sorted(set(measured_n) | {max(measured_n) + 1})
        if first is not None and first[0] == base:
            ns = sorted(set(ns) | {first[1]})
        for n in ns[:max_replicas]:
            top = model.max_throughput(base, n)
            if not math.isfinite(top) or top <= 0:
                continue
            for frac in np.linspace(0.15, 1.05, rate_steps):
                rate = float(f"{top * frac:.3g}")
                p = model.predict(base, n, rate)
                rows.append(
                    {
                        Rpt.BASE_CONFIG_ID: base,
                        Rpt.BASE_CONFIG: model.label(base),
                        Point.REPLICAS: n,
                        Rpt.RATE_RPS: rate,
                        Rpt.THROUGHPUT_RPS: p.throughput_rps,
                        Rpt.PRED_TTFT_P95_S: p.ttft_p95_s,
                    }
                )
    return pd.DataFrame(rows)
