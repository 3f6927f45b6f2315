"""Capacity model: a batch-service queue fitted from the sweep, simulated for unmeasured loads.

Each replica is the service's dynamic batcher: requests queue, a free batch worker takes up to
``max_batch_size`` of them as soon as that many wait or ``max_batch_delay`` after the oldest
arrived, and the batch runs on CTranslate2's static ``generate_batch``: one prefill over the
prompts up to the shortest one, then decode steps, the longer prompts' remaining tokens forced
through the first of them, until its last request is done. A request's tokens therefore start
``L_i - min L`` steps after the prefill, and a request stops costing compute after its last
token. The model fits, per base configuration (what one replica runs), from the server's own
metrics:

* prefill per batch ``= p0 + p1 b`` (``tokenbooth_batch_prefill_seconds`` against
  ``tokenbooth_batch_size``), and
* one decode step ``= s0 + s1 a`` with ``a`` the sequences still active
  (``tokenbooth_batch_decode_seconds`` against the expected steps of a batch of ``b``, drawn from
  the measured (prompt, output) lengths),

both by non-negative least squares over the measured points, plus the client-side overhead (client
TTFT minus server TTFT), and two mechanisms that decide how closed-loop users spread over
batches and how replicas share a CPU host:

* the race between a batch's last request and the batch's release of its worker (counted in the
  client rows: how often the user's next request still joined the next batch), and
* CPU demand: cores per busy batch worker (``process_cpu_seconds_total`` over batch busy time)
  and the load generator's CPU per request; beyond the host's cores every step slows in
  proportion (processor sharing).

Predictions replay that queue in a discrete-event simulation with Poisson arrivals (or
closed-loop users) spread over ``N`` replicas by the sweep's balancing rule, over the same
measured window as the sweep, and read p95 TTFT and throughput off the simulated requests
exactly as the analysis reads them off real ones.

Use :func:`fit` (data frames, as :class:`loadgen.results.RunDir` returns them),
:func:`fit_run_dir` or :func:`fit_analysis`; then :meth:`CapacityModel.predict` and
:meth:`CapacityModel.holdout_error`.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import nnls

from loadgen.results import Col, Env, Gpu, Machine, Point, Srv
from loadgen.spec import RunSpec, SLOSpec, SweepSpec, parse_spec
from reports.analysis import Analysis, analyze
from reports.load import Rpt, Run, load_run, prepare_points
from telemetry import names

__all__ = [
    "ASSUMPTIONS",
    "CapacityModel",
    "Holdout",
    "Host",
    "Prediction",
    "ServiceTimes",
    "Window",
    "batch_catch_counts",
    "decode_step_table",
    "expected_max",
    "fit",
    "fit_analysis",
    "fit_run_dir",
    "request_steps",
    "step_clock",
]

ASSUMPTIONS: Final[tuple[str, ...]] = (
    "Static dynamic batching as in service/batcher.py: a batch forms when max_batch_size requests "
    "wait or max_batch_delay after the oldest arrived, only when a batch worker is free, and "
    "holds its worker until its last request finishes (no continuous batching).",
    "CTranslate2's generate_batch prefills the prompts up to the shortest one, then forces the "
    "longer prompts' remaining tokens through ordinary decode steps: a request's first token "
    "comes (its prompt - the batch's shortest prompt) steps after the prefill, its last one "
    "(output - 1) steps later, and it stops costing compute after that. Prompt and output "
    "lengths are drawn as the measured pairs.",
    "Prefill per batch is p0 + p1·b and one decode step s0 + s1·(sequences still active), "
    "fitted by non-negative least squares on the per-point means of the server's batch metrics "
    "against the expected steps of the measured mean batch size; sampling options are those of "
    "the sweep's workload.",
    "Closed loop: users whose requests end early (shorter prompts) send again while their batch "
    "still runs and wait for it; the user of a batch's last request races the batch's release "
    "of its worker and joins the requests already waiting with the probability counted in the "
    "fitted points' client rows (Laplace's rule; even odds where it cannot be counted), else "
    "waits a whole batch. This is what desynchronises users: batches hold fewer requests than "
    "there are users, and fewer still when replicas split them.",
    "The batch workers of one replica run independently; their contention for the replica's "
    "threads is whatever it was in the fitted points.",
    "Replicas are independent and identical; requests are spread by the sweep's balancing rule. "
    "On a CPU host each busy batch worker needs the CPU measured per busy worker in the fitted "
    "points (process CPU seconds over batch busy seconds; its intra threads when the run did not "
    "record process CPU) and the load generator its measured CPU per request; where that demand "
    "exceeds the host's cores every step slows by demand / cores, averaged over the simulated "
    "time the workers are busy together. Slowdown below saturation (shared caches, memory "
    "bandwidth, SMT siblings) is not modelled; GPU replicas are assumed not to contend.",
    "Open-loop predictions use Poisson arrivals; closed-loop ones use zero think time. The client "
    "adds a constant overhead (median of client minus server TTFT). Errors and timeouts are not "
    "modelled: predicted error rate is 0.",
    "Predictions measure the way the harness does: requests sent after the warm-up and before "
    "the end of the window (at most max_requests) count, in-flight ones are drained, and "
    "throughput is their number over first send to last finish, averaged over several simulated "
    "windows. Closed-loop users start within Locust's 10 ms spawn interval or all at once, "
    "whichever reproduces the measured batch sizes.",
)

_EPS: Final = 1e-12
LOCUST_START_SPREAD_S: Final = 0.01
"""Locust spawns a point's users at 100 x users per second: all within 10 ms."""
START_SPREAD_CANDIDATES: Final[tuple[float, ...]] = (LOCUST_START_SPREAD_S, 0.0)
_SIM_MAX_REQUESTS: Final = 4000
_SIM_TARGET_SAMPLES: Final = 600
_HARNESS_RUN: Final = RunSpec()  # the harness's [run] defaults
_BISECT_STEPS: Final = 8
_CLOSED_LOOP_REPLICATIONS: Final = 8
_CONTENTION_ITERATIONS: Final = 3
_CONTENTION_TOLERANCE: Final = 0.005

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Window:
    """The measured window of one point: warm-up, then ``duration_s`` or ``max_requests``."""

    duration_s: float = _HARNESS_RUN.duration_s
    warmup_s: float = _HARNESS_RUN.warmup_s
    max_requests: int | None = _HARNESS_RUN.max_requests
    request_timeout_s: float = _HARNESS_RUN.request_timeout_s

    @classmethod
    def from_spec(cls, spec: SweepSpec | None) -> Window:
        """The window the harness ran for this spec (its defaults where the spec gives none)."""
        run = spec.run if spec is not None else _HARNESS_RUN
        return cls(
            duration_s=run.duration_s,
            warmup_s=run.warmup_s,
            max_requests=run.max_requests,
            request_timeout_s=run.request_timeout_s,
        )


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


_STEP_DRAWS: Final = 4000


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


def _interpolate_steps(table: Sequence[tuple[float, float]], b: float) -> tuple[float, float]:
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


@dataclass(frozen=True)
class ServiceTimes:
    """Fitted batch service times of one base configuration (what one replica runs).

    Attributes:
        base_config: Its label.
        max_batch_size: Batcher limit.
        max_batch_delay_s: Batcher delay.
        batch_workers: Batches run in parallel per replica.
        intra_threads: Threads per batch.
        prefill_s: ``(p0, p1)``: prefill of a batch of ``b`` takes ``p0 + p1 b``.
        step_s: ``(s0, s1)``: one decode step with ``a`` sequences still active takes
            ``s0 + s1 a``.
        output_tokens: Measured completion tokens per request (sample).
        client_overhead_s: Client TTFT minus server TTFT.
        fit_points: Points the fit used.
        fit_replicas: Replica counts of those points.
        batch_size_range: Smallest and largest mean batch size seen.
        prefill_rel_rmse: Fit residual relative to the mean prefill.
        step_rel_rmse: Fit residual relative to the mean step.
        notes: Fit caveats.
        user_start_spread_s: Closed loop: users start evenly over this long. Calibrated on the
            measured batch sizes: users that start together share batches for good, users
            spread over Locust's spawn interval settle into separate groups.
        prompt_tokens: Measured prompt tokens of the same requests as ``output_tokens`` (empty:
            not recorded, every prompt the same length).
        decode_steps: :func:`decode_step_table` of the measured lengths.
        catch_next_batch_p: Closed loop: probability that the next request of a batch's last
            user reaches the server before the batch frees its worker
            (:func:`batch_catch_counts`).
        worker_cpu_cores: Measured CPU cores per busy batch worker, the replica's request
            handling included (NaN: not recorded).
        loadgen_cpu_s_per_request: The load generator's CPU seconds per request.
    """

    base_config: str
    max_batch_size: int
    max_batch_delay_s: float
    batch_workers: int
    intra_threads: int
    prefill_s: tuple[float, float]
    step_s: tuple[float, float]
    output_tokens: tuple[int, ...]
    client_overhead_s: float
    fit_points: int
    fit_replicas: tuple[int, ...]
    batch_size_range: tuple[float, float]
    prefill_rel_rmse: float
    step_rel_rmse: float
    notes: tuple[str, ...] = ()
    user_start_spread_s: float = LOCUST_START_SPREAD_S
    prompt_tokens: tuple[int, ...] = ()
    decode_steps: tuple[tuple[float, float], ...] = ()
    catch_next_batch_p: float = 0.0
    worker_cpu_cores: float = math.nan
    loadgen_cpu_s_per_request: float = 0.0

    @property
    def cpu_per_worker(self) -> float:
        """CPU cores one busy batch worker keeps busy, with its replica's own request handling
        (measured; the engine's threads when the run did not record process CPU)."""
        v = self.worker_cpu_cores
        return v if math.isfinite(v) and v > 0 else float(max(self.intra_threads, 1))

    def prompts(self) -> npt.NDArray[np.int64]:
        """Prompt tokens of each sampled request (zeros when the run did not record them)."""
        if len(self.prompt_tokens) == len(self.output_tokens):
            return np.asarray(self.prompt_tokens, dtype=np.int64)
        return np.zeros(len(self.output_tokens), dtype=np.int64)

    def steps(self, b: float) -> tuple[float, float]:
        """Expected decode steps of a batch of ``b``: (longest request, sum over requests)."""
        table = self.decode_steps or decode_step_table(
            self.prompts(), np.asarray(self.output_tokens), self.max_batch_size
        )
        return _interpolate_steps(table, b)

    def batch_time_s(self, b: float) -> float:
        """Expected time a batch of ``b`` holds its worker, without contention."""
        longest, total = self.steps(b)
        return (
            self.prefill_s[0]
            + self.prefill_s[1] * b
            + self.step_s[0] * longest
            + self.step_s[1] * total
        )


@dataclass(frozen=True)
class Prediction:
    """Predicted behaviour of ``replicas`` replicas of one configuration at one load.

    Attributes:
        config: Base configuration label.
        replicas: Replica count.
        rate_rps: Offered Poisson rate (NaN for closed loop).
        concurrency: Closed-loop users (NaN for open loop).
        throughput_rps: Requests/s finishing inside the window.
        output_tokens_per_s: Output tokens/s finishing inside the window.
        ttft_p95_s: Client TTFT p95.
        ttft_p50_s: Client TTFT median.
        tpot_p95_s: Time per output token p95.
        e2e_p95_s: End-to-end p95.
        mean_batch_size: Mean executed batch size.
        saturated: Open loop only: the replicas fell behind the offered rate.
        samples: Simulated requests behind the percentiles.
        slowdown: CPU contention factor the prediction's batches ran at (1: none).
    """

    config: str
    replicas: int
    rate_rps: float
    concurrency: float
    throughput_rps: float
    output_tokens_per_s: float
    ttft_p95_s: float
    ttft_p50_s: float
    tpot_p95_s: float
    e2e_p95_s: float
    mean_batch_size: float
    saturated: bool
    samples: int
    slowdown: float = 1.0

    def meets(self, slo: SLOSpec) -> bool:
        """Whether the prediction meets the SLO's latency terms and keeps up with its load."""
        checks = (
            (slo.ttft_p95_s, self.ttft_p95_s),
            (slo.tpot_p95_s, self.tpot_p95_s),
            (slo.e2e_p95_s, self.e2e_p95_s),
        )
        if self.samples == 0 or self.saturated:
            return False
        return all(limit is None or value <= limit for limit, value in checks)


@dataclass(frozen=True)
class Holdout:
    """Prediction error on measured points the fit did not see.

    Attributes:
        table: One row per predicted point: kind (``leave-one-out`` or ``cross-replica``),
            configuration, replicas, load, measured and predicted throughput and TTFT p95, and
            their relative errors.
        throughput_mape: Mean absolute relative throughput error over all rows.
        ttft_p95_mape: Mean absolute relative TTFT p95 error over all rows.
        by_kind: ``{kind: (throughput MAPE, TTFT p95 MAPE, rows)}``.
    """

    table: pd.DataFrame
    throughput_mape: float
    ttft_p95_mape: float
    by_kind: dict[str, tuple[float, float, int]]


# ------------------------------------------------------------------------------ simulation


@dataclass
class _Sim:
    """Mutable state of one simulated window."""

    send: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    finish: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    busy: list[tuple[float, float]] = field(default_factory=list)


_ARRIVE, _DEADLINE, _FINISH, _BATCH_DONE, _SEND = range(5)
_RACE_NONE, _RACE_WON, _RACE_LOST = range(3)
_RELEASE_S: Final = 1e-6
PROCESS_CPU_METRIC: Final = "process_cpu_seconds_total"
_SAME_BATCH_S: Final = 0.002
_UNMEASURED_CATCH_P: Final = 0.5
"""Client timestamps this close count as simultaneous when grouping rows into batches."""
"""A finished batch frees its worker this long after its last token (orders the race)."""


def _simulate(
    st: ServiceTimes,
    replicas: int,
    slowdown: float,
    *,
    rate: float | None,
    concurrency: int | None,
    window: Window,
    balance: str,
    seed: int,
    arrival: str = "poisson",
) -> tuple[_Sim, list[int], float]:
    """Replay the batch queue over one point's window, the way the harness measures it.

    Requests sent in ``[warmup, warmup + duration)`` (at most ``max_requests`` of them) are
    measured; sending stops at the end of the window and measured requests in flight are
    drained, up to the request timeout. Returns the state, the measured requests that finished
    in time, and the span from the first measured send to the last measured finish.
    """
    rng = np.random.default_rng(seed)
    cap = _SIM_MAX_REQUESTS if window.max_requests is None else window.max_requests
    cap = min(cap, _SIM_MAX_REQUESTS)
    start, end = window.warmup_s, window.warmup_s + window.duration_s
    horizon = end + window.request_timeout_s
    big_b, delay, workers = st.max_batch_size, st.max_batch_delay_s, st.batch_workers
    p0, p1 = (v * slowdown for v in st.prefill_s)
    s0, s1 = (v * slowdown for v in st.step_s)
    token_pool = np.asarray(st.output_tokens, dtype=int)
    prompt_pool = st.prompts()

    def draws() -> Iterator[int]:
        while True:
            yield from (int(v) for v in rng.integers(0, token_pool.size, size=4096))

    token_draws = draws()
    prompts: list[int] = []
    race: dict[int, int] = {}
    race_rng = np.random.default_rng([seed, 1])
    overhead = st.client_overhead_s

    sim = _Sim()
    arrive: list[float] = []
    heap: list[tuple[float, int, int, int]] = []
    seq = itertools.count()
    queues: list[deque[int]] = [deque() for _ in range(replicas)]
    free = [workers] * replicas
    outstanding = [0] * replicas
    deadline_at = [math.inf] * replicas
    owner: list[int] = []
    robin = itertools.count()
    measured: list[int] = []

    def push(t: float, kind: int, data: int) -> None:
        heapq.heappush(heap, (t, next(seq), kind, data))

    def sending(t: float) -> bool:
        return t < end and len(measured) < cap

    def new_request(t: float, outcome: int) -> None:
        i = len(sim.send)
        sim.send.append(t)
        sim.first.append(math.nan)
        sim.finish.append(math.nan)
        draw = next(token_draws)
        sim.tokens.append(int(token_pool[draw]))
        prompts.append(int(prompt_pool[draw]))
        # A request whose previous one ended its batch races that batch's release: it wins
        # (arrives first, see dispatch) or loses (arrives just after).
        at = t + overhead + (2 * _RELEASE_S if outcome == _RACE_LOST else 0.0)
        arrive.append(at)
        if t >= start:
            measured.append(i)
        if replicas == 1:
            r = 0
        elif balance == "round_robin":
            r = next(robin) % replicas
        else:  # least outstanding; ties rotate so equal replicas share evenly
            off = next(robin) % replicas
            r = off
            for k in range(1, replicas):
                cand = (off + k) % replicas
                if outstanding[cand] < outstanding[r]:
                    r = cand
        owner.append(r)
        outstanding[r] += 1
        push(at, _ARRIVE, i)

    def dispatch(r: int, t: float) -> None:
        q = queues[r]
        while free[r] > 0 and q:
            head = arrive[q[0]]
            if len(q) >= big_b or t >= head + delay - _EPS:
                n = min(len(q), big_b)
                batch = [q.popleft() for _ in range(n)]
                free[r] -= 1
                t_prefill = t + p0 + p1 * n
                first, last = request_steps(
                    [prompts[i] for i in batch], [sim.tokens[i] for i in batch]
                )
                clock = step_clock(last, s0, s1)
                done_at = t_prefill + clock(max(last))
                release = done_at + _RELEASE_S
                for i, f, e in zip(batch, first, last, strict=True):
                    sim.first[i] = t_prefill + clock(f)
                    sim.finish[i] = t_prefill + clock(e)
                    push(sim.finish[i], _FINISH, i)
                    if concurrency is not None and sim.finish[i] >= done_at:
                        won = race_rng.random() < st.catch_next_batch_p
                        race[i] = _RACE_WON if won else _RACE_LOST
                        if won:  # the worker frees only after this user's next request arrived
                            release = done_at + overhead + _RELEASE_S
                if start <= t < end:
                    sim.batch_sizes.append(n)
                sim.busy.append((t, done_at))
                push(release, _BATCH_DONE, r)
            else:
                due = head + delay
                if deadline_at[r] != due:
                    deadline_at[r] = due
                    push(due, _DEADLINE, r)
                break

    def gap() -> float:
        assert rate is not None
        return 1.0 / rate if arrival == "constant" else float(rng.exponential(1.0 / rate))

    if concurrency is not None:
        for k in range(concurrency):
            push(k * st.user_start_spread_s / concurrency, _SEND, _RACE_NONE)
    elif rate is not None and rate > 0:
        first_gap = gap() if arrival == "poisson" else float(rng.uniform(0.0, 1.0 / rate))
        push(first_gap, _SEND, _RACE_NONE)

    while heap:
        t, _, kind, data = heapq.heappop(heap)
        if t > horizon:
            break
        if kind == _SEND:
            if sending(t):
                new_request(t, data)
                if concurrency is None:
                    push(t + gap(), _SEND, _RACE_NONE)
        elif kind == _ARRIVE:
            r = owner[data]
            queues[r].append(data)
            dispatch(r, t)
        elif kind in (_DEADLINE, _BATCH_DONE):
            if kind == _BATCH_DONE:
                free[data] += 1
            dispatch(data, t)
        else:  # _FINISH
            outstanding[owner[data]] -= 1
            if concurrency is not None:
                push(t, _SEND, race.get(data, _RACE_NONE))
    timeout = window.request_timeout_s
    done = [
        i
        for i in measured
        if math.isfinite(sim.finish[i]) and sim.finish[i] - sim.send[i] <= timeout
    ]
    if not done:
        return sim, done, _EPS
    span = max(sim.finish[i] for i in done) - min(sim.send[i] for i in done)
    return sim, done, max(span, _EPS)


@dataclass(frozen=True)
class Host:
    """What the replicas share: the device and its CPU cores.

    Attributes:
        device: ``cpu`` or ``cuda``.
        cores: CPU cores (``None``: unknown, no contention modelled).
    """

    device: str = "cpu"
    cores: int | None = None

    def contention(
        self, cpu_per_worker: float, busy_workers: float, loadgen_cores: float = 0.0
    ) -> float:
        """Slowdown of every batch while ``busy_workers`` batch workers compute on the host.

        CPU hosts only: the busy workers' measured CPU demand plus the load generator's,
        beyond the host's cores, shares the cores (processor sharing: every runnable thread
        gets ``cores / demand`` of one). Interference below that (shared caches, memory
        bandwidth, SMT siblings) is not modelled.

        Args:
            cpu_per_worker: Cores one busy batch worker keeps busy
                (:attr:`ServiceTimes.cpu_per_worker`).
            busy_workers: Workers computing at once, over all replicas.
            loadgen_cores: The load generator's CPU, in cores.

        Returns:
            The factor (1: no contention).
        """
        if self.device != "cpu" or not self.cores:
            return 1.0
        demand = busy_workers * cpu_per_worker + max(loadgen_cores, 0.0)
        return max(1.0, demand / self.cores)


def _busy_weighted(
    sims: Sequence[_Sim], lo: float, hi: float, factor: Callable[[int], float]
) -> float:
    """Mean of ``factor(k)`` over the busy worker-time of the window ``[lo, hi)``, ``k`` being
    the workers busy at once (every busy worker is slowed by the factor of that moment)."""
    num = den = 0.0
    for sim in sims:
        edges: list[tuple[float, int]] = []
        for a, b in sim.busy:
            a, b = max(a, lo), min(b, hi)
            if b > a:
                edges += [(a, 1), (b, -1)]
        edges.sort()
        k, prev = 0, lo
        for t, d in edges:
            if k > 0 and t > prev:
                num += (t - prev) * k * factor(k)
                den += (t - prev) * k
            k += d
            prev = t
    return num / den if den > 0 else factor(1)


# ------------------------------------------------------------------------------ fitting


def _nnls_line(x: FloatArray, y: FloatArray) -> tuple[float, float, float, bool]:
    """Non-negative ``y = a + b x``; (a, b, relative RMSE, whether a slope was identifiable)."""
    if x.size >= 2 and float(x.max() - x.min()) >= 0.5:
        design = np.column_stack([np.ones_like(x), x])
        coef, _ = nnls(design, y)
        a, b = float(coef[0]), float(coef[1])
        slope_ok = True
    else:
        a, b, slope_ok = float(y.mean()), 0.0, False
    resid = y - (a + b * x)
    mean = float(y.mean())
    rel = float(np.sqrt(np.mean(resid**2)) / mean) if mean > 0 else math.nan
    return a, b, rel, slope_ok


def _num(row: pd.Series, col: str, default: float = math.nan) -> float:
    try:
        v = float(row.get(col, default))
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


_CPU_COLUMN: Final = "_process_cpu_s"
_BUSY_COLUMN: Final = "_batch_busy_s"
_RACE_COLUMN: Final = "_catch_counts"


def _busy_workers(row: pd.Series, workers: int) -> float:
    """Workers busy at once, as a busy worker of this point saw it on average.

    Each of the point's ``replicas x workers`` workers was busy a measured fraction ``u`` of
    the window (batch prefill + decode seconds over the window); one busy worker sees itself
    plus, on average, ``u`` of every other one.
    """
    total = max(1, int(_num(row, Point.REPLICAS, 1)) * workers)
    busy = _num(row, _BUSY_COLUMN)
    window = _num(row, Point.DURATION_S)
    if total == 1:
        return 1.0
    if not (busy > 0 and window > 0):
        return float(total)  # busy time not recorded: every worker taken as busy
    u = min(1.0, busy / (window * total))
    return 1.0 + (total - 1) * u


def _loadgen_cores(row: pd.Series) -> float:
    pct = _num(row, Point.LOADGEN_CPU_PERCENT)
    return pct / 100.0 if pct > 0 else 0.0


def _cpu_demand(pts: pd.DataFrame, workers: int) -> tuple[float, float]:
    """(CPU cores per busy batch worker, load-generator CPU seconds per request) from the
    points' ``process_cpu_seconds_total`` deltas, batch busy time and load-generator CPU;
    NaN / 0 where the run did not record them."""
    cpu = busy = 0.0
    lg_cpu = lg_requests = 0.0
    for _, row in pts.iterrows():
        window = _num(row, Point.DURATION_S)
        c, b = _num(row, _CPU_COLUMN), _num(row, _BUSY_COLUMN)
        capacity = window * max(1, int(_num(row, Point.REPLICAS, 1))) * workers
        if c > 0 and b > 0 and window > 0:
            cpu += c
            busy += min(b, capacity)  # batches straddling the window edge count once
        pct, n = _num(row, Point.LOADGEN_CPU_PERCENT), _num(row, Point.N_OK)
        if pct >= 0 and n > 0 and window > 0:
            lg_cpu += pct / 100.0 * window
            lg_requests += n
    per_worker = cpu / busy if busy > 0 else math.nan
    return per_worker, (lg_cpu / lg_requests if lg_requests > 0 else 0.0)


def _catch_probability(pts: pd.DataFrame, workers: int) -> tuple[float, str]:
    """How often the last request of a batch caught the next batch (closed loop), and a note.

    Counted from the client rows of the fitted points (:func:`batch_catch_counts`); only
    identifiable with one batch worker per replica, where a replica's batches do not overlap.
    """
    if workers != 1 or _RACE_COLUMN not in pts.columns:
        closed = (pts[Point.LOAD_MODE] == "concurrency").any()
        return _UNMEASURED_CATCH_P, (
            "closed-loop batch-catching race not identifiable with several batch workers: "
            "taken as even odds"
            if closed and workers != 1
            else ""
        )
    caught = chances = 0
    for counts in pts[_RACE_COLUMN]:
        if isinstance(counts, tuple) and len(counts) == 2:
            caught += int(counts[0])
            chances += int(counts[1])
    if chances == 0:
        closed = (pts[Point.LOAD_MODE] == "concurrency").any()
        note = "batch-catching race never observed in the client rows: taken as even odds"
        return _UNMEASURED_CATCH_P, note if closed else ""
    # Laplace's rule of succession: few chances (short windows) give a moderate estimate,
    # none give even odds.
    p = (caught + 1) / (chances + 2)
    note = (
        f"last request of a batch caught the next batch {caught}/{chances} times (estimate {p:.2f})"
    )
    return p, note


def batch_catch_counts(rows: pd.DataFrame) -> tuple[int, int]:
    """(times caught, chances) of the race between a batch's last request and its worker.

    Closed loop, one batch worker per replica: a replica's batches do not overlap, so its
    requests group into batches by their overlapping [first token, finish] spans. Whenever a
    batch ends with another request already waiting for that replica, the user of the batch's
    last request sends again at once: its request either reaches the server before the batch
    frees the worker (and joins the waiting request's batch) or does not (and waits a whole
    batch).

    Args:
        rows: Successful client rows of one point (``Col`` columns).

    Returns:
        The counts; (0, 0) when nothing could be counted.
    """
    need = (Col.TARGET, Col.USER, Col.SENT_AT, Col.FIRST_TOKEN_AT, Col.FINISHED_AT)
    if rows.empty or any(c not in rows.columns for c in need):
        return 0, 0
    rows = rows.dropna(subset=[Col.SENT_AT, Col.FIRST_TOKEN_AT, Col.FINISHED_AT])
    rows = rows[rows[Col.USER] >= 0]
    caught = chances = 0
    nxt: dict[int, int] = {}
    for _, g in rows.groupby(Col.USER):
        order = g.sort_values(Col.SENT_AT).index.tolist()
        nxt.update(itertools.pairwise(order))
    batch_of: dict[int, int] = {}
    batches: list[list[int]] = []
    by_target: dict[str, list[int]] = {}
    for target, g in rows.groupby(Col.TARGET):
        g = g.sort_values(Col.FIRST_TOKEN_AT)
        current: list[int] = []
        hi = -math.inf
        for idx, ft, fin in zip(g.index, g[Col.FIRST_TOKEN_AT], g[Col.FINISHED_AT], strict=True):
            if current and ft > hi + _SAME_BATCH_S:
                by_target.setdefault(str(target), []).append(len(batches))
                batches.append(current)
                current, hi = [], -math.inf
            current.append(idx)
            batch_of[idx] = len(batches)
            hi = max(hi, float(fin))
        if current:
            by_target.setdefault(str(target), []).append(len(batches))
            batches.append(current)
    sent, fin, tgt = rows[Col.SENT_AT], rows[Col.FINISHED_AT], rows[Col.TARGET]
    for target, ks in by_target.items():
        for a, b in itertools.pairwise(ks):
            last = max(batches[a], key=lambda i: float(fin[i]))
            follow = nxt.get(last)
            if follow is None or str(tgt[follow]) != target:
                continue
            end = float(fin[last])
            if not any(float(sent[i]) < end - _SAME_BATCH_S for i in batches[b] if i != follow):
                continue  # nobody waiting: the returning request simply starts the next batch
            chances += 1
            caught += batch_of.get(follow) == b
    return caught, chances


def _nnls_steps(
    longest: FloatArray, total: FloatArray, decode: FloatArray, spread: float
) -> tuple[float, float, float]:
    """Non-negative ``decode = s0 longest + s1 total``; (s0, s1, relative RMSE).

    Without spread in batch size the two columns cannot be told apart: the step is then taken
    as independent of the active sequences (``s1 = 0``).
    """
    if longest.size >= 2 and spread >= 0.5:
        coef, _ = nnls(np.column_stack([longest, total]), decode)
        s0, s1 = float(coef[0]), float(coef[1])
    else:
        ok = longest > 0
        s0, s1 = (float(np.mean(decode[ok] / longest[ok])) if ok.any() else 0.0), 0.0
    resid = decode - (s0 * longest + s1 * total)
    mean = float(decode.mean())
    rel = float(np.sqrt(np.mean(resid**2)) / mean) if mean > 0 else math.nan
    return s0, s1, rel


def _fit_service(
    base: str,
    pts: pd.DataFrame,
    tokens: FloatArray,
    prompts: FloatArray,
    host: Host,
) -> ServiceTimes | str:
    """Fit one base configuration, or say why it cannot be fitted."""
    need = (Point.SERVER_BATCH_SIZE_MEAN, Point.SERVER_PREFILL_MEAN_S, Point.SERVER_DECODE_MEAN_S)
    usable = pts.dropna(subset=[c for c in need if c in pts.columns])
    if any(c not in pts.columns for c in need) or usable.empty:
        return (
            "server batch metrics (batch size, prefill and decode time per batch) are missing, "
            "so batch service time cannot be fitted"
        )
    if tokens.size == 0:
        return "no successful requests with completion-token counts"
    first = usable.iloc[0]
    workers = int(_num(first, Point.BATCH_WORKERS, 1))
    threads = int(_num(first, Point.INTRA_THREADS, 1))
    max_b = int(_num(first, Point.MAX_BATCH_SIZE, 1))
    if tokens.size > 5000:
        pick = np.random.default_rng(0).choice(tokens.size, 5000, replace=False)
        tokens = tokens[pick]
        prompts = prompts[pick] if prompts.size else prompts
    out_sample = tokens.astype(np.int64)
    prompt_sample = (
        prompts.astype(np.int64) if prompts.size == tokens.size else np.empty(0, dtype=np.int64)
    )
    table = decode_step_table(
        prompt_sample if prompt_sample.size else np.zeros_like(out_sample), out_sample, max_b
    )
    worker_cpu, loadgen_per_request = _cpu_demand(usable, workers)
    cpu_per_worker = worker_cpu if math.isfinite(worker_cpu) else float(max(threads, 1))
    catch_p, race_note = _catch_probability(usable, workers)
    bs, pf, longest, total, decode = [], [], [], [], []
    for _, row in usable.iterrows():
        b = float(row[Point.SERVER_BATCH_SIZE_MEAN])
        slow = host.contention(cpu_per_worker, _busy_workers(row, workers), _loadgen_cores(row))
        lg, tt = _interpolate_steps(table, b)
        bs.append(b)
        pf.append(float(row[Point.SERVER_PREFILL_MEAN_S]) / slow)
        decode.append(float(row[Point.SERVER_DECODE_MEAN_S]) / slow)
        longest.append(lg)
        total.append(tt)
    x = np.asarray(bs)
    p0, p1, p_err, p_slope = _nnls_line(x, np.asarray(pf))
    s0, s1, s_err = _nnls_steps(
        np.asarray(longest), np.asarray(total), np.asarray(decode), float(x.max() - x.min())
    )
    notes = []
    if not p_slope:
        notes.append(
            "mean batch size hardly varied across points: service time taken as independent "
            "of batch size"
        )
    if not prompt_sample.size:
        notes.append("no prompt lengths: every prompt taken as the same length")
    if race_note:
        notes.append(race_note)
    if host.device == "cpu" and not math.isfinite(worker_cpu):
        notes.append(
            "no process CPU in the server deltas: a busy batch worker taken to use its "
            "intra threads' cores"
        )
    has_ttft = Rpt.TTFT_MEAN_S in usable.columns and Point.SERVER_TTFT_MEAN_S in usable.columns
    overhead_rows = (
        usable.dropna(subset=[Rpt.TTFT_MEAN_S, Point.SERVER_TTFT_MEAN_S])
        if has_ttft
        else usable[:0]
    )
    if overhead_rows.empty:
        overhead = 0.0
        notes.append("no server TTFT: client overhead taken as 0")
    else:
        diff = overhead_rows[Rpt.TTFT_MEAN_S] - overhead_rows[Point.SERVER_TTFT_MEAN_S]
        overhead = max(0.0, float(diff.median()))
    return ServiceTimes(
        base_config=base,
        max_batch_size=max_b,
        max_batch_delay_s=_num(first, Point.MAX_BATCH_DELAY_MS, 0.0) / 1000.0,
        batch_workers=workers,
        intra_threads=threads,
        prefill_s=(p0, p1),
        step_s=(s0, s1),
        output_tokens=tuple(int(t) for t in out_sample),
        prompt_tokens=tuple(int(p) for p in prompt_sample),
        decode_steps=table,
        client_overhead_s=overhead,
        fit_points=len(usable),
        fit_replicas=tuple(sorted({int(r) for r in usable[Point.REPLICAS]})),
        batch_size_range=(float(x.min()), float(x.max())),
        prefill_rel_rmse=p_err,
        step_rel_rmse=s_err,
        notes=tuple(notes),
        catch_next_batch_p=catch_p,
        worker_cpu_cores=worker_cpu,
        loadgen_cpu_s_per_request=loadgen_per_request,
    )


def _base_of(config: str) -> str:
    """``int8 b8 d5ms w1 t1 ×2`` -> ``int8 b8 d5ms w1 t1``; a base label passes unchanged."""
    head = config.split(" · ")[0]
    parts = head.rsplit(" ×", 1)
    return parts[0] if len(parts) == 2 and parts[1].isdigit() else head


@dataclass
class CapacityModel:
    """Fitted batch-service queues, one per base configuration, and their predictions.

    Attributes:
        services: Fitted service times per base configuration label.
        unfitted: Base configurations that could not be fitted, with the reason.
        window: The measured window predictions replay.
        balance: ``least_outstanding`` or ``round_robin``.
        device: ``cpu`` or ``cuda`` (from the run's environment).
        cpu_cores: The host's cores (for CPU contention), if known.
        points: The per-point statistics the model was fitted from (for hold-out checks).
        fit_replicas: Replica counts the fit was restricted to (``None``: all).
        seed: Simulation seed.
        replications: Independent simulated windows pooled per prediction.
    """

    services: dict[str, ServiceTimes]
    unfitted: dict[str, str]
    window: Window
    balance: str
    device: str
    cpu_cores: int | None
    points: pd.DataFrame
    fit_replicas: tuple[int, ...] | None = None
    seed: int = 0
    replications: int = 1
    _holdout: Holdout | None = field(default=None, repr=False)
    _cache: dict[tuple[Any, ...], Prediction] = field(default_factory=dict, repr=False)

    @property
    def configs(self) -> list[str]:
        """Fitted base configuration labels."""
        return sorted(self.services)

    @property
    def assumptions(self) -> tuple[str, ...]:
        """What the model takes for granted, in words (shown in the report)."""
        return ASSUMPTIONS

    def service(self, config: str) -> ServiceTimes:
        """The fitted service times of a configuration (base label or full label).

        Raises:
            KeyError: The configuration was not fitted; the message says why.
        """
        base = _base_of(config)
        if base in self.services:
            return self.services[base]
        reason = self.unfitted.get(base, "not in this run")
        raise KeyError(f"no capacity model for {config!r}: {reason}")

    @property
    def host(self) -> Host:
        """What the replicas share (device, cores, co-run probe)."""
        return Host(self.device, self.cpu_cores)

    def slowdown(self, config: str, replicas: int) -> float:
        """Contention factor of ``replicas`` replicas with every batch worker busy (the load
        generator not counted): what full batches back to back run at."""
        st = self.service(config)
        busy = float(replicas * st.batch_workers)
        return self.host.contention(st.cpu_per_worker, busy)

    def predict(
        self,
        config: str,
        replicas: int,
        rate: float | None = None,
        *,
        concurrency: int | None = None,
        arrival: str = "poisson",
    ) -> Prediction:
        """Predict throughput and latency of ``replicas`` replicas at one load.

        Args:
            config: Base configuration label (or a full label with ``×N``).
            replicas: Replica count (need not have been measured).
            rate: Offered requests/s (open loop).
            concurrency: Closed-loop users; give this or ``rate``.
            arrival: Open-loop arrivals, ``poisson`` or ``constant``.

        Returns:
            The prediction.

        Raises:
            KeyError: The configuration was not fitted.
            ValueError: Neither or both of ``rate`` and ``concurrency`` were given.
        """
        if (rate is None) == (concurrency is None):
            raise ValueError("give exactly one of rate and concurrency")
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        st = self.service(config)
        arrival = "constant" if arrival == "constant" else "poisson"
        key = (st.base_config, replicas, rate, concurrency, arrival)
        if key in self._cache:
            return self._cache[key]
        reps = self.replications
        if rate is not None and rate > 0:
            # Enough simulated requests that the arrival process's own noise stays small.
            expected = rate * self.window.duration_s
            reps = min(max(reps, math.ceil(_SIM_TARGET_SAMPLES / max(expected, 1.0))), 8)
        elif concurrency is not None:
            # Closed loop: each window is one realisation of the users' batch dynamics.
            reps = max(reps, _CLOSED_LOOP_REPLICATIONS)
        host = self.host
        contended = host.device == "cpu" and bool(host.cores)
        slow = self.slowdown(config, replicas)  # start from every worker busy
        loadgen = 0.0
        for attempt in range(_CONTENTION_ITERATIONS if contended else 1):
            sims, runs = [], []
            for rep in range(reps):
                sim, measured, span = _simulate(
                    st,
                    replicas,
                    slow,
                    rate=rate,
                    concurrency=concurrency,
                    window=self.window,
                    balance=self.balance,
                    seed=self.seed + rep,
                    arrival=arrival,
                )
                sims.append(sim)
                runs.append((sim, measured, span))
            if not contended:
                break
            # Contention follows the simulated overlap of busy workers and the load
            # generator's CPU at the simulated throughput; replay until they agree.
            done = sum(len(m) for _, m, _ in runs)
            loadgen = st.loadgen_cpu_s_per_request * done / sum(sp for _, _, sp in runs)
            lo, hi = self.window.warmup_s, self.window.warmup_s + self.window.duration_s
            new = _busy_weighted(
                sims,
                lo,
                hi,
                functools.partial(host.contention, st.cpu_per_worker, loadgen_cores=loadgen),
            )
            if abs(new - slow) <= _CONTENTION_TOLERANCE * slow:
                break
            if attempt < _CONTENTION_ITERATIONS - 1:
                slow = new
        sends: list[float] = []
        firsts: list[float] = []
        finishes: list[float] = []
        toks: list[int] = []
        batch_sizes: list[int] = []
        thr, tps = [], []
        for sim, measured, span in runs:
            idx = np.asarray(measured, dtype=int)
            send = np.asarray(sim.send)[idx] if idx.size else np.empty(0)
            tok = np.asarray(sim.tokens)[idx] if idx.size else np.empty(0, dtype=int)
            sends.extend(send)
            firsts.extend(np.asarray(sim.first)[idx] if idx.size else [])
            finishes.extend(np.asarray(sim.finish)[idx] if idx.size else [])
            toks.extend(tok)
            batch_sizes.extend(sim.batch_sizes)
            thr.append(idx.size / span)
            tps.append(float(tok.sum()) / span)
        s, f, e, k = (np.asarray(v, dtype=float) for v in (sends, firsts, finishes, toks))
        ttft, e2e = f - s, e - s
        multi = k > 1
        tpot = (e[multi] - f[multi]) / (k[multi] - 1)
        throughput = float(np.mean(thr))

        def q(v: FloatArray, p: float) -> float:
            return float(np.quantile(v, p)) if v.size else math.nan

        pred = Prediction(
            config=st.base_config,
            replicas=replicas,
            rate_rps=math.nan if rate is None else float(rate),
            concurrency=math.nan if concurrency is None else float(concurrency),
            throughput_rps=throughput,
            output_tokens_per_s=float(np.mean(tps)),
            ttft_p95_s=q(ttft, 0.95),
            ttft_p50_s=q(ttft, 0.50),
            tpot_p95_s=q(tpot, 0.95),
            e2e_p95_s=q(e2e, 0.95),
            mean_batch_size=float(np.mean(batch_sizes)) if batch_sizes else math.nan,
            saturated=rate is not None and throughput < 0.95 * rate,
            samples=int(s.size),
            slowdown=slow,
        )
        self._cache[key] = pred
        return pred

    def max_throughput(self, config: str, replicas: int) -> float:
        """Requests/s of ``replicas`` replicas running full batches back to back (an upper bound).

        Args:
            config: Configuration label.
            replicas: Replica count.

        Returns:
            ``replicas x workers x max_batch_size / (batch time x contention)``.
        """
        st = self.service(config)
        b = st.max_batch_size
        per_batch = st.batch_time_s(b) * self.slowdown(config, replicas)
        return replicas * st.batch_workers * b / per_batch if per_batch > 0 else math.inf

    def slo_capacity(self, config: str, replicas: int, slo: SLOSpec) -> float:
        """Highest Poisson rate whose prediction meets the SLO (bisection on the simulation).

        Args:
            config: Configuration label.
            replicas: Replica count.
            slo: The objective.

        Returns:
            Requests/s; 0 when even a trickle misses it.
        """
        lo, hi = 0.0, self.max_throughput(config, replicas)
        if not math.isfinite(hi):
            return math.inf
        for _ in range(_BISECT_STEPS):
            mid = (lo + hi) / 2
            if self.predict(config, replicas, _round_rate(mid)).meets(slo):
                lo = mid
            else:
                hi = mid
        return lo

    def min_replicas(
        self, config: str, target_rps: float, slo: SLOSpec, *, max_replicas: int = 64
    ) -> int | None:
        """Fewest replicas whose predicted p95s meet the SLO at ``target_rps``.

        Args:
            config: Configuration label.
            target_rps: Poisson load to carry.
            slo: The objective.
            max_replicas: Search limit.

        Returns:
            The replica count, or ``None`` when none up to the limit does.
        """
        rate = _round_rate(target_rps)
        for n in range(1, max_replicas + 1):
            if self.max_throughput(config, n) < target_rps:
                continue  # cannot carry the load even with full batches
            if self.predict(config, n, rate).meets(slo):
                return n
        return None

    def with_points(self, config_points: pd.DataFrame) -> CapacityModel:
        """A model refitted on other points of the same run (same window, host and seed)."""
        return _fit_points(
            config_points,
            window=self.window,
            balance=self.balance,
            host=self.host,
            seed=self.seed,
            replications=self.replications,
        )

    def holdout_error(self) -> Holdout:
        """Prediction error on measured points held out of the fit.

        Two checks per base configuration: leave-one-out (refit without each valid point and
        predict it) and cross-replica (fit on the smallest replica count only and predict every
        larger one, the way unmeasured replica counts are predicted).

        Returns:
            The errors; cached after the first call.
        """
        if self._holdout is not None:
            return self._holdout
        rows: list[dict[str, Any]] = []
        pts = self.points
        for base in self.configs:
            mine = pts[pts[Rpt.BASE_CONFIG] == base]
            for pid in mine[Point.POINT_ID]:
                rest = mine[mine[Point.POINT_ID] != pid]
                target = mine[mine[Point.POINT_ID] == pid].iloc[0]
                if rest.empty:
                    continue
                refit = self.with_points(rest)
                if base in refit.services:
                    rows.append(_holdout_row(refit, base, target, "leave-one-out"))
            smallest = int(mine[Point.REPLICAS].min())
            larger = mine[mine[Point.REPLICAS] > smallest]
            if not larger.empty:
                refit = self.with_points(mine[mine[Point.REPLICAS] == smallest])
                if base in refit.services:
                    for _, target in larger.iterrows():
                        rows.append(_holdout_row(refit, base, target, "cross-replica"))
        table = pd.DataFrame(rows)
        by_kind: dict[str, tuple[float, float, int]] = {}
        if table.empty:
            self._holdout = Holdout(table, math.nan, math.nan, by_kind)
            return self._holdout
        for kind, g in table.groupby(Rpt.HOLDOUT_KIND):
            by_kind[str(kind)] = (
                float(g[Rpt.THROUGHPUT_REL_ERROR].abs().mean()),
                float(g[Rpt.TTFT_P95_REL_ERROR].abs().mean()),
                len(g),
            )
        self._holdout = Holdout(
            table,
            float(table[Rpt.THROUGHPUT_REL_ERROR].abs().mean()),
            float(table[Rpt.TTFT_P95_REL_ERROR].abs().mean()),
            by_kind,
        )
        return self._holdout


def _round_rate(rate: float) -> float:
    """Cache-friendly rate (4 significant digits)."""
    return float(f"{rate:.4g}")


def _predict_point(model: CapacityModel, base: str, row: pd.Series) -> Prediction:
    level = float(row[Point.LOAD_LEVEL])
    replicas = int(row[Point.REPLICAS])
    if str(row[Point.LOAD_MODE]) == "concurrency":
        return model.predict(base, replicas, concurrency=max(1, round(level)))
    return model.predict(base, replicas, level, arrival=str(row[Point.ARRIVAL]))


def _rel(pred: float, meas: float) -> float:
    return (pred - meas) / meas if meas and math.isfinite(meas) else math.nan


def _holdout_row(model: CapacityModel, base: str, row: pd.Series, kind: str) -> dict[str, Any]:
    pred = _predict_point(model, base, row)
    thr, ttft = float(row[Point.ACHIEVED_RPS]), float(row[Point.TTFT_P95_S])
    return {
        Rpt.HOLDOUT_KIND: kind,
        Rpt.BASE_CONFIG: base,
        Point.POINT_ID: int(row[Point.POINT_ID]),
        Point.REPLICAS: int(row[Point.REPLICAS]),
        Point.LOAD_MODE: row[Point.LOAD_MODE],
        Point.LOAD_LEVEL: float(row[Point.LOAD_LEVEL]),
        Rpt.MEASURED_RPS: thr,
        Rpt.PREDICTED_RPS: pred.throughput_rps,
        Rpt.THROUGHPUT_REL_ERROR: _rel(pred.throughput_rps, thr),
        Rpt.MEASURED_TTFT_P95_S: ttft,
        Rpt.PREDICTED_TTFT_P95_S: pred.ttft_p95_s,
        Rpt.TTFT_P95_REL_ERROR: _rel(pred.ttft_p95_s, ttft),
    }


def _calibrate_start(
    st: ServiceTimes,
    points: pd.DataFrame,
    window: Window,
    balance: str,
    host: Host,
    seed: int,
) -> ServiceTimes:
    """Pick the closed-loop start spread whose simulated batch sizes match the measured ones."""
    closed = points[
        (points[Point.LOAD_MODE] == "concurrency") & points[Point.SERVER_BATCH_SIZE_MEAN].notna()
    ]
    if closed.empty:
        return st
    best: tuple[float, float] | None = None
    for spread in START_SPREAD_CANDIDATES:
        cand = replace(st, user_start_spread_s=spread)
        err = 0.0
        for _, row in closed.iterrows():
            n = int(row[Point.REPLICAS])
            sim, _, _ = _simulate(
                cand,
                n,
                host.contention(
                    st.cpu_per_worker, _busy_workers(row, st.batch_workers), _loadgen_cores(row)
                ),
                rate=None,
                concurrency=max(1, round(float(row[Point.LOAD_LEVEL]))),
                window=window,
                balance=balance,
                seed=seed,
            )
            simulated = float(np.mean(sim.batch_sizes)) if sim.batch_sizes else math.nan
            measured = float(row[Point.SERVER_BATCH_SIZE_MEAN])
            if simulated > 0 and measured > 0:
                err += abs(math.log(simulated / measured))
        if best is None or err < best[1] - 1e-9:
            best = (spread, err)
    assert best is not None
    return replace(st, user_start_spread_s=best[0])


def _fit_points(
    points: pd.DataFrame,
    *,
    window: Window,
    balance: str,
    host: Host,
    seed: int,
    replications: int,
    fit_replicas: tuple[int, ...] | None = None,
) -> CapacityModel:
    services: dict[str, ServiceTimes] = {}
    unfitted: dict[str, str] = {}
    for base, group in points.groupby(Rpt.BASE_CONFIG, sort=True):
        tokens, prompts = _tokens_from_points(group)
        result = _fit_service(str(base), group, tokens, prompts, host)
        if isinstance(result, str):
            unfitted[str(base)] = result
        else:
            services[str(base)] = _calibrate_start(result, group, window, balance, host, seed)
    return CapacityModel(
        services=services,
        unfitted=unfitted,
        window=window,
        balance=balance,
        device=host.device,
        cpu_cores=host.cores,
        points=points,
        fit_replicas=fit_replicas,
        seed=seed,
        replications=replications,
    )


_TOKENS_COLUMN: Final = "_completion_tokens"
_PROMPTS_COLUMN: Final = "_prompt_tokens"


def _tokens_from_points(points: pd.DataFrame) -> tuple[FloatArray, FloatArray]:
    """(completion tokens, prompt tokens) per measured request; prompts empty when unknown."""
    if _TOKENS_COLUMN in points.columns:
        parts = [np.asarray(v, dtype=float) for v in points[_TOKENS_COLUMN] if len(v)]
        if parts:
            prompts: list[FloatArray] = []
            if _PROMPTS_COLUMN in points.columns:
                for t, p in zip(points[_TOKENS_COLUMN], points[_PROMPTS_COLUMN], strict=True):
                    if len(t):
                        prompts.append(np.asarray(p, dtype=float))
            tokens = np.concatenate(parts)
            prompt = np.concatenate(prompts) if prompts else np.empty(0)
            return tokens, prompt if prompt.size == tokens.size else np.empty(0)
    if Rpt.COMPLETION_TOKENS_MEAN in points.columns:
        mean = pd.to_numeric(points[Rpt.COMPLETION_TOKENS_MEAN], errors="coerce").dropna()
    else:  # no raw rows: the harness's summary still gives output tokens per request
        tps = pd.to_numeric(points[Point.OUTPUT_TOKENS_PER_S], errors="coerce")
        rps = pd.to_numeric(points[Point.ACHIEVED_RPS], errors="coerce")
        mean = (tps / rps.where(rps > 0)).dropna()
    tokens = np.asarray([max(1, round(float(mean.mean())))]) if len(mean) else np.empty(0)
    return tokens, np.empty(0)


def _environment_host(environment: Mapping[str, Any]) -> Host:
    gpu = environment.get(Env.GPU) or {}
    device = "cuda" if isinstance(gpu, Mapping) and gpu.get(Gpu.AVAILABLE) else "cpu"
    machine = environment.get(Env.MACHINE) or {}
    cores = machine.get(Machine.CPU_COUNT) if isinstance(machine, Mapping) else None
    return Host(device, int(cores) if cores else None)


def _add_server_columns(pts: pd.DataFrame, server: pd.DataFrame) -> None:
    """Per point: batch busy seconds and process CPU seconds, summed over replicas."""
    busy: dict[int, float] = {}
    cpu: dict[int, float] = {}
    need = (Srv.POINT_ID, Srv.METRIC, Srv.DELTA)
    if not server.empty and all(c in server.columns for c in need):
        plain = server[server[Srv.LE].fillna("") == ""] if Srv.LE in server.columns else server
        sums = (names.TOKENBOOTH_BATCH_PREFILL + "_sum", names.TOKENBOOTH_BATCH_DECODE + "_sum")
        for pid, g in plain.groupby(Srv.POINT_ID):
            deltas = pd.to_numeric(g[Srv.DELTA], errors="coerce")
            busy[int(pid)] = float(deltas[g[Srv.METRIC].isin(sums)].sum())
            c = deltas[g[Srv.METRIC] == PROCESS_CPU_METRIC].dropna()
            cpu[int(pid)] = float(c.sum()) if len(c) else math.nan
    pts[_BUSY_COLUMN] = [busy.get(int(p), math.nan) for p in pts[Point.POINT_ID]]
    pts[_CPU_COLUMN] = [cpu.get(int(p), math.nan) for p in pts[Point.POINT_ID]]


def _add_catch_counts(pts: pd.DataFrame, requests: pd.DataFrame) -> None:
    counts: dict[int, tuple[int, int]] = {}
    if not requests.empty and Col.POINT_ID in requests.columns:
        ok = requests[requests[Col.OK].fillna(False).astype(bool)]
        closed = set(pts.loc[pts[Point.LOAD_MODE] == "concurrency", Point.POINT_ID].astype(int))
        for pid, g in ok.groupby(Col.POINT_ID):
            if int(pid) in closed:
                counts[int(pid)] = batch_catch_counts(g)
    pts[_RACE_COLUMN] = [counts.get(int(p), (0, 0)) for p in pts[Point.POINT_ID]]


def fit_analysis(
    analysis: Analysis,
    *,
    fit_replicas: Iterable[int] | None = None,
    seed: int = 0,
    replications: int = 1,
) -> CapacityModel:
    """Fit the capacity model from an analysed run (valid points only).

    Args:
        analysis: The run's analysis.
        fit_replicas: Use only points with these replica counts (e.g. ``[1]`` to predict
            two replicas from one); ``None`` uses every valid point.
        seed: Simulation seed.
        replications: Simulated windows pooled per prediction.

    Returns:
        The model (configurations without server batch metrics are listed in ``unfitted``).
    """
    run = analysis.run
    pts = analysis.points[analysis.points[Point.VALID]].copy()
    keep = None if fit_replicas is None else tuple(sorted(set(fit_replicas)))
    if keep is not None:
        pts = pts[pts[Point.REPLICAS].isin(keep)]
    tokens: dict[int, FloatArray] = {}
    prompts: dict[int, FloatArray] = {}
    if not run.requests.empty:
        ok = run.requests[run.requests[Col.OK].fillna(False).astype(bool)]
        for pid, g in ok.groupby(Col.POINT_ID):
            out = pd.to_numeric(g[Col.COMPLETION_TOKENS], errors="coerce")
            if Col.PROMPT_TOKENS in g.columns:
                inp = pd.to_numeric(g[Col.PROMPT_TOKENS], errors="coerce")
            else:
                inp = pd.Series(math.nan, index=g.index)
            both = out.notna() & inp.notna()
            if both.any():  # pairs: a request's prompt and output length go together
                tokens[int(pid)] = out[both].to_numpy(dtype=float)
                prompts[int(pid)] = inp[both].to_numpy(dtype=float)
            else:
                tokens[int(pid)] = out.dropna().to_numpy(dtype=float)
                prompts[int(pid)] = np.empty(0)
    pts[_TOKENS_COLUMN] = [tokens.get(int(p), np.empty(0)) for p in pts[Point.POINT_ID]]
    pts[_PROMPTS_COLUMN] = [prompts.get(int(p), np.empty(0)) for p in pts[Point.POINT_ID]]
    _add_server_columns(pts, run.server)
    _add_catch_counts(pts, run.requests)
    return _fit_points(
        pts.reset_index(drop=True),
        window=Window.from_spec(run.spec),
        balance=run.spec.target.balance,
        host=_environment_host(run.environment),
        seed=seed,
        replications=replications,
        fit_replicas=keep,
    )


def fit(
    points_df: pd.DataFrame,
    requests_df: pd.DataFrame,
    server_df: pd.DataFrame,
    *,
    spec: SweepSpec | str | None = None,
    environment: Mapping[str, Any] | None = None,
    fit_replicas: Iterable[int] | None = None,
    seed: int = 0,
) -> CapacityModel:
    """Fit the capacity model from a run's frames (as :class:`loadgen.results.RunDir` reads them).

    Args:
        points_df: ``RunDir.points()``.
        requests_df: ``RunDir.requests()``.
        server_df: ``RunDir.server()``.
        spec: The run's spec (text or parsed); sets the window, balancing and validity rules.
        environment: ``RunDir.environment()``; sets the device and core count.
        fit_replicas: Use only these replica counts (``None``: all).
        seed: Simulation seed.

    Returns:
        The model.
    """
    parsed = parse_spec(spec, check_files=False) if isinstance(spec, str) else spec
    if parsed is None:
        parsed = parse_spec("")
    run = Run(
        path=Path("."),
        spec=parsed,
        environment=dict(environment or {}),
        points=prepare_points(points_df),
        requests=requests_df,
        server=server_df,
    )
    return fit_analysis(analyze(run, n_resamples=0), fit_replicas=fit_replicas, seed=seed)


def fit_run_dir(
    path: Path | str, *, fit_replicas: Iterable[int] | None = None, seed: int = 0
) -> CapacityModel:
    """Fit the capacity model straight from a run directory.

    Args:
        path: The run directory.
        fit_replicas: Use only these replica counts (``None``: all).
        seed: Simulation seed.

    Returns:
        The model.
    """
    return fit_analysis(
        analyze(load_run(path), n_resamples=0), fit_replicas=fit_replicas, seed=seed
    )
