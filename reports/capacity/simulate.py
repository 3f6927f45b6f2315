"""Discrete-event replay of the service's batch queue over one point's measured window.

Each replica is the dynamic batcher of ``service/batcher.py`` under the configuration's batch
policy (:class:`Formation`): requests queue, and a free batch worker takes up to
``max_batch_size`` of them (a spare worker only while the running batches are nearly empty,
:func:`service.formation.worker_available`) as soon as that many wait or the policy finds the
batch due: Triton
``max_batch_delay`` after the oldest arrived; adaptive once no request joined for
``max_batch_delay``, at most a share of the replica's recent batch duration after the oldest,
taking the oldest and the closest prompt lengths when more wait than fit. The batch holds its
worker until its last request is done (:mod:`reports.capacity.steps` times its tokens).
Requests arrive open loop (Poisson or constant) or from closed-loop users with zero think time,
spread over the replicas by the sweep's balancing rule, and are measured the way the harness
measures them.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from reports.capacity.results import ServiceTimes, Window
from reports.capacity.steps import request_steps, step_clock
from service.formation import adaptive_due_at, returned_all, worker_available
from service.settings import ADAPTIVE_POLICY, BATCH_POLICIES, RECENT_BATCHES

__all__ = ["Formation", "Sim", "simulate"]

SIM_MAX_REQUESTS: Final = 4000
"""Measured requests per simulated window at most (the window's own cap when smaller)."""
_EPS: Final = 1e-12
_RELEASE_S: Final = 1e-6
"""A finished batch frees its worker this long after its last token (orders the race)."""
_TOKEN_DRAW_BLOCK: Final = 4096
"""Request lengths are drawn from the generator this many at a time."""

_ARRIVE, _DEADLINE, _FINISH, _BATCH_DONE, _SEND = range(5)
_RACE_NONE, _RACE_WON, _RACE_LOST = range(3)


@dataclass
class Sim:
    """What one simulated window did, per request (by index) and per batch.

    Attributes:
        send: Send time of each request.
        first: First-token time (NaN: never started).
        finish: Finish time (NaN: never finished).
        tokens: Output tokens.
        batch_sizes: Size of every batch started inside the measured window.
        busy: ``(start, end)`` of every batch: when a worker computed.
    """

    send: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    finish: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    busy: list[tuple[float, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Formation:
    """When a replica's waiting requests become a batch, and which of them.

    The replay of ``service.batcher.Batcher._due_at`` and ``Batcher._take`` over simulated
    requests (indices into per-request arrival times and prompt lengths). Under
    ``adaptive`` a batch that is not full is due once no request joined it for
    ``max_batch_delay_s`` (longer, and counted from the end of the replica's latest batch,
    while it fills right after one: :func:`service.formation.adaptive_due_at`, the batcher's
    own rule), but no later than ``max(max_batch_delay_s, hold_fraction x mean of the
    replica's last RECENT_BATCHES batch durations)`` after its oldest request (a replica
    with no finished batch yet holds at most ``max_batch_delay_s``, as the batcher does); when
    more wait than fit it takes the oldest and those with the closest prompt lengths. The
    prompt lengths are the simulation's draws from the measured (prompt, output) pairs; where
    the run recorded none they are all 0 and the choice is first come, first served.

    Attributes:
        policy: ``service.settings.BATCH_POLICIES``.
        max_batch_size: Batcher limit.
        max_batch_delay_s: Batcher delay.
        hold_fraction: Adaptive hold limit, a share of a recent batch's duration.
    """

    policy: str
    max_batch_size: int
    max_batch_delay_s: float
    hold_fraction: float

    def __post_init__(self) -> None:
        if self.policy not in BATCH_POLICIES:
            raise ValueError(
                f"unknown batch policy {self.policy!r}; the service's policies are "
                f"{', '.join(BATCH_POLICIES)}"
            )

    @classmethod
    def of(cls, st: ServiceTimes) -> Formation:
        """The formation rule of the replicas ``st`` describes."""
        return cls(
            st.batch_policy, st.max_batch_size, st.max_batch_delay_s, st.adaptive_hold_fraction
        )

    def due_at(
        self,
        queue: Sequence[int],
        arrive: Sequence[float],
        recent: Sequence[float],
        last_done: float = -math.inf,
        last_size: int = 0,
    ) -> float:
        """When a non-empty queue that is not full becomes due.

        Args:
            queue: Waiting requests, oldest first.
            arrive: Arrival time of every request.
            recent: Durations of the replica's latest finished batches (at most
                ``RECENT_BATCHES``).
            last_done: When the replica's latest batch finished (adaptive holds for the
                re-sends of its clients).
            last_size: How many requests that batch held (once as many joined since, the
                hold ends).

        Returns:
            The time.
        """
        delay = self.max_batch_delay_s
        head = arrive[queue[0]]
        if self.policy != ADAPTIVE_POLICY:
            return head + delay
        batch_s = sum(recent) / len(recent) if recent else 0.0
        hold_cap = max(delay, self.hold_fraction * batch_s)
        back = returned_all((arrive[k] for k in reversed(queue)), last_done, last_size)
        return adaptive_due_at(
            head, arrive[queue[-1]], last_done, delay, hold_cap, returned_all=back
        )

    def take(self, queue: deque[int], prompts: Sequence[int]) -> list[int]:
        """Pop the next batch off a due queue.

        Args:
            queue: Waiting requests, oldest first; what the batch takes leaves it.
            prompts: Prompt tokens of every request.

        Returns:
            The batch: the oldest requests, or (adaptive, more waiting than fit) the oldest and
            those whose prompt lengths are closest to its own, nearest first.
        """
        size = self.max_batch_size
        if self.policy != ADAPTIVE_POLICY or len(queue) <= size:
            return [queue.popleft() for _ in range(min(len(queue), size))]
        head = queue.popleft()
        n_head = prompts[head]
        # Stable sort: among equal distances the older request goes first.
        chosen = sorted(queue, key=lambda i: abs(prompts[i] - n_head))[: size - 1]
        picked = set(chosen)
        rest = [i for i in queue if i not in picked]
        queue.clear()
        queue.extend(rest)
        return [head, *chosen]


def simulate(
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
) -> tuple[Sim, list[int], float]:
    """Replay the batch queue over one point's window, the way the harness measures it.

    Requests sent in ``[warmup, warmup + duration)`` (at most ``max_requests`` of them) are
    measured; sending stops at the end of the window and measured requests in flight are
    drained, up to the request timeout.

    Args:
        st: Service times of what each replica runs.
        replicas: Replica count.
        slowdown: CPU contention factor applied to every prefill and decode step.
        rate: Offered requests/s (open loop), or ``None``.
        concurrency: Closed-loop users, or ``None``.
        window: The measured window.
        balance: ``least_outstanding`` or ``round_robin``.
        seed: Seed of arrivals, request lengths and the batch-catching race.
        arrival: Open-loop arrivals, ``poisson`` or ``constant``.

    Returns:
        The state, the measured requests that finished in time, and the span from the first
        measured send to the last measured finish.
    """
    replay = _Replay(
        st,
        replicas,
        slowdown,
        rate=rate,
        concurrency=concurrency,
        window=window,
        balance=balance,
        seed=seed,
        arrival=arrival,
    )
    return replay.run()


class _Replay:
    """The event loop of one simulated window and the queue state it moves."""

    def __init__(
        self,
        st: ServiceTimes,
        replicas: int,
        slowdown: float,
        *,
        rate: float | None,
        concurrency: int | None,
        window: Window,
        balance: str,
        seed: int,
        arrival: str,
    ) -> None:
        self.st, self.replicas, self.balance, self.arrival = st, replicas, balance, arrival
        self.rate, self.concurrency = rate, concurrency
        cap = SIM_MAX_REQUESTS if window.max_requests is None else window.max_requests
        self.cap = min(cap, SIM_MAX_REQUESTS)
        self.start, self.end = window.warmup_s, window.warmup_s + window.duration_s
        self.timeout = window.request_timeout_s
        self.horizon = self.end + self.timeout
        self.p0, self.p1 = (v * slowdown for v in st.prefill_s)
        self.s0, self.s1 = (v * slowdown for v in st.step_s)
        self.rng = np.random.default_rng(seed)
        self.race_rng = np.random.default_rng([seed, 1])
        self.token_pool = np.asarray(st.output_tokens, dtype=int)
        self.prompt_pool = st.prompts()
        self.token_draws = self._draws()
        self.sim = Sim()
        self.prompts: list[int] = []
        self.arrive: list[float] = []
        self.owner: list[int] = []
        self.race: dict[int, int] = {}
        self.measured: list[int] = []
        self.heap: list[tuple[float, int, int, int]] = []
        self.seq = itertools.count()
        self.robin = itertools.count()
        self.queues: list[deque[int]] = [deque() for _ in range(replicas)]
        self.busy = [0] * replicas  # workers computing, spares included
        self.running = [0] * replicas  # requests of those batches not yet finished
        self.outstanding = [0] * replicas
        self.deadline_at = [math.inf] * replicas
        self.form = Formation.of(st)
        # Per replica, as the batcher keeps them: durations of its latest finished batches.
        self.recent: list[deque[float]] = [deque(maxlen=RECENT_BATCHES) for _ in range(replicas)]
        self.last_done = [-math.inf] * replicas  # when each replica's latest batch finished
        self.last_size = [0] * replicas  # and how many requests it held
        self.batch_owner: list[int] = []  # replica of each batch, by index into sim.busy
        self.batch_len: list[int] = []  # and its size

    def run(self) -> tuple[Sim, list[int], float]:
        """Seed the first sends, play every event up to the horizon, read the measured requests."""
        self._first_sends()
        while self.heap:
            t, _, kind, data = heapq.heappop(self.heap)
            if t > self.horizon:
                break
            self._handle(t, kind, data)
        return self._result()

    def _draws(self) -> Iterator[int]:
        # Lazy blocks: lengths come off the same generator as the arrival gaps, in call order.
        while True:
            block = self.rng.integers(0, self.token_pool.size, size=_TOKEN_DRAW_BLOCK)
            yield from (int(v) for v in block)

    def _push(self, t: float, kind: int, data: int) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), kind, data))

    def _gap(self) -> float:
        assert self.rate is not None
        if self.arrival == "constant":
            return 1.0 / self.rate
        return float(self.rng.exponential(1.0 / self.rate))

    def _first_sends(self) -> None:
        if self.concurrency is not None:
            for k in range(self.concurrency):
                t = k * self.st.user_start_spread_s / self.concurrency
                self._push(t, _SEND, _RACE_NONE)
        elif self.rate is not None and self.rate > 0:
            if self.arrival == "poisson":
                first_gap = self._gap()
            else:
                first_gap = float(self.rng.uniform(0.0, 1.0 / self.rate))
            self._push(first_gap, _SEND, _RACE_NONE)

    def _handle(self, t: float, kind: int, data: int) -> None:
        if kind == _SEND:
            if t < self.end and len(self.measured) < self.cap:
                self._new_request(t, data)
                if self.concurrency is None:
                    self._push(t + self._gap(), _SEND, _RACE_NONE)
        elif kind == _ARRIVE:
            r = self.owner[data]
            self.queues[r].append(data)
            self._dispatch(r, t)
        elif kind == _DEADLINE:
            self._dispatch(data, t)
        elif kind == _BATCH_DONE:
            # As the batcher: the batch's duration (start to worker release) joins the recent
            # ones, then the worker frees and the queue is looked at again.
            r = self.batch_owner[data]
            self.recent[r].append(t - self.sim.busy[data][0])
            self.last_done[r] = t
            self.last_size[r] = self.batch_len[data]
            self.busy[r] -= 1
            self._dispatch(r, t)
        else:  # _FINISH
            self.outstanding[self.owner[data]] -= 1
            self.running[self.owner[data]] -= 1
            if self.concurrency is not None:
                self._push(t, _SEND, self.race.get(data, _RACE_NONE))

    def _new_request(self, t: float, outcome: int) -> None:
        sim = self.sim
        i = len(sim.send)
        sim.send.append(t)
        sim.first.append(math.nan)
        sim.finish.append(math.nan)
        draw = next(self.token_draws)
        sim.tokens.append(int(self.token_pool[draw]))
        self.prompts.append(int(self.prompt_pool[draw]))
        # A request whose previous one ended its batch races that batch's release: it wins
        # (arrives first, see _start_batch) or loses (arrives just after).
        at = t + self.st.client_overhead_s + (2 * _RELEASE_S if outcome == _RACE_LOST else 0.0)
        self.arrive.append(at)
        if t >= self.start:
            self.measured.append(i)
        r = self._replica()
        self.owner.append(r)
        self.outstanding[r] += 1
        self._push(at, _ARRIVE, i)

    def _replica(self) -> int:
        if self.replicas == 1:
            return 0
        if self.balance == "round_robin":
            return next(self.robin) % self.replicas
        # Least outstanding; ties rotate so equal replicas share evenly.
        off = next(self.robin) % self.replicas
        r = off
        for k in range(1, self.replicas):
            cand = (off + k) % self.replicas
            if self.outstanding[cand] < self.outstanding[r]:
                r = cand
        return r

    def _dispatch(self, r: int, t: float) -> None:
        q = self.queues[r]
        form = self.form
        st = self.st
        while q and worker_available(
            self.busy[r], self.running[r], st.batch_workers, st.spare_workers
        ):
            due = form.due_at(q, self.arrive, self.recent[r], self.last_done[r], self.last_size[r])
            if len(q) >= form.max_batch_size or t >= due - _EPS:
                self._start_batch(r, t, form.take(q, self.prompts))
            else:
                # Adaptive deadlines move with each arrival; an outdated one only re-dispatches.
                if self.deadline_at[r] != due:
                    self.deadline_at[r] = due
                    self._push(due, _DEADLINE, r)
                break

    def _start_batch(self, r: int, t: float, batch: list[int]) -> None:
        sim = self.sim
        self.busy[r] += 1
        self.running[r] += len(batch)
        t_prefill = t + self.p0 + self.p1 * len(batch)
        first, last = request_steps(
            [self.prompts[i] for i in batch], [sim.tokens[i] for i in batch]
        )
        clock = step_clock(last, self.s0, self.s1)
        done_at = t_prefill + clock(max(last))
        release = done_at + _RELEASE_S
        for i, f, e in zip(batch, first, last, strict=True):
            sim.first[i] = t_prefill + clock(f)
            sim.finish[i] = t_prefill + clock(e)
            self._push(sim.finish[i], _FINISH, i)
            if self.concurrency is not None and sim.finish[i] >= done_at:
                won = self.race_rng.random() < self.st.catch_next_batch_p
                self.race[i] = _RACE_WON if won else _RACE_LOST
                if won:  # the worker frees only after this user's next request arrived
                    release = done_at + self.st.client_overhead_s + _RELEASE_S
        if self.start <= t < self.end:
            sim.batch_sizes.append(len(batch))
        self._push(release, _BATCH_DONE, len(sim.busy))
        sim.busy.append((t, done_at))
        self.batch_owner.append(r)
        self.batch_len.append(len(batch))

    def _result(self) -> tuple[Sim, list[int], float]:
        sim = self.sim
        done = [
            i
            for i in self.measured
            if math.isfinite(sim.finish[i]) and sim.finish[i] - sim.send[i] <= self.timeout
        ]
        if not done:
            return sim, done, _EPS
        span = max(sim.finish[i] for i in done) - min(sim.send[i] for i in done)
        return sim, done, max(span, _EPS)
