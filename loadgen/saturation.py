"""Saturation during an open-loop point: the queue grows without bound, so the point can stop.

An open-loop point offers its rate whatever the responses; past the service's capacity the
requests in flight pile up at (offered - served) per second and every later latency only
measures the pile. :class:`SaturationDetector` watches two signs over the last ``window_s``
seconds of the measured window, fed by the runner a few times a second, and says why once it
sees either: the in-flight count grew steadily by at least :data:`GROWTH` of the arrivals
(each third of the window above the one before by that much), or the load generator's sends stayed
behind their schedule by more than the lag threshold the whole time. Pure: no clock, no Locust.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

import numpy as np

__all__ = ["GROWTH", "MIN_RISE", "SaturationDetector"]

GROWTH: Final = 0.20
"""Share of the arrivals that must stay in flight: in-flight growing at 20% of the offered rate
is served below 83% of it, not a transient. A static batcher's in-flight count saw-tooths by a
batch's worth of arrivals, and 10% read that as growth on points well below capacity."""
MIN_RISE: Final = 8
"""Fewest extra requests in flight over the window: at low rates a few requests of Poisson
noise, or one batch's worth, must not read as growth."""


@dataclass
class SaturationDetector:
    """Watches one open-loop point (see the module docstring).

    Attributes:
        rate: Offered requests/s.
        window_s: How long a sign must last (``[run] saturation_s``); 0 disables.
        lag_threshold_s: Send backlog, in seconds of schedule, that counts as behind.
    """

    rate: float
    window_s: float
    lag_threshold_s: float
    _samples: deque[tuple[float, int, float]] = field(default_factory=deque, repr=False)

    def observe(self, t: float, in_flight: int, behind_s: float) -> str | None:
        """Add one sample; return why the point is saturated, or ``None``.

        Args:
            t: Seconds (any monotonic origin), increasing.
            in_flight: Requests sent and not finished.
            behind_s: How far the sends are behind their schedule, in seconds.
        """
        if self.window_s <= 0 or self.rate <= 0:
            return None
        s = self._samples
        s.append((t, in_flight, behind_s))
        while len(s) > 2 and s[1][0] <= t - self.window_s:
            s.popleft()
        if t - s[0][0] < self.window_s * 0.999 or len(s) < 6:
            return None
        ts = np.asarray([x[0] for x in s])
        n = np.asarray([x[1] for x in s], dtype=float)
        if all(x[2] > self.lag_threshold_s for x in s):
            return (
                f"sends stayed over {self.lag_threshold_s * 1000:.0f} ms behind schedule for "
                f"{self.window_s:g} s (now {behind_s:.2f} s): the load generator cannot offer "
                f"{self.rate:g} req/s"
            )
        # Growth that lasts: each third of the window holds more in flight than the one before,
        # by GROWTH of its arrivals; a ramp to a steady level flattens out in the last third.
        thirds = [part.mean() for part in np.array_split(n, 3)]
        step = GROWTH * self.rate * self.window_s / 3
        steady_growth = thirds[1] - thirds[0] >= step and thirds[2] - thirds[1] >= step
        if steady_growth and thirds[2] - thirds[0] >= MIN_RISE:
            slope = float(np.polyfit(ts - ts[0], n, 1)[0])
            return (
                f"requests in flight grew from {int(n[0])} to {in_flight} over {self.window_s:g} s "
                f"({slope:.1f}/s at {self.rate:g} req/s offered): the queue grows without bound"
            )
        return None
