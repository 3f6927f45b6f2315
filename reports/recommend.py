"""The recommendation: which configuration, how many replicas, for a target load under the SLO.

Measured capacity comes from the open-loop points when the run has any (:func:`basis`). For
each base configuration, replica counts are tried from one upwards. A replica count the
sweep measured is judged by its measured SLO capacity (interpolated); one it did not measure (or
whose measured capacity is only a lower bound below the target) is judged by the capacity
model's prediction at the target rate. The winner needs the fewest replicas, then the fewest CPU
threads (replicas x batch workers x intra threads; spare workers are not counted, since they
start batches only while the running ones are nearly empty, far below the capacity a target
asks for), prefers measured over predicted evidence, and then the most headroom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

from loadgen.results import Point
from loadgen.spec import SLOSpec
from reports.analysis import Analysis
from reports.capacity import CapacityModel
from reports.load import Rpt
from reports.quality import cost_sentence, quality_table
from service.models.quality import QualityReport

__all__ = ["Option", "Recommendation", "basis", "recommend"]

MAX_REPLICAS: Final = 64


@dataclass(frozen=True)
class Option:
    """The smallest deployment of one base configuration that carries the target.

    Attributes:
        base_config_id: What each replica runs (:attr:`Rpt.BASE_CONFIG_ID`).
        base_config: Its label.
        replicas: How many.
        capacity_rps: Highest rate meeting the SLO at that replica count.
        headroom: ``capacity / target - 1``.
        source: ``measured`` (interpolated from the sweep), ``measured (lower bound)`` (the SLO
            held at every measured level) or ``model`` (capacity model prediction).
        cpu_threads: replicas x batch workers x intra threads.
        note: Caveats.
    """

    base_config_id: str
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
        infeasible: Base configurations (by id) that cannot, with the reason.
        base_labels: The label of every base configuration id considered.
        basis: Which measured points it rests on (:func:`basis`).
        quality: What the recommended quantization costs in quality (``quality.json``), e.g.
            ``int8: +1.9 % perplexity, ...``; ``""`` without a quality report.
    """

    target_rps: float | None
    target_source: str
    slo: SLOSpec
    best: Option | None
    options: list[Option]
    infeasible: dict[str, str]
    base_labels: dict[str, str] = field(default_factory=dict)
    basis: str = ""
    quality: str = ""

    def infeasible_by_label(self) -> list[tuple[str, str]]:
        """(label, reason) of every base configuration that cannot carry the target, by label."""
        return sorted((self.base_labels.get(b, b), why) for b, why in self.infeasible.items())

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
            + (f" Quality it costs: {self.quality}." if self.quality else "")
        )


def _threads(analysis: Analysis, base: str, replicas: int, model: CapacityModel | None) -> int:
    pts = analysis.points[analysis.points[Rpt.BASE_CONFIG_ID] == base]
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


def _measured(analysis: Analysis, base: str) -> dict[int, tuple[str, float]]:
    """Per measured replica count of a base configuration: its capacity status and rate.

    Where the run has open-loop points, only their curves count (:func:`basis`).
    """
    open_only = analysis.has_open_loop
    measured: dict[int, tuple[str, float]] = {}
    for key, cap in analysis.capacity.items():
        rows = analysis.points[analysis.points[Rpt.CONFIG_KEY] == key]
        if rows.empty or rows[Rpt.BASE_CONFIG_ID].iloc[0] != base:
            continue
        if open_only and not rows[Rpt.OPEN_LOOP].any():
            continue
        measured[int(rows[Point.REPLICAS].iloc[0])] = (cap.status, cap.rate_rps)
    return measured


def basis(analysis: Analysis) -> str:
    """Which measured points a recommendation rests on, in one sentence.

    Open-loop points when the run has any: their clients arrive independently of the server,
    as real traffic does, while closed-loop users pace themselves to it (and may ride its
    batches in lockstep). Closed-loop points only when there is nothing else.
    """
    pts = analysis.points
    n_open = int(pts[Rpt.OPEN_LOOP].sum()) if len(pts) else 0
    n_closed = len(pts) - n_open
    if n_open and n_closed:
        return (
            f"Measured evidence: the {n_open} open-loop points only; the {n_closed} closed-loop "
            "points are shown for reference and not used."
        )
    if n_open:
        return f"Measured evidence: {n_open} open-loop points."
    if not n_closed:
        return ""
    text = (
        f"Measured evidence: {n_closed} closed-loop points (the spec has no open-loop "
        "points); closed-loop users wait for their own responses, so the rates are what that "
        "many users sustain, not independent arrivals."
    )
    sync = pts[pts[Rpt.SYNCHRONISED] & pts[Point.VALID]]
    if len(sync):
        ids = ", ".join(str(int(i)) for i in sorted(sync[Point.POINT_ID]))
        text += (
            f" {'Point' if len(sync) == 1 else 'Points'} {ids} stayed synchronised (see "
            "Points): their TTFT likely understates what independent clients would see."
        )
    return text


def _best_for(
    analysis: Analysis,
    base: str,
    label: str,
    model: CapacityModel | None,
    target: float,
    slo: SLOSpec,
) -> Option | str:
    measured = _measured(analysis, base)
    fitted = model is not None and base in model.services

    def option(n: int, rate: float, source: str, note: str = "") -> Option:
        threads = _threads(analysis, base, n, model)
        return Option(base, label, n, rate, rate / target - 1, source, threads, note)

    for n in range(1, MAX_REPLICAS + 1):
        status, rate = measured.get(n, ("", math.nan))
        if status == "interpolated" or status == "below_range":
            if status == "interpolated" and rate >= target:
                return option(n, rate, "measured")
            continue  # measured, and it does not carry the target
        if status == "not_reached" and rate >= target:
            note = "the SLO held at every measured level, so capacity is at least this"
            return option(n, rate, "measured (lower bound)", note)
        if not fitted:
            continue
        assert model is not None
        if model.max_throughput(base, n) < target:
            continue
        if model.predict(base, n, target).meets(slo):
            note = "replica count not measured" if n not in measured else ""
            return option(n, model.slo_capacity(base, n, slo), "model", note)
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
    quality: QualityReport | None = None,
) -> Recommendation:
    """Pick the configuration and replica count that meet the SLO at the target load.

    Args:
        analysis: The run's analysis (measured SLO capacity per configuration).
        model: The fitted capacity model, or ``None`` (measured replica counts only).
        target_rps: The load to carry; ``None`` gives an empty recommendation.
        target_source: Where the target came from, for the report.
        quality: The run's quality report: the recommendation then states what its
            quantization costs in quality (:func:`reports.quality.cost_sentence`).

    Returns:
        The recommendation.
    """
    slo = analysis.slo
    if target_rps is None or not target_rps > 0:
        return Recommendation(None, target_source, slo, None, [], {})
    options: list[Option] = []
    infeasible: dict[str, str] = {}
    pts = analysis.points
    labels = dict(zip(pts[Rpt.BASE_CONFIG_ID], pts[Rpt.BASE_CONFIG], strict=True))
    # In label order: the ranking below is stable, so ties keep it.
    for base, label in sorted(labels.items(), key=lambda kv: (kv[1], kv[0])):
        result = _best_for(analysis, base, label, model, target_rps, slo)
        if isinstance(result, str):
            infeasible[base] = result
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
    best = options[0] if options else None
    cost = ""
    if best is not None and quality is not None:
        rows = pts[pts[Rpt.BASE_CONFIG_ID] == best.base_config_id]
        cost = cost_sentence(
            quality_table(analysis, quality), quality, str(rows[Point.QUANTIZATION].iloc[0])
        )
    return Recommendation(
        target_rps, target_source, slo, best, options, infeasible, labels, basis(analysis), cost
    )
