"""Stage profiles (``[load] stages``): the load level over time, its Locust shape ticks, and the
open-loop schedule that follows it.

A profile is a warm-up ``lead_s`` at the first stage's starting level, then each stage in turn,
held or ramped linearly. Closed-loop stages change the number of users: Locust's
``LoadTestShape`` asks :meth:`StageProfile.tick` once a second (``loadgen.profile`` holds the
shape). Open-loop stages change the arrival rate: a rate-1 process (constant, Poisson or gamma,
:func:`loadgen.arrivals.unit_arrivals`) is mapped through the inverse of the cumulative rate
``Λ(t)``, so the count in any window has mean ``Λ(b) - Λ(a)`` and the arrival kind's dispersion,
without thinning's discarded draws. Pure: no Locust import, unit-tested directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from loadgen.arrivals import ArrivalKind, unit_arrivals
from loadgen.spec import Stage

__all__ = ["STEP_SPREAD_S", "StageProfile", "spawn_rates", "users_reached"]

FloatArray = npt.NDArray[np.float64]

STEP_SPREAD_S: Final = 0.1
"""Seconds a closed-loop stage change spreads its new users' starts over: well inside one tick."""


class StageProfile:
    """A profile's level as a function of run time (seconds since the profile started)."""

    def __init__(self, stages: Sequence[Stage], lead_s: float = 0.0) -> None:
        if not stages:
            raise ValueError("a profile needs at least one stage")
        if lead_s < 0:
            raise ValueError("lead_s must be >= 0")
        self.stages = tuple(stages)
        self.lead_s = float(lead_s)
        # Segment k covers run time [edges[k], edges[k+1]); segment 0 is the lead (warm-up).
        durations = [self.lead_s] + [st.duration_s for st in self.stages]
        self._edges: FloatArray = np.concatenate([[0.0], np.cumsum(durations)])
        starts = [self.stages[0].start] + [st.start for st in self.stages]
        ends = [self.stages[0].start] + [st.end for st in self.stages]
        self._a: FloatArray = np.asarray(starts, dtype=np.float64)
        self._b: FloatArray = np.asarray(ends, dtype=np.float64)
        self._d: FloatArray = np.asarray(durations, dtype=np.float64)
        # Expected arrivals by each edge (open loop): each segment adds its mean rate x length.
        self._cum: FloatArray = np.concatenate(
            [[0.0], np.cumsum((self._a + self._b) / 2 * self._d)]
        )

    @property
    def total_s(self) -> float:
        """Run time at the end of the last stage (lead included)."""
        return float(self._edges[-1])

    def windows(self) -> list[tuple[float, float]]:
        """Each stage's ``[start, end)`` in run time: its measured window."""
        return [(float(self._edges[k]), float(self._edges[k + 1])) for k in range(1, len(self._d))]

    def level_at(self, t: float) -> float:
        """The level (users, or requests/s) at run time ``t``; the last stage's end after it."""
        if t >= self.total_s:
            return float(self._b[-1])
        k = max(int(np.searchsorted(self._edges, t, side="right")) - 1, 0)
        d = self._d[k]
        frac = (t - self._edges[k]) / d if d > 0 else 0.0
        return float(self._a[k] + (self._b[k] - self._a[k]) * frac)

    def tick(
        self, t: float, *, ramp_rate: float, step_rate: float, hold_s: float = 0.0
    ) -> tuple[int, float] | None:
        """What a ``LoadTestShape`` returns at run time ``t``: (users, spawn rate), or None.

        Users are the level rounded to whole users. The first users start at ``ramp_rate``
        during the lead (the de-synchronising start ramp); every later change uses
        ``step_rate``, fast enough that a step reaches its users within one tick. After the last
        stage the last level is held ``hold_s`` more (in-flight requests finish rather than
        being cut off), then None: Locust stops the test.
        """
        if t > self.total_s + hold_s:
            return None
        rate = ramp_rate if t < self.lead_s else step_rate
        return max(round(self.level_at(t)), 0), rate

    def peak(self) -> float:
        """The highest level anywhere in the profile (users, or requests/s)."""
        return float(max(self._a.max(), self._b.max()))

    def stage_of(self, t: FloatArray | Sequence[float]) -> npt.NDArray[np.int64]:
        """The stage each run time falls in: -1 in the lead (warm-up), ``len(stages)`` after."""
        arr = np.asarray(t, dtype=np.float64)
        seg = np.searchsorted(self._edges, arr, side="right") - 1
        out: npt.NDArray[np.int64] = np.clip(seg, 0, len(self._d)).astype(np.int64) - 1
        return out

    def cumulative(self, t: float) -> float:
        """``Λ(t)``: expected open-loop arrivals by run time ``t`` (the rate's integral)."""
        t = min(max(t, 0.0), self.total_s)
        k = min(int(np.searchsorted(self._edges, t, side="right")) - 1, len(self._d) - 1)
        u = t - self._edges[k]
        a, b, d = self._a[k], self._b[k], self._d[k]
        slope = (b - a) / d if d > 0 else 0.0
        return float(self._cum[k] + a * u + slope * u * u / 2)

    def inverse_cumulative(self, s: FloatArray) -> FloatArray:
        """Run times at which ``Λ`` reaches each ``s`` (0 <= s <= ``Λ(total_s)``), vectorised."""
        s = np.asarray(s, dtype=np.float64)
        k = np.clip(np.searchsorted(self._cum, s, side="right") - 1, 0, len(self._d) - 1)
        rem = s - self._cum[k]
        a, b, d = self._a[k], self._b[k], self._d[k]
        slope = np.divide(b - a, d, out=np.zeros_like(d), where=d > 0)
        # u solves a u + slope u²/2 = rem; this form stays exact at slope 0 and at a = 0.
        root = np.sqrt(np.maximum(a * a + 2 * slope * rem, 0.0))
        denom = a + root
        u = np.divide(2 * rem, denom, out=np.zeros_like(rem), where=denom > 0)
        out: FloatArray = self._edges[k] + np.minimum(u, d)
        return out

    def schedule(self, kind: ArrivalKind, *, burstiness: float = 1.0, seed: int = 0) -> FloatArray:
        """Open-loop send times (run time) over the whole profile, lead included."""
        horizon = float(self._cum[-1])
        unit = unit_arrivals(kind, horizon, burstiness=burstiness, seed=seed)
        times = self.inverse_cumulative(unit)
        out: FloatArray = times[times < self.total_s]
        return out

    def describe(self) -> str:
        """One line, e.g. ``2 req/s for 30 s, 1→8 req/s over 20 s``, for logs."""
        parts = []
        for st in self.stages:
            unit = "req/s" if st.mode == "rate" else "users"
            level = f"{st.start:g}→{st.end:g}" if st.is_ramp else f"{st.start:g}"
            parts.append(f"{level} {unit} {'over' if st.is_ramp else 'for'} {st.duration_s:g} s")
        return ", ".join(parts) + (f" (after {self.lead_s:g} s warm-up)" if self.lead_s else "")


def spawn_rates(first_users: int, ramp_s: float, peak_users: float) -> tuple[float, float]:
    """Locust spawn rates (users/s) of a closed-loop profile: (first users, later changes).

    The first users start over the ramp (``ramp_s``; 0 or less: all at once). A later stage
    change is a step, not a ramp: it starts its users within :data:`STEP_SPREAD_S`, so even a
    step to the profile's peak is complete long before the next shape tick.
    """
    users0 = max(first_users, 1)
    ramp_rate = users0 / ramp_s if ramp_s > 0 else users0 / STEP_SPREAD_S
    return ramp_rate, max(peak_users, 1.0) / STEP_SPREAD_S


def users_reached(samples: list[tuple[float, int]], window: tuple[float, float]) -> int:
    """The most users Locust ran at any sample time within ``window`` (0 when none fell in)."""
    start, end = window
    return max((n for t, n in samples if start <= t < end), default=0)
