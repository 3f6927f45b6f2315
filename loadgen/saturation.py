"""Saturation during an open-loop point: the queue grows without bound, so the point can stop.

An open-loop point offers its rate whatever the responses; past the service's capacity the
requests in flight pile up at (offered - served) per second and every later latency only
measures the pile. :class:`SaturationDetector` watches two signs, fed by the runner a few times
a second, and says why once it sees either:

* served below offered: over every trailing ``window_s`` of a sustained span, the requests that
  finished fell short of those sent by more than :data:`BACKLOG_SHARE` of the sends (and by at
  least :data:`MIN_RISE` requests). The span is ``window_s`` or :data:`CYCLES` times the longest
  gap seen between completions, whichever is longer: a static batcher finishes a batch at a
  time, so its in-flight count rises for a batch's duration and then drops by a batch, and over
  one such cycle the served count catches up with the sent one; a queue that grows without
  bound never catches up. No verdict before the first completion (the cycle is unknown).
* sends behind: the load generator's sends stayed behind their schedule by more than the lag
  threshold for the whole ``window_s``.

The served-vs-sent sign can be switched off (``growth=False``): a trace replay's bursts overload
the service for a while by design and must not end the replay. Pure: no clock, no Locust.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Final, NamedTuple

__all__ = ["BACKLOG_SHARE", "CYCLES", "MIN_RISE", "SaturationDetector"]

BACKLOG_SHARE: Final = 0.20
"""Share of the sends that must stay unserved over a window: served below 80% of the offered
rate for a sustained span is a queue that grows without bound, not Poisson noise."""
MIN_RISE: Final = 8
"""Fewest requests sent and not served over a window: at low rates a few requests of Poisson
noise must not read as growth."""
CYCLES: Final = 2.0
"""Completion gaps the sustained span covers at least: the longest gap between completions
bounds a static batcher's cycle, and over a whole cycle its served count catches up."""


class _Sample(NamedTuple):
    t: float
    in_flight: int
    behind_s: float
    sent: int


@dataclass
class SaturationDetector:
    """Watches one open-loop point (see the module docstring).

    Attributes:
        rate: Offered requests/s (for the messages; the served sign uses the counted sends).
        window_s: How long a sign must last (``[run] saturation_s``); 0 disables.
        lag_threshold_s: Send backlog, in seconds of schedule, that counts as behind.
        growth: Whether the served-below-offered sign is watched (off for trace replays).
    """

    rate: float
    window_s: float
    lag_threshold_s: float
    growth: bool = True
    _samples: deque[_Sample] = field(default_factory=deque, repr=False)
    _cycle_s: float = field(default=0.0, repr=False)
    _last_completion: float = field(default=math.nan, repr=False)
    _t0: float = field(default=math.nan, repr=False)

    @property
    def span_s(self) -> float:
        """How long the served-below-offered sign must hold: ``window_s`` or
        :data:`CYCLES` times the longest completion gap seen, whichever is longer."""
        return max(self.window_s, CYCLES * self._cycle_s)

    def observe(self, t: float, in_flight: int, behind_s: float, sent: int) -> str | None:
        """Add one sample; return why the point is saturated, or ``None``.

        Args:
            t: Seconds (any monotonic origin), increasing.
            in_flight: Requests sent and not finished.
            behind_s: How far the sends are behind their schedule, in seconds.
            sent: Requests sent so far (cumulative, any origin): finished = sent - in_flight.
        """
        if self.window_s <= 0 or self.rate <= 0:
            return None
        s = self._samples
        if s and sent - in_flight > s[-1].sent - s[-1].in_flight:
            # A completion since the last sample closes the gap since the one before (or since
            # the first sample: a batch may have been running when the watch began).
            since = self._last_completion if math.isfinite(self._last_completion) else self._t0
            self._cycle_s = max(self._cycle_s, t - since)
            self._last_completion = t
        if not s:
            self._t0 = t
        s.append(_Sample(t, in_flight, behind_s, sent))
        keep = self.span_s + self.window_s
        while len(s) > 2 and s[1].t <= t - keep:
            s.popleft()
        recent = [x for x in s if x.t >= t - self.window_s]
        covered = t - s[0].t >= self.window_s * 0.999 and len(recent) >= 6
        if covered and all(x.behind_s > self.lag_threshold_s for x in recent):
            return (
                f"sends stayed over {self.lag_threshold_s * 1000:.0f} ms behind schedule for "
                f"{self.window_s:g} s (now {behind_s:.2f} s): the load generator cannot offer "
                f"{self.rate:g} req/s"
            )
        return self._served_below_offered() if self.growth else None

    def _served_below_offered(self) -> str | None:
        if not math.isfinite(self._last_completion):
            return None  # no completion yet: the service's cycle is still unknown
        s = list(self._samples)
        t, span, w = s[-1].t, self.span_s, self.window_s
        if t - s[0].t < (span + w) * 0.999:
            return None
        times = [x.t for x in s]
        ends = [i for i, x in enumerate(s) if x.t >= t - span]
        if len(ends) < 6:
            return None
        for i in ends:
            j = bisect.bisect_right(times, s[i].t - w) - 1
            if j < 0:
                return None
            sent = s[i].sent - s[j].sent
            unserved = s[i].in_flight - s[j].in_flight  # sent minus finished in the window
            if sent <= 0 or unserved < MIN_RISE or unserved <= BACKLOG_SHARE * sent:
                return None
        first = s[bisect.bisect_right(times, t - span - w) - 1]
        served = ((s[-1].sent - s[-1].in_flight) - (first.sent - first.in_flight)) / (t - first.t)
        sent_rate = (s[-1].sent - first.sent) / (t - first.t)
        return (
            f"served {served:.2f} req/s of {sent_rate:.2f} sent ({self.rate:g} offered) over every "
            f"{w:g} s for {span:g} s, requests in flight {first.in_flight} -> {s[-1].in_flight}: "
            "the queue grows without bound"
        )
