"""Batch formation rules as pure functions: the batcher runs them, the capacity model replays them.

Kept apart from :mod:`service.batcher` so that :mod:`reports.capacity.simulate` can call the
very rule the service applies (reports never import the batcher or the engine).
"""

from __future__ import annotations

from collections.abc import Iterable

from service.settings import ADAPTIVE_BURST_QUIET, SPARE_WORKER_MEAN_BATCH

__all__ = ["adaptive_due_at", "returned_all", "worker_available"]


def adaptive_due_at(
    head: float,
    newest: float,
    last_done: float,
    delay_s: float,
    hold_cap_s: float,
    *,
    returned_all: bool = False,
) -> float:
    """When a non-full bucket is due under the adaptive policy (times on one clock).

    Once no request has joined for the quiet gap, counted from the newest join or from the
    end of the latest batch, whichever is later; at most ``hold_cap_s`` after the later of the
    oldest request's arrival and that end. The quiet gap is ``delay_s``, or
    ``ADAPTIVE_BURST_QUIET`` times it when the bucket is filling within the hold limit after a
    batch ended: the clients of that batch re-sending (closed loop) come in a burst, and
    requests that waited through the batch are held for them instead of leaving as a partial
    batch that strands the burst behind a whole batch. A lone request long after the last
    batch waits ``delay_s`` only, and so does a bucket that ``returned_all``: as many requests
    joined it since that end as the ended batch held (a lone closed-loop user's next request is
    no burst to wait for). The capacity model replays this same function.
    """
    since_done = newest - last_done
    if returned_all or since_done > hold_cap_s:  # no burst to wait for (last_done -inf: none)
        return min(newest + delay_s, head + hold_cap_s)
    anchor = max(newest, last_done)
    return min(anchor + delay_s * ADAPTIVE_BURST_QUIET, max(head, last_done) + hold_cap_s)


def returned_all(arrivals_newest_first: Iterable[float], last_done: float, last_size: int) -> bool:
    """Whether as many requests joined since the latest batch ended (at ``last_done``) as it
    held (``last_size``): its clients are all back. Reads at most ``last_size`` arrivals."""
    joined = 0
    for at in arrivals_newest_first:
        if joined >= last_size or at < last_done:
            break
        joined += 1
    return joined >= last_size


def worker_available(busy: int, running: int, batch_workers: int, spare_workers: int) -> bool:
    """Whether a new batch may start now, with ``busy`` workers computing ``running`` requests.

    A regular worker takes any due batch. Past ``batch_workers``, a spare worker takes one only
    while the running batches hold fewer than ``SPARE_WORKER_MEAN_BATCH`` requests each on
    average: nearly empty batches leave the cores room for another thread, whose batch starts
    at once instead of a whole batch later; fuller ones keep the cores to themselves. The
    capacity model replays this same rule.
    """
    if busy < batch_workers:
        return True
    if busy >= batch_workers + spare_workers:
        return False
    return running < SPARE_WORKER_MEAN_BATCH * busy
