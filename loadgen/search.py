"""SLO-edge search: the highest open-loop rate that meets the SLO, bracketed by measured points.

Pure decision logic, no Locust: :func:`next_rate` takes the probes measured so far and says
which offered rate to measure next (or ``None``: done), :func:`bracket` says what they found.
The runner (``[load] mode = "slo_search"``) measures each rate as an ordinary open-loop point
and judges it with :func:`judge`, which uses :func:`loadgen.summary.point_reasons` and
:func:`loadgen.summary.slo_check`, the verdicts the report applies to every point. Every probe
of a configuration sends one seeded rate-1 arrival sequence scaled by ``1 / rate``
(:func:`loadgen.arrivals.probe_offsets`), so the load a probe realises is monotonic in the rate
searched; probes are labelled by that realised scheduled rate.

The search starts at ``search_min_rate`` and doubles while points pass (up to
``search_max_rate``). Once a pass and a failure bracket the edge it interpolates on the worst
SLO term's ratio to its limit (the *margin*, 1 at the edge): its reciprocal is interpolated
linearly in the rate between the bracket's ends, which is exact for a queue whose latency grows
as 1 / (capacity - rate) (M/M/1). The probe is nudged by a third of the tolerance towards the end
still far from the estimate, so that an accurate estimate closes the bracket in one or two
points; it never lands within a quarter tolerance of a bracket end, so every point shrinks it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from loadgen.results import Point
from loadgen.spec import LoadSpec, SLOSpec
from loadgen.summary import point_reasons, slo_check, slo_terms

__all__ = [
    "P95_MIN_SAMPLES",
    "RATE_STEP",
    "Bounds",
    "Bracket",
    "Probe",
    "SearchStatus",
    "bracket",
    "judge",
    "next_rate",
]

RATE_STEP: Final = 2.0
"""Rate factor between points while every point so far passed (bracketing by doubling)."""
P95_MIN_SAMPLES: Final = 20
"""Fewest successful requests a probe's p95 verdict rests on (with ``[run] min_samples``, the
larger): below 20 the p95 is the sample maximum, and one slow request decides the probe."""


class SearchStatus:
    """Values of :attr:`Bracket.status`."""

    SEARCHING: Final = "searching"
    CONVERGED: Final = "converged"  # a pass and a failure within the tolerance
    MAX_POINTS: Final = "max_points"  # the point budget ran out first
    BELOW_MIN: Final = "below_min"  # even search_min_rate fails
    ABOVE_MAX: Final = "above_max"  # search_max_rate still passes


@dataclass(frozen=True)
class Bounds:
    """Where and how closely to search (the ``[load] search_*`` keys)."""

    min_rate: float
    max_rate: float
    tolerance: float
    max_points: int

    @classmethod
    def of(cls, load: LoadSpec) -> Bounds:
        """The spec's search bounds."""
        return cls(
            load.search_min_rate,
            load.search_max_rate,
            load.search_tolerance,
            load.search_max_points,
        )


@dataclass(frozen=True)
class Probe:
    """One measured rate.

    Attributes:
        rate: Nominal offered requests/s (what the search steers by).
        passed: Whether the point met the SLO and was valid (:func:`judge`).
        margin: The worst SLO term's value over its limit (at most 1 when the terms pass); NaN
            when no term could be measured.
        point_id: The point's id in the run directory.
        reason: Why it failed, ``""`` when it passed.
        scheduled_rate: Requests/s the probe's schedule put in its measured window (monotonic in
            :attr:`rate`, see the module docstring); NaN when unknown.
    """

    rate: float
    passed: bool
    margin: float = math.nan
    point_id: int = -1
    reason: str = ""
    scheduled_rate: float = math.nan

    @property
    def label_rate(self) -> float:
        """The realised scheduled rate, else the nominal one: what the probe is reported as."""
        return self.scheduled_rate if math.isfinite(self.scheduled_rate) else self.rate


@dataclass(frozen=True)
class Bracket:
    """What the probes found.

    Attributes:
        low: Highest passing rate below :attr:`high` (``None``: no rate passed).
        high: Lowest failing rate (``None``: no rate failed).
        status: A :class:`SearchStatus` value.
        points: Probes measured.
        tolerance: The relative width aimed for.
        note: Caveats, e.g. a rate above the bracket that passed again.
        low_scheduled: :attr:`low`'s probe's realised scheduled rate (``None``: unknown).
        high_scheduled: :attr:`high`'s, likewise. The sentence states these: the SLO verdicts
            are for the load the probes realised.
    """

    low: float | None
    high: float | None
    status: str
    points: int
    tolerance: float
    note: str = ""
    low_scheduled: float | None = None
    high_scheduled: float | None = None

    @property
    def shown(self) -> tuple[float | None, float | None]:
        """The ends as stated: realised scheduled rates where known, else nominal ones."""
        lo = self.low_scheduled if self.low_scheduled is not None else self.low
        hi = self.high_scheduled if self.high_scheduled is not None else self.high
        return lo, hi

    @property
    def width(self) -> float:
        """Relative width ``(high - low) / low``; NaN without both ends."""
        if self.low is None or self.high is None or self.low <= 0:
            return math.nan
        return (self.high - self.low) / self.low

    def describe(self) -> str:
        """One sentence, e.g. ``the SLO holds at 14.1 req/s and fails at 14.6 (3.5% apart)``."""
        n = f"{self.points} point{'s' if self.points != 1 else ''}"
        lo, hi = self.shown
        kind = "scheduled " if (self.low_scheduled, self.high_scheduled) != (None, None) else ""
        if self.status == SearchStatus.BELOW_MIN:
            return f"the SLO fails already at the lowest rate searched, {_r(hi)} {kind}req/s ({n})"
        if self.status == SearchStatus.ABOVE_MAX:
            return f"the SLO holds up to the highest rate searched, {_r(lo)} {kind}req/s ({n})"
        if lo is None or hi is None:
            return f"no bracket found in {n}"
        text = (
            f"the SLO holds at {_r(lo)} {kind}req/s and fails at {_r(hi)} {kind}req/s "
            f"({(hi - lo) / lo:.1%} apart, {n})"
        )
        if self.status == SearchStatus.MAX_POINTS:
            text += f"; wider than the {self.tolerance:.0%} tolerance: the point budget ran out"
        return text + (f"; {self.note}" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready fields, with the width."""
        return {**asdict(self), "width": None if math.isnan(self.width) else self.width}


def _r(rate: float | None) -> str:
    return "?" if rate is None else f"{rate:.3g}"


def bracket(probes: Sequence[Probe], bounds: Bounds) -> Bracket:
    """The bracket and status of some probes (in any order)."""
    fails = [p.rate for p in probes if not p.passed]
    high = min(fails) if fails else None
    passes = [p.rate for p in probes if p.passed and (high is None or p.rate < high)]
    low = max(passes) if passes else None
    note = ""
    if high is not None and any(p.passed and p.rate > high for p in probes):
        note = "a rate above the first failure passed again; the lowest failure bounds it"

    def scheduled(rate: float | None) -> float | None:
        hit = [p.scheduled_rate for p in probes if p.rate == rate]
        return hit[0] if rate is not None and hit and math.isfinite(hit[0]) else None

    def done(status: str) -> Bracket:
        return Bracket(
            low,
            high,
            status,
            len(probes),
            bounds.tolerance,
            note,
            scheduled(low),
            scheduled(high),
        )

    if low is not None and high is not None and (high - low) / low <= bounds.tolerance:
        return done(SearchStatus.CONVERGED)
    if high is not None and low is None and high <= bounds.min_rate * (1 + 1e-9):
        return done(SearchStatus.BELOW_MIN)
    if high is None and low is not None and low >= bounds.max_rate * (1 - 1e-9):
        return done(SearchStatus.ABOVE_MAX)
    if len(probes) >= bounds.max_points:
        return done(SearchStatus.MAX_POINTS)
    return done(SearchStatus.SEARCHING)


def next_rate(probes: Sequence[Probe], bounds: Bounds) -> float | None:
    """The next offered rate to measure, or ``None`` when the search is done.

    Args:
        probes: Every rate measured so far, with its verdict and margin.
        bounds: Search range, tolerance and point budget.

    Returns:
        Requests/s, within ``[bounds.min_rate, bounds.max_rate]``.
    """
    b = bracket(probes, bounds)
    if b.status != SearchStatus.SEARCHING:
        return None
    if b.low is None and b.high is None:
        return bounds.min_rate
    if b.high is None:
        assert b.low is not None
        return min(b.low * RATE_STEP, bounds.max_rate)
    if b.low is None:
        return max(b.high / RATE_STEP, bounds.min_rate)
    lo, hi, tol = b.low, b.high, bounds.tolerance
    by_rate = {p.rate: p for p in probes}
    # Illinois: when the last two probes moved the same end, the kept end's weight is halved,
    # so a curve much steeper on one side (a saturated failure) cannot stall the estimate.
    last = probes[-2:]
    kept = (
        ""
        if len(last) < 2 or last[0].passed != last[1].passed
        else "low"
        if not last[1].passed
        else "high"
    )
    estimate = _interpolate(by_rate[lo], by_rate[hi], halve=kept)
    # Aim beside the estimate, on the side whose bracket end is still far from it.
    side = 1.0 if hi / estimate > estimate / lo else -1.0
    rate = estimate * (1.0 + side * tol / 3.0)
    return min(max(rate, lo * (1.0 + tol / 4.0)), hi / (1.0 + tol / 4.0))


def _interpolate(lo: Probe, hi: Probe, *, halve: str = "") -> float:
    """Where 1 / margin crosses 1 (the SLO edge) between two probes, with the ``halve`` end's
    distance from the edge halved; else their geometric mean (a failure with no term over its
    limit says nothing about where the edge is)."""
    a, b = lo.margin, hi.margin
    if not (a > 0 and b > 1 and math.isfinite(a) and math.isfinite(b) and b > a):
        return math.sqrt(lo.rate * hi.rate)
    fa, fb = 1.0 / a - 1.0, 1.0 / b - 1.0  # >= 0 at a pass, < 0 at a failure
    fa, fb = (fa / 2 if halve == "low" else fa), (fb / 2 if halve == "high" else fb)
    return lo.rate + fa / (fa - fb) * (hi.rate - lo.rate)


def judge(
    summary: Mapping[str, Any],
    slo: SLOSpec,
    *,
    lag_threshold_s: float,
    min_samples: int,
    scheduled_rate: float = math.nan,
) -> Probe:
    """Judge one measured point as the report would: valid (:func:`point_reasons`, the report's
    rules) on at least :data:`P95_MIN_SAMPLES` successes, and every SLO term met.

    Args:
        summary: The point's ``points.csv`` row (:class:`loadgen.results.Point` keys).
        slo: The objective.
        lag_threshold_s: ``[run] lag_threshold_s``.
        min_samples: ``[run] min_samples`` (raised to :data:`P95_MIN_SAMPLES`).
        scheduled_rate: Requests/s the probe's schedule put in its measured window.

    Returns:
        The probe (rate: the point's nominal offered rate).
    """
    failed = slo_check(summary, slo)
    reasons = point_reasons(
        summary,
        open_loop=True,
        lag_threshold_s=lag_threshold_s,
        min_samples=max(min_samples, P95_MIN_SAMPLES),
    )
    if failed:
        reasons.append(f"fails {failed}")
    ratios = [
        float(summary.get(col, math.nan)) / limit
        for limit, col, _ in slo_terms(slo)
        if limit > 0 and math.isfinite(float(summary.get(col, math.nan)))
    ]
    return Probe(
        rate=float(summary.get(Point.OFFERED_RPS, summary.get(Point.LOAD_LEVEL, math.nan))),
        passed=not reasons,
        margin=max(ratios) if ratios else math.nan,
        point_id=int(summary.get(Point.POINT_ID, -1)),
        reason="; ".join(reasons),
        scheduled_rate=scheduled_rate,
    )
