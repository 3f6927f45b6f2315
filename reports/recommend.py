"""The recommendation: which configuration, how many replicas, for a target load under the SLO.

For each base configuration, replica counts are tried from one upwards. A replica count the
sweep measured is judged by its measured SLO capacity (interpolated); one it did not measure (or
whose measured capacity is only a lower bound below the target) is judged by the capacity
model's prediction at the target rate. The winner needs the fewest replicas, then the fewest CPU
threads (replicas x batch workers x intra threads), prefers measured over predicted evidence, and
then the most headroom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from loadgen.results import Point
from loadgen.spec import SLOSpec
from reports.analysis import Analysis
from reports.load import Rpt
from reports.model import CapacityModel

__all__ = ["Option", "Recommendation", "recommend"]

MAX_REPLICAS: Final = 64


@dataclass(frozen=True)
class Option:
    """The smallest deployment of one base configuration that carries the target.

    Attributes:
        base_config: What each replica runs.
        replicas: How many.
        capacity_rps: Highest rate meeting the SLO at that replica count.
        headroom: ``capacity / target - 1``.
        source: ``measured`` (interpolated from the sweep), ``measured (lower bound)`` (the SLO
            held at every measured level) or ``model`` (capacity model prediction).
        cpu_threads: replicas x batch workers x intra threads.
        note: Caveats.
    """

    base_config: str
    replicas: int
    capacity_rps: float
    headroom: float
    source: str
    cpu_threads: int
    note: str = ""

    @property
    def config(self) -> str:
        """Full label, e.g. ``int8 b8 d5ms w1 t1 ×2``."""
        return f"{self.base_config} ×{self.replicas}"


@dataclass(frozen=True)
class Recommendation:
    """The answer to "how many replicas of which configuration for this load and SLO".

    Attributes:
        target_rps: The load to carry.
        target_source: Where the target came from (``--target-rps`` or the spec).
        slo: The objective.
        best: The recommended option, or ``None`` when nothing carries the target.
        options: The best option of every base configuration that can carry it.
        infeasible: Base configurations that cannot, with the reason.
    """

    target_rps: float | None
    target_source: str
    slo: SLOSpec
    best: Option | None
    options: list[Option]
    infeasible: dict[str, str]

    def headline(self) -> str:
        """One sentence for the top of the report."""
        if self.target_rps is None:
            return (
                "No target load given (set [report] target_rps in the spec or pass "
                "--target-rps): no recommendation."
            )
        if self.best is None:
            return (
                f"No configuration measured or modelled carries {self.target_rps:g} req/s "
                f"under the SLO ({self.slo.describe()}) with up to {MAX_REPLICAS} replicas."
            )
        b = self.best
        return (
            f"Run {b.replicas} replica{'s' if b.replicas != 1 else ''} of {b.base_config} "
            f"for {self.target_rps:g} req/s: capacity {b.capacity_rps:.3g} req/s under the SLO "
            f"({self.slo.describe()}), headroom {b.headroom:+.0%} ({b.source})."
        )


def _threads(analysis: Analysis, base: str, replicas: int, model: CapacityModel | None) -> int:
    pts = analysis.points[analysis.points[Rpt.BASE_CONFIG] == base]
    if not pts.empty:
        w = float(pts[Point.BATCH_WORKERS].iloc[0])
        t = float(pts[Point.INTRA_THREADS].iloc[0])
        w = w if math.isfinite(w) else 1.0
        t = t if math.isfinite(t) and t > 0 else 1.0
        return int(replicas * w * t)
    if model is not None and base in model.services:
        st = model.services[base]
        return replicas * st.batch_workers * max(st.intra_threads, 1)
    return replicas


def _best_for(
    analysis: Analysis, base: str, model: CapacityModel | None, target: float, slo: SLOSpec
) -> Option | str:
    measured: dict[int, tuple[str, float]] = {}
    for config, cap in analysis.capacity.items():
        rows = analysis.points[analysis.points[Rpt.CONFIG] == config]
        if rows.empty or rows[Rpt.BASE_CONFIG].iloc[0] != base:
            continue
        measured[int(rows[Point.REPLICAS].iloc[0])] = (cap.status, cap.rate_rps)
    fitted = model is not None and base in model.services
    for n in range(1, MAX_REPLICAS + 1):
        status, rate = measured.get(n, ("", math.nan))
        if status == "interpolated" or status == "below_range":
            if status == "interpolated" and rate >= target:
                return Option(
                    base, n, rate, rate / target - 1, "measured", _threads(analysis, base, n, model)
                )
            continue  # measured, and it does not carry the target
        if status == "not_reached" and rate >= target:
            return Option(
                base,
                n,
                rate,
                rate / target - 1,
                "measured (lower bound)",
                _threads(analysis, base, n, model),
                note="the SLO held at every measured level, so capacity is at least this",
            )
        if not fitted:
            continue
        assert model is not None
        if model.max_throughput(base, n) < target:
            continue
        if model.predict(base, n, target).meets(slo):
            predicted = model.slo_capacity(base, n, slo)
            return Option(
                base,
                n,
                predicted,
                predicted / target - 1,
                "model",
                _threads(analysis, base, n, model),
                note="replica count not measured" if n not in measured else "",
            )
    if measured and all(status == "no_data" for status, _ in measured.values()):
        return "no valid points (see the points table for why)"
    if not fitted and measured:
        reason = model.unfitted.get(base, "") if model is not None else "no capacity model"
        return (
            f"no measured replica count carries {target:g} req/s and the capacity model "
            f"cannot extrapolate ({reason or 'not fitted'})"
        )
    return f"does not carry {target:g} req/s with up to {MAX_REPLICAS} replicas"


def recommend(
    analysis: Analysis,
    model: CapacityModel | None,
    target_rps: float | None,
    *,
    target_source: str = "spec",
) -> Recommendation:
    """Pick the configuration and replica count that meet the SLO at the target load.

    Args:
        analysis: The run's analysis (measured SLO capacity per configuration).
        model: The fitted capacity model, or ``None`` (measured replica counts only).
        target_rps: The load to carry; ``None`` gives an empty recommendation.
        target_source: Where the target came from, for the report.

    Returns:
        The recommendation.
    """
    slo = analysis.slo
    if target_rps is None or not target_rps > 0:
        return Recommendation(None, target_source, slo, None, [], {})
    options: list[Option] = []
    infeasible: dict[str, str] = {}
    for base in sorted(analysis.points[Rpt.BASE_CONFIG].unique()):
        result = _best_for(analysis, str(base), model, target_rps, slo)
        if isinstance(result, str):
            infeasible[str(base)] = result
        else:
            options.append(result)
    options.sort(
        key=lambda o: (
            o.replicas,
            o.cpu_threads,
            0 if o.source.startswith("measured") else 1,
            -o.headroom,
        )
    )
    return Recommendation(
        target_rps, target_source, slo, options[0] if options else None, options, infeasible
    )
