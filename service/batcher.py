"""Dynamic batcher: bounded admission, size/delay flush, option buckets, cancellation, drain.

Triton's dynamic-batcher semantics: a batch is formed as soon as ``max_batch_size`` requests
with compatible sampling options are waiting, or ``max_batch_delay`` after the oldest of them
arrived, whichever comes first, and only when a batch worker is free. Each batch runs in a
worker thread on the engine; tokens come back through the engine's per-step callback, are
coalesced into one event-loop wakeup per burst, and are turned into text, stop-string checks
and stream events on the loop (:mod:`service.job`). Returning True from the callback ends one
batch index early (``max_tokens``, stop strings, disconnects, timeouts) so its slot stops
costing compute. Once ``draining`` is set, admission refuses new jobs and admitted ones run to
their end. A batch the engine fails re-runs its jobs that had no token yet one by one, so the
request that broke it fails alone.

The batcher records batch and per-token metrics (queue wait, TTFT, token gaps, batch shape);
the end of a request is recorded once, by the route, through :mod:`service.observe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import Link, Span, Tracer

from service.errors import DrainingError, ErrorCode, QueueFullError
from service.formation import adaptive_due_at, returned_all, worker_available
from service.job import Finished, Job, Outcome
from service.settings import (
    ADAPTIVE_HOLD_FRACTION,
    ADAPTIVE_POLICY,
    DEFAULT_BATCH_POLICY,
    RECENT_BATCHES,
)
from telemetry import names
from telemetry.logging import log_event

if TYPE_CHECKING:
    from service.engine import Engine, SamplingOptions
    from telemetry.metrics import ServiceMetrics

__all__ = ["Batcher", "BatcherConfig"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatcherConfig:
    """Batching knobs, taken from ServiceSettings.

    ``policy`` (default ``service.settings.DEFAULT_BATCH_POLICY``) "triton": a batch that is not
    full starts ``max_batch_delay_s`` after its oldest request arrived. "adaptive": it starts
    once no request has joined it for ``max_batch_delay_s`` (a burst of re-sending clients lands
    in one batch instead of being cut after 5 ms into a partial batch and a whole-batch wait for
    the rest), but no later than ``adaptive_hold_fraction`` of a recent batch's duration after
    its oldest request (after a batch ends, the quiet gap is longer and counts from that end:
    :func:`adaptive_due_at`); and when more requests wait than fit, the batch takes the oldest
    one plus those whose prompt lengths are closest to it (CTranslate2 prefills only up to the
    shortest prompt of a batch and feeds the rest one token per step).

    ``spare_workers`` threads beyond ``batch_workers`` start a batch only while the running
    batches are nearly empty (:func:`service.formation.worker_available`).
    """

    max_batch_size: int = 16
    max_batch_delay_s: float = 0.005
    max_queue_size: int = 256
    batch_workers: int = 2
    spare_workers: int = 0
    request_timeout_s: float = 300.0
    policy: str = DEFAULT_BATCH_POLICY
    adaptive_hold_fraction: float = ADAPTIVE_HOLD_FRACTION

    @property
    def workers(self) -> int:
        """Worker threads in all: the regular ones and the spares."""
        return self.batch_workers + self.spare_workers


_SHUTDOWN = Finished(Outcome.ABORTED, ErrorCode.SHUTDOWN, "server shut down")


def _wall_ns(perf_t: float) -> int:
    """Convert a ``perf_counter`` timestamp to epoch nanoseconds for span start/end times."""
    return time.time_ns() - int((time.perf_counter() - perf_t) * 1e9)


class Batcher:
    """Forms batches from queued jobs and runs them on the engine in worker threads."""

    def __init__(
        self,
        engine: Engine,
        config: BatcherConfig,
        metrics: ServiceMetrics,
        tracer: Tracer | None = None,
        *,
        phase_spans: bool = True,
    ) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics
        # Child spans (queue wait, batch, prefill, decode) cost ~70 us each; without an exporter
        # nobody sees them, so they are only created when spans go somewhere.
        self.tracer = tracer if tracer is not None and phase_spans else trace.NoOpTracer()
        self._buckets: dict[SamplingOptions, deque[Job]] = {}
        # Jobs of a failed batch that had no token yet, re-run one per batch (first served) so
        # the request that broke the batch fails alone.
        self._solo: deque[Job] = deque()
        self._admitted = 0  # between admission and enqueue (tokenizing)
        self._waiting = 0
        self._running: set[Job] = set()
        self._busy_workers = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._executor = ThreadPoolExecutor(
            max_workers=config.workers, thread_name_prefix="batch-worker"
        )
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._eos_ids = engine.codec.eos_token_ids
        self._recent_batch_s: deque[float] = deque(maxlen=RECENT_BATCHES)
        self._last_done_at = -math.inf  # perf_counter when the latest batch finished
        self._last_done_size = 0  # and how many requests it held
        self.draining = False
        self._ended = False  # end_all() ran: jobs submitted later end at once
        metrics.bind_queue_state(
            lambda: self._waiting,
            lambda: len(self._running),
            # A worker is busy until generate_batch returns, even after its jobs were aborted.
            lambda: self._busy_workers,
        )

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Bind to the running event loop."""
        self._loop = asyncio.get_running_loop()

    def end_all(self) -> int:
        """End every queued and running job as ``shutdown`` (a 503 / an error event); count them.

        The end of a drain: each job's reader gets its terminal event now and answers its
        client, instead of being cancelled mid-response when the server closes.
        """
        self._ended = True
        jobs = [job for bucket in self._buckets.values() for job in bucket]
        jobs += list(self._solo) + list(self._running)
        for job in jobs:
            self._finish(job, _SHUTDOWN)
        return len(jobs)

    async def stop(self) -> None:
        """Abort whatever is left, wait for running batches, stop the workers."""
        self.end_all()
        if self._timer is not None:
            self._timer.cancel()
        if self._batch_tasks:
            await asyncio.gather(*self._batch_tasks, return_exceptions=True)
        self._executor.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        """Jobs queued for a batch."""
        return self._waiting

    @property
    def running(self) -> int:
        """Jobs in running batches."""
        return len(self._running)

    @property
    def in_flight(self) -> int:
        """Everything admitted and not finished."""
        return self._admitted + self._waiting + len(self._running)

    # ----------------------------------------------------------------- admission
    @contextlib.contextmanager
    def admission(self, *, in_flight_at_drain: bool = False) -> Iterator[None]:
        """Reserve a queue slot before any tokenization; raise 429/503 when there is none.

        Args:
            in_flight_at_drain: the request arrived before the drain began (only its body
                was still coming): it is admitted while draining, as in-flight work.
        """
        if self.draining and not in_flight_at_drain:
            raise DrainingError(headers={"Connection": "close"})
        if self._admitted + self._waiting >= self.config.max_queue_size:
            raise QueueFullError(
                f"request queue is full ({self.config.max_queue_size} waiting); retry later",
                headers={"Retry-After": str(self._retry_after_s())},
            )
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    def _retry_after_s(self) -> int:
        per_batch = (
            sum(self._recent_batch_s) / len(self._recent_batch_s) if self._recent_batch_s else 1.0
        )
        rounds = self._waiting / (self.config.max_batch_size * self.config.batch_workers)
        return max(1, math.ceil(rounds * per_batch))

    def submit(self, job: Job) -> Job:
        """Queue an admitted job; call inside ``admission()``."""
        assert self._loop is not None, "batcher not started"
        job.enqueued_at = time.perf_counter()
        if self._ended:
            # Admitted before the drain ended, tokenized after: it answers 503 like the rest.
            job.finish(_SHUTDOWN, job.enqueued_at)
            return job
        job.decoder = self.engine.codec.new_decoder()
        self._buckets.setdefault(job.options, deque()).append(job)
        self._waiting += 1
        job.timeout_handle = self._loop.call_later(self.config.request_timeout_s, self._expire, job)
        # Dispatch synchronously: when a worker is free and the batch is due (full, or no
        # delay configured) the engine starts before this handler even returns.
        self._dispatch()
        return job

    def abort(self, job: Job, reason: ErrorCode = ErrorCode.CLIENT_DISCONNECTED) -> None:
        """The client went away: free its queue slot or batch index; it ends ``aborted``."""
        detail = (
            "client stopped reading the response"
            if reason is ErrorCode.WRITE_TIMEOUT
            else "client disconnected"
        )
        self._finish(job, Finished(Outcome.ABORTED, reason, detail))

    def _expire(self, job: Job) -> None:
        self._finish(
            job,
            Finished(
                Outcome.TIMEOUT,
                ErrorCode.REQUEST_TIMEOUT,
                f"request exceeded the {self.config.request_timeout_s:g} s timeout",
            ),
        )

    # ----------------------------------------------------------------- scheduling
    def _dispatch(self) -> None:
        """Start every batch that is due while workers are free; arm a timer for the next.

        Called on submit, when a batch finishes, and when the delay timer fires: the batcher
        is event-driven, with no polling task between a request and its batch.
        """
        cfg = self.config
        while self._solo and self._worker_available():
            self._waiting -= 1
            self._busy_workers += 1
            self._run_batch([self._solo.popleft()])
        while self._worker_available():
            now = time.perf_counter()
            best: deque[Job] | None = None
            best_key: tuple[int, float] | None = None
            next_deadline = math.inf
            for bucket in self._buckets.values():
                if not bucket:
                    continue
                head_t = bucket[0].enqueued_at
                full = len(bucket) >= cfg.max_batch_size
                due_at = self._due_at(bucket)
                if full or now >= due_at:
                    key = (0 if full else 1, head_t)  # full buckets first, then oldest
                    if best_key is None or key < best_key:
                        best, best_key = bucket, key
                else:
                    next_deadline = min(next_deadline, due_at)
            if best is None:
                self._arm_timer(next_deadline)
                return
            jobs = self._take(best)
            n = len(jobs)
            self._waiting -= n
            self._buckets = {k: v for k, v in self._buckets.items() if v}
            self._busy_workers += 1
            self._run_batch(jobs)

    def _worker_available(self) -> bool:
        cfg = self.config
        return worker_available(
            self._busy_workers,
            len(self._running),
            cfg.batch_workers,
            cfg.spare_workers,
        )

    def _due_at(self, bucket: deque[Job]) -> float:
        """When a bucket that is not full becomes due, under the configured policy."""
        cfg = self.config
        head_due = bucket[0].enqueued_at + cfg.max_batch_delay_s
        if cfg.policy != ADAPTIVE_POLICY:
            return head_due
        recent = self._recent_batch_s
        batch_s = sum(recent) / len(recent) if recent else 0.0
        hold_cap = max(cfg.max_batch_delay_s, cfg.adaptive_hold_fraction * batch_s)
        last_done = self._last_done_at
        back = returned_all(
            (j.enqueued_at for j in reversed(bucket)), last_done, self._last_done_size
        )
        return adaptive_due_at(
            bucket[0].enqueued_at,
            bucket[-1].enqueued_at,
            last_done,
            cfg.max_batch_delay_s,
            hold_cap,
            returned_all=back,
        )

    def _take(self, bucket: deque[Job]) -> list[Job]:
        """Pop the next batch from a due bucket: the oldest jobs, or (adaptive, when more wait
        than fit) the oldest job and the jobs whose prompt lengths are closest to it."""
        size = self.config.max_batch_size
        if self.config.policy != ADAPTIVE_POLICY or len(bucket) <= size:
            return [bucket.popleft() for _ in range(min(len(bucket), size))]
        head = bucket.popleft()
        n_head = len(head.prompt_tokens)
        # Stable sort: among equal distances the older job goes first.
        chosen = sorted(bucket, key=lambda j: abs(len(j.prompt_tokens) - n_head))[: size - 1]
        picked = set(map(id, chosen))
        rest = [j for j in bucket if id(j) not in picked]
        bucket.clear()
        bucket.extend(rest)
        return [head, *(j for j in chosen)]

    def _arm_timer(self, deadline: float) -> None:
        if math.isinf(deadline) or deadline >= self._timer_at:
            return
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        delay = max(0.0, deadline - time.perf_counter())
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._dispatch()

    def _run_batch(self, jobs: list[Job]) -> None:
        """Hand ``jobs`` to a worker thread now; a task finishes the batch when it returns."""
        assert self._loop is not None
        loop = self._loop
        started = time.perf_counter()
        formation_delay = started - min(j.enqueued_at for j in jobs)
        for j in jobs:
            j.started_at = started
            j.batch_size = len(jobs)
            self._running.add(j)
            self.metrics.observe_queue_wait(started - j.enqueued_at, j.trace_id)
            if j.span_context is not None:
                ctx = trace.set_span_in_context(trace.NonRecordingSpan(j.span_context))
                span = self.tracer.start_span(
                    names.SPAN_QUEUE_WAIT, context=ctx, start_time=_wall_ns(j.enqueued_at)
                )
                span.end(end_time=_wall_ns(started))
        links = [Link(j.span_context) for j in jobs if j.span_context is not None]
        batch_span = self.tracer.start_span(
            names.SPAN_BATCH,
            links=links,
            start_time=_wall_ns(started),
            attributes={names.ATTR_BATCH_SIZE: len(jobs)},
        )
        inbox: deque[tuple[int, int, str, bool, float]] = deque()
        flush_scheduled = False
        first_step_at: list[float] = []

        def flush() -> None:
            nonlocal flush_scheduled
            flush_scheduled = False
            while inbox:
                i, token_id, token, stop, t = inbox.popleft()
                try:
                    self._on_token(jobs[i], token_id, token, stop, t)
                except Exception as exc:
                    log_event(logger, "token_error", level=logging.ERROR, error=repr(exc))
                    fin = Finished(Outcome.ERROR, ErrorCode.TOKEN_ERROR, repr(exc))
                    self._finish(jobs[i], fin)

        def on_step(i: int, token_id: int, token: str, is_last: bool) -> bool:
            # Engine thread: count, decide whether this index stops, hand the token to the loop.
            nonlocal flush_scheduled
            job = jobs[i]
            if job.engine_done:
                return True
            t = time.perf_counter()
            if not first_step_at:
                first_step_at.append(t)
            job.generated += 1
            stop = (
                job.cancelled
                or is_last
                or job.generated >= job.max_tokens
                or token_id in self._eos_ids
            )
            if stop:
                job.engine_done = True
            inbox.append((i, token_id, token, stop, t))
            if not flush_scheduled:
                flush_scheduled = True
                loop.call_soon_threadsafe(flush)
            return stop

        max_new = max(j.max_tokens for j in jobs)
        fut: asyncio.Future[None]
        if any(not j.cancelled for j in jobs):
            fut = loop.run_in_executor(
                self._executor,
                self.engine.generate_batch,
                [j.prompt_tokens for j in jobs],
                jobs[0].options,
                max_new,
                on_step,
            )
        else:
            fut = loop.create_future()
            fut.set_result(None)
        task = asyncio.ensure_future(
            self._complete_batch(
                jobs, fut, flush, started, formation_delay, first_step_at, batch_span
            )
        )
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)

    async def _complete_batch(
        self,
        jobs: list[Job],
        fut: asyncio.Future[None],
        flush: Callable[[], None],
        started: float,
        formation_delay: float,
        first_step_at: list[float],
        batch_span: Span,
    ) -> None:
        error: Exception | None = None
        try:
            await fut
        except Exception as exc:
            error = exc
            log_event(logger, "batch_error", level=logging.ERROR, error=str(exc), size=len(jobs))
        finally:
            flush()
            ended = time.perf_counter()
            prefill_end = first_step_at[0] if first_step_at else ended
            self._recent_batch_s.append(ended - started)
            self._last_done_at = ended
            self._last_done_size = len(jobs)
            self.metrics.observe_batch(
                size=len(jobs),
                formation_delay_s=formation_delay,
                prefill_s=prefill_end - started,
                decode_s=ended - prefill_end,
            )
            retry = self._isolate(jobs) if error is not None else set()
            for j in jobs:
                if j in retry:
                    continue
                if j.result is None:
                    if error is not None:
                        fin = Finished(Outcome.ERROR, ErrorCode.ENGINE_ERROR, str(error))
                    else:
                        # The engine ended this index without a stop signal: its length ran out.
                        fin = Finished(Outcome.LENGTH)
                    self._finish(j, fin)
                self._record_phase_spans(j, started, prefill_end)
            batch_span.end(end_time=_wall_ns(ended))
            self._busy_workers -= 1
            self._dispatch()

    def _isolate(self, jobs: list[Job]) -> set[Job]:
        """After a batch failed: queue its untouched jobs to run alone; return them.

        Only a batch of several can hide which request broke it, and only a job that has not
        streamed a token can start over; the others fail with the batch.
        """
        if len(jobs) < 2:
            return set()
        retry = {j for j in jobs if j.result is None and j.generated == 0}
        for j in jobs:
            if j in retry:
                self._running.discard(j)
                j.started_at = None
                j.engine_done = False
                self._solo.append(j)
                self._waiting += 1
        if retry:
            log_event(logger, "batch_isolated", level=logging.WARNING, retried=len(retry))
        return retry

    def _record_phase_spans(self, job: Job, started: float, prefill_end: float) -> None:
        if job.span_context is None:
            return
        ctx = trace.set_span_in_context(trace.NonRecordingSpan(job.span_context))
        end = job.finished_at or time.perf_counter()
        prefill_stop = min(job.first_token_at or prefill_end, end)
        for name, t0, t1 in (
            (names.SPAN_PREFILL, started, prefill_stop),
            (names.SPAN_DECODE, prefill_stop, end),
        ):
            span: Span = self.tracer.start_span(name, context=ctx, start_time=_wall_ns(t0))
            span.set_attribute(names.ATTR_BATCH_SIZE, job.batch_size)
            span.end(end_time=_wall_ns(max(t0, t1)))

    # ----------------------------------------------------------------- per-token
    def _on_token(self, job: Job, token_id: int, token: str, stop: bool, t: float) -> None:
        if job.result is not None:
            return  # finished (stop string, abort, timeout): late tokens are dropped
        is_eos = token_id in self._eos_ids and not job.options.ignore_eos
        if not is_eos:
            job.completion_tokens += 1
            decoder = job.decoder
            piece = decoder.step(token_id, token) if decoder is not None else token
            self._emit(job, piece, t)
            if job.result is not None:
                return  # a stop string ended it
        if is_eos:
            self._finish(job, Finished(Outcome.STOP), t)
        elif stop:
            self._finish(job, Finished(Outcome.LENGTH if not job.cancelled else Outcome.STOP), t)

    def _emit(self, job: Job, piece: str, t: float) -> None:
        """Time the token, then hand its text to the job, which holds back stop-string prefixes."""
        if job.first_token_at is None:
            job.first_token_at = t
            self.metrics.observe_first_token(t - job.arrival, job.trace_id)
        elif job.last_token_at is not None:
            self.metrics.observe_token_gap(t - job.last_token_at, job.trace_id)
        job.last_token_at = t
        if job.add_text(piece):
            self._finish(job, Finished(Outcome.STOP), t)

    # ----------------------------------------------------------------- finishing
    def _finish(self, job: Job, fin: Finished, t: float | None = None) -> None:
        if not job.finish(fin, t if t is not None else time.perf_counter()):
            return
        if job.started_at is None:
            bucket = self._buckets.get(job.options)
            if bucket is not None and job in bucket:
                bucket.remove(job)
                self._waiting -= 1
            elif job in self._solo:
                self._solo.remove(job)
                self._waiting -= 1
        self._running.discard(job)
