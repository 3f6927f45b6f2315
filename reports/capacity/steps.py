"""Decode steps of CTranslate2's static batches: when each request's tokens come, what a step costs.

``generate_batch`` prefills the prompts of a batch up to the shortest one, then forces the
longer prompts' remaining tokens through ordinary decode steps, one per token, until the
batch's last request is done; a request stops costing compute after its last token. These
functions turn measured (prompt, output) lengths into step counts and step counts into time.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "FloatArray",
    "decode_step_table",
    "expected_max",
    "interpolate_steps",
    "request_steps",
    "step_clock",
]

FloatArray = npt.NDArray[np.float64]

_STEP_DRAWS: Final = 4000
"""Batches drawn per batch size in :func:`decode_step_table` (seeded, so tables repeat)."""


def expected_max(tokens: FloatArray, b: float) -> float:
    """Expected largest of ``b`` draws (with replacement) from an empirical distribution.

    Args:
        tokens: Samples (e.g. completion tokens per request).
        b: Draws; a fractional count interpolates linearly between its neighbours.

    Returns:
        ``E[max]``; NaN without samples.
    """
    x = np.sort(np.asarray(tokens, dtype=float))
    n = x.size
    if n == 0:
        return math.nan
    if b <= 1:
        return float(x.mean())
    cdf = np.arange(1, n + 1) / n
    prev = np.arange(0, n) / n

    def em(k: int) -> float:
        return float(np.sum(x * (cdf**k - prev**k)))

    lo = math.floor(b)
    frac = b - lo
    return em(lo) if frac == 0 else (1 - frac) * em(lo) + frac * em(lo + 1)


def request_steps(prompts: Sequence[int], outputs: Sequence[int]) -> tuple[list[int], list[int]]:
    """Decode steps after the batch's prefill at which each request's first and last token come.

    CTranslate2's ``generate_batch`` runs the prompts up to the shortest one in one pass
    (the prefill, which yields the first token of the shortest requests) and then forces the
    remaining prompt tokens of the longer ones through ordinary decode steps, one per token:
    request ``i`` gets its first token ``L_i - min L`` steps after the prefill and its last
    ``L_i - min L + T_i - 1`` steps after it (``L`` prompt, ``T`` output tokens).

    Args:
        prompts: Prompt tokens per request of one batch.
        outputs: Output tokens per request.

    Returns:
        (first-token step, last-token step) per request.
    """
    m = min(prompts) if len(prompts) else 0
    first = [int(p) - m for p in prompts]
    last = [f + max(int(t), 1) - 1 for f, t in zip(first, outputs, strict=True)]
    return first, last


def step_clock(last: Sequence[int], s0: float, s1: float) -> Callable[[int], float]:
    """Time from the end of the prefill to the end of decode step ``k`` of one batch.

    A request stops costing compute after its last token (the batcher ends its index), so
    step ``k`` takes ``s0 + s1 a_k`` with ``a_k`` the requests whose last step is ``k`` or later.

    Args:
        last: Last-token step of each request (:func:`request_steps`).
        s0: Fixed cost of one decode step.
        s1: Cost per active sequence.

    Returns:
        ``k -> seconds``.
    """
    ends = sorted(last)
    n = len(ends)
    knots = [0]
    times = [0.0]
    for idx, e in enumerate(ends):
        if e > knots[-1]:
            times.append(times[-1] + (e - knots[-1]) * (s0 + s1 * (n - idx)))
            knots.append(e)

    def at(k: int) -> float:
        j = bisect.bisect_left(knots, k)
        if j < len(knots) and knots[j] == k:
            return times[j]
        if j >= len(knots):
            return times[-1] + (k - knots[-1]) * s0
        rate = (times[j] - times[j - 1]) / (knots[j] - knots[j - 1])
        return times[j - 1] + (k - knots[j - 1]) * rate

    return at


def decode_step_table(
    prompts: npt.NDArray[np.int64], outputs: npt.ArrayLike, max_batch_size: int
) -> tuple[tuple[float, float], ...]:
    """Expected decode steps of a batch of ``b = 1 .. max_batch_size`` requests drawn (with
    replacement) from the measured (prompt, output) pairs: (steps of its longest request,
    steps summed over its requests, i.e. sequence-steps of compute). Seeded Monte Carlo;
    exact when every request has the same shape.

    Args:
        prompts: Prompt tokens per measured request.
        outputs: Output tokens per measured request (same order).
        max_batch_size: Largest batch.

    Returns:
        One (longest, total) pair per batch size, from 1.
    """
    out = np.maximum(np.asarray(outputs, dtype=np.int64), 1)
    pr = np.asarray(prompts, dtype=np.int64)
    if out.size == 0:
        return ((math.nan, math.nan),) * max(max_batch_size, 1)
    if pr.size != out.size:
        pr = np.zeros_like(out)
    rng = np.random.default_rng(0)
    table: list[tuple[float, float]] = []
    for b in range(1, max(max_batch_size, 1) + 1):
        if b == 1:
            mean = float(out.mean() - 1)
            table.append((mean, mean))
            continue
        idx = rng.integers(0, out.size, size=(_STEP_DRAWS, b))
        p = pr[idx]
        last = p - p.min(axis=1, keepdims=True) + out[idx] - 1
        table.append((float(last.max(axis=1).mean()), float(last.sum(axis=1).mean())))
    return tuple(table)


def interpolate_steps(table: Sequence[tuple[float, float]], b: float) -> tuple[float, float]:
    """(longest, total) decode steps at a fractional batch size, linear between sizes."""
    if not table:
        return math.nan, math.nan
    b = min(max(b, 1.0), float(len(table)))
    lo = math.floor(b)
    frac = b - lo
    a = table[lo - 1]
    if frac == 0 or lo >= len(table):
        return a
    c = table[lo]
    return (1 - frac) * a[0] + frac * c[0], (1 - frac) * a[1] + frac * c[1]
