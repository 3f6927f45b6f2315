"""Keeps the garbage collector's full passes out of a point's measured window.

A point keeps every request's row (a dict with a list of token gaps) until it ends: tens of
thousands of tracked objects that live as long as the point. CPython's full collection walks
all of them, in one pause of tens of milliseconds at a few thousand rows a second, and every
send due in that pause goes out late: ``tokenbooth bench loadgen`` showed send lag p95 of
56 ms at 2,500 requests/s with the harness's CPU at 77 % (1.2 ms with this guard). While the
guard is held, :meth:`GcGuard.tick` (called a few times a second by the loop that waits on the
point) moves everything allocated so far into the permanent generation (:func:`gc.freeze`), so
collections only look at what is new; leaving the guard unfreezes and collects, between points.
Garbage cycles made during the point wait until then: memory grows by at most one point's
worth, which ``max_requests`` and the window bound.
"""

from __future__ import annotations

import gc
from types import TracebackType

__all__ = ["GcGuard"]


class GcGuard:
    """Context manager: collections skip what a point allocated so far; collected at exit."""

    def __enter__(self) -> GcGuard:
        gc.collect()  # start the point with nothing left over from the last one
        gc.freeze()
        return self

    def tick(self) -> None:
        """Move everything allocated so far out of the collector's view (O(1))."""
        gc.freeze()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        gc.unfreeze()
        gc.collect()
