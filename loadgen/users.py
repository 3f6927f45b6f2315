"""Locust users that stream SSE from the OpenAI-compatible API and time every token.

Importing this module imports Locust, which monkey-patches the process with gevent: only the
sweep runner imports it, never the service or unit tests of pure modules.

Per request the harness records: scheduled and actual send time, time to the first generated
token (content, or reasoning text where a server streams it), every inter-token gap, end-to-end
latency, token counts (the server's ``usage`` cross-checked against the streamed chunks, or the
chunks when it sends none; see :func:`loadgen.tokenize.request_tokens`), status, error text,
target replica, and the ``X-Request-ID`` and W3C ``traceparent`` it sent, so server traces and
logs join the client's rows. Requests go over :mod:`loadgen.transport`; the stream itself is read
by :mod:`loadgen.sse`. A send that fails
because the server had closed a pooled keep-alive connection is repeated once on a fresh one and
counted in ``retries``, never as a server error.
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import msgspec
import numpy as np
from gevent.pool import Pool
from locust import User, constant, task
from locust.exception import StopUser

from loadgen.arrivals import think_times
from loadgen.results import Col
from loadgen.sessions import NO_SESSION, NO_TURN, SessionPlan, SessionState, session_id
from loadgen.spec import LengthDist
from loadgen.sse import StreamTally, error_message
from loadgen.tokenize import request_tokens
from loadgen.transport import DEFAULT_CONNECTIONS, Exchange, StreamClient, TransportError
from loadgen.workload import PromptItem

__all__ = [
    "Balancer",
    "ClosedLoopUser",
    "OpenLoopUser",
    "PointContext",
    "Session",
    "measure_request",
    "new_session",
]

_body_encoder = msgspec.json.Encoder()


class Balancer:
    """Spreads requests over replica URLs: least outstanding requests, or round robin."""

    def __init__(self, urls: list[str], mode: str = "least_outstanding") -> None:
        if not urls:
            raise ValueError("no target URLs")
        self.urls = list(urls)
        self.mode = mode
        self.outstanding = dict.fromkeys(self.urls, 0)
        self._next = 0

    def acquire(self) -> str:
        """Pick a replica for one request and count it outstanding."""
        n = len(self.urls)
        if self.mode == "round_robin":
            url = self.urls[self._next % n]
            self._next += 1
        else:
            # Ties go round robin so equal replicas share load evenly.
            order = [self.urls[(self._next + i) % n] for i in range(n)]
            url = min(order, key=lambda u: self.outstanding[u])
            self._next += 1
        self.outstanding[url] += 1
        return url

    def release(self, url: str) -> None:
        """The request to ``url`` finished."""
        self.outstanding[url] -= 1


class Session:
    """One user's (or dispatcher's) connections and Locust's request event: what a send needs.

    Requests go through :class:`loadgen.transport.StreamClient`; each finished request is
    reported to Locust's ``request`` event (type, name, response time, length, failure), so
    Locust's own statistics and listeners see every request the harness makes.
    """

    def __init__(self, client: StreamClient, request_event: Any) -> None:
        self.client = client
        self.request_event = request_event

    def close(self) -> None:
        """Close the session's connections."""
        self.client.close()


def new_session(environment: Any, pool_size: int = DEFAULT_CONNECTIONS) -> Session:
    """A session that fires ``environment``'s Locust request events, with ``pool_size``
    connections per target at most (open loop needs many, a closed-loop user one)."""
    return Session(StreamClient(pool_size), environment.events.request)


def measure_request(
    session: Session,
    url: str,
    api: str,
    body: dict[str, Any],
    *,
    timeout_s: float,
    scheduled_at: float | None = None,
    headers: dict[str, str] | None = None,
    prompt_tokens: int = 0,
    tally: StreamTally | None = None,
) -> dict[str, Any]:
    """Send one streaming request and return its result row (``loadgen.results.Col`` keys).

    ``prompt_tokens`` is the workload's count of the prompt, recorded when the server sends no
    usage. ``tally``, when given, is fed the stream (a session reads the reply's text from it).
    """
    chat = api == "chat"
    path = "/v1/chat/completions" if chat else "/v1/completions"
    trace_id = secrets.token_hex(16)
    request_id = "lg-" + secrets.token_hex(8)
    hdrs = {
        "X-Request-ID": request_id,
        "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
        "Accept": "text/event-stream",
        "Content-Type": "application/json",
        **(headers or {}),
    }
    tally = StreamTally(chat=chat) if tally is None else tally
    payload = _body_encoder.encode(body)
    wall_call = time.time()
    t_call = time.perf_counter()
    status, sent, retries = _stream(session, url, path, payload, hdrs, timeout_s, tally)
    t_end = time.perf_counter()
    t0 = t_call if sent is None else sent
    row: dict[str, Any] = {
        Col.REQUEST_ID: request_id,
        Col.TRACE_ID: trace_id,
        Col.TARGET: url,
        Col.SCHEDULED_AT: math.nan if scheduled_at is None else scheduled_at,
        Col.STATUS: status,
        Col.RETRIES: retries,
    }
    wall0 = wall_call + (t0 - t_call)  # wall clock of the actual send
    _timings(
        row,
        tally,
        t0=t0,
        t_end=t_end,
        wall0=wall0,
        scheduled_at=scheduled_at,
        prompt_tokens=prompt_tokens,
    )
    return row


def _stream(
    session: Session,
    url: str,
    path: str,
    payload: bytes,
    headers: dict[str, str],
    timeout_s: float,
    tally: StreamTally,
) -> tuple[int, float | None, int]:
    """POST one request, feed its body to ``tally`` and report it to Locust's request event.

    Returns:
        The HTTP status (0: no response), the ``time.perf_counter`` of the send (``None``: no
        byte was written), and how often the send was repeated on a fresh connection (0 or 1).

    A repeated send is timed from the repeat: the first went out on a connection the server
    had already closed and never read, so the time lost on it is the client's, not the
    server's. In open loop it still shows, as schedule lag (and in the from-schedule columns).
    """
    wall = time.time()
    started = time.perf_counter()
    try:
        ex = session.client.post(
            url, path, payload, headers, timeout_s=timeout_s, on_data=tally.feed
        )
    except TransportError as exc:  # a request that cannot be sent: no byte went out
        tally.error = f"{type(exc).__name__}: {exc}"
        ex = Exchange(0, None, 0, tally.error, b"", 0)
    if ex.status == 0:
        tally.error = ex.error
    elif ex.status != 200:
        detail = error_message(ex.body) or ex.body.decode(errors="replace")[:300]
        tally.error = detail or f"HTTP {ex.status} with an empty body"
    elif ex.error:
        tally.error = tally.error or ex.error  # the connection broke mid-stream
    failure = None
    if tally.error:
        failure = RuntimeError(f"HTTP {ex.status}: {tally.error}" if ex.status else tally.error)
    session.request_event.fire(
        request_type="POST",
        name=path,
        response_time=1000 * (time.perf_counter() - started),
        response_length=ex.received,
        response=None,
        context={},
        exception=failure,
        start_time=wall,
        url=url + path,
    )
    return ex.status, ex.sent_at, ex.retries


def _timings(
    row: dict[str, Any],
    tally: StreamTally,
    *,
    t0: float,
    t_end: float,
    wall0: float,
    scheduled_at: float | None,
    prompt_tokens: int,
) -> None:
    """Fill ``row``'s latency, token and outcome columns from what the stream said.

    ``t0``, ``t_end`` and the token times are ``time.perf_counter`` readings; ``wall0`` is the
    wall clock at ``t0``; ``prompt_tokens`` the workload's count of the prompt.
    """
    token_times = tally.token_times
    row[Col.SENT_AT] = wall0
    row[Col.FINISHED_AT] = wall0 + (t_end - t0)
    row[Col.E2E_S] = t_end - t0
    n_chunks = len(token_times)
    row[Col.STREAMED_CHUNKS] = n_chunks
    if token_times:
        ttft = token_times[0] - t0
        row[Col.TTFT_S] = ttft
        row[Col.FIRST_TOKEN_AT] = wall0 + ttft
        row[Col.ITL_S] = [b - a for a, b in itertools.pairwise(token_times)]
    else:
        row[Col.TTFT_S] = math.nan
        row[Col.FIRST_TOKEN_AT] = math.nan
        row[Col.ITL_S] = []
    first_content = tally.first_content_at
    row[Col.TTFT_CONTENT_S] = math.nan if first_content is None else first_content - t0
    error = tally.error
    if row[Col.STATUS] == 200 and not (error or token_times or tally.usage or tally.finish_reason):
        # No usage alone is fine (its tokens are the chunks); a 200 that said nothing countable
        # at all is no completion.
        error = "stream ended without a token, usage or finish_reason"
    row[Col.ERROR] = error
    row[Col.OK] = row[Col.STATUS] == 200 and not error
    tokens = request_tokens(
        tally.usage, chunks=n_chunks, workload_prompt=prompt_tokens, ok=row[Col.OK]
    )
    row[Col.PROMPT_TOKENS] = tokens.prompt
    row[Col.COMPLETION_TOKENS] = tokens.completion
    row[Col.TOKENS_SOURCE] = tokens.source
    row[Col.USAGE_MISMATCH] = tokens.mismatch
    out_tokens = row[Col.COMPLETION_TOKENS] or n_chunks
    if token_times and out_tokens >= 2:
        row[Col.TPOT_S] = (row[Col.E2E_S] - row[Col.TTFT_S]) / (out_tokens - 1)
    else:
        row[Col.TPOT_S] = math.nan
    row[Col.FINISH_REASON] = tally.finish_reason
    lag = 0.0 if scheduled_at is None else max(0.0, wall0 - scheduled_at)
    row[Col.SCHEDULE_LAG_S] = lag
    if scheduled_at is None:
        row[Col.TTFT_FROM_SCHEDULE_S] = row[Col.TTFT_S]
        row[Col.E2E_FROM_SCHEDULE_S] = row[Col.E2E_S]
    else:
        row[Col.TTFT_FROM_SCHEDULE_S] = row[Col.TTFT_S] + (wall0 - scheduled_at)
        row[Col.E2E_FROM_SCHEDULE_S] = row[Col.E2E_S] + (wall0 - scheduled_at)


@dataclass
class PointContext:
    """What the users of one point share: work to do, where to send it, where rows go."""

    api: str
    model: str
    items: list[PromptItem]
    balancer: Balancer
    ignore_eos: bool
    temperature: float
    timeout_s: float
    measure_from: float  # wall clock: requests sent before this are warm-up
    stop_at: float  # wall clock: no request is sent after this
    # Measured requests, then stop; warm-up sends are bounded by it too (sent_warmup).
    max_requests: int
    schedule: list[float] | None = None  # open loop: absolute wall-clock send times
    # Trace replay: the index into items each scheduled send carries (None: the next item).
    schedule_items: list[int] | None = None
    # Closed loop: wall-clock first send of each user (by index; loadgen.arrivals.ramp_offsets),
    # and the think time drawn after each response (None: send again at once), seeded per user.
    user_starts: list[float] | None = None
    think_time: LengthDist | None = None
    seed: int = 0
    worker: int = 0  # which distributed worker this context is (0 without workers)
    headers: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    sent_measured: int = 0
    # Sends before measure_from (the runner's ramp probe included), at most max_requests: a
    # closed-loop user then waits for the window (hold_warmup), an open-loop arrival is dropped.
    sent_warmup: int = 0
    # Open loop with sessions: measured sessions whose first turn was sent, the count the
    # schedule's arrivals (session starts) are compared with (sent_measured counts every turn).
    sessions_started: int = 0
    in_flight: int = 0
    stopped: bool = False
    on_row: Callable[[dict[str, Any]], None] | None = None
    # Index of the next prompt. The runner starts each point where the last one stopped (and
    # each distributed worker on its own stretch): a server with a prefix cache (vLLM, SGLang,
    # llama.cpp) must not see the same prompts again, which would flatter its TTFT.
    next_index: int = 0
    # [workload] kind = "sessions": the session plans (taken in turn from next_index like the
    # items, which then only serve the warm-up probe) and the pause between a reply and the
    # session's next turn (None: none).
    sessions: list[SessionPlan] | None = None
    turn_think_time: LengthDist | None = None

    def next_item(self) -> PromptItem:
        """The workload's next prompt, round robin from :attr:`next_index`."""
        item = self.items[self.next_index % len(self.items)]
        self.next_index += 1
        return item

    def scheduled_item(self, k: int) -> PromptItem | None:
        """The item of the ``k``-th scheduled send: a trace's own request, else ``None`` (next)."""
        return None if self.schedule_items is None else self.items[self.schedule_items[k]]

    def may_send(self) -> bool:
        """False once the window closed or the measured-request budget is spent."""
        if self.stopped or time.time() >= self.stop_at or self.sent_measured >= self.max_requests:
            self.stopped = True
            return False
        return True

    def warmup_spent(self, due: float | None = None) -> bool:
        """True when a send due at ``due`` (``None``: now) would be warm-up and the warm-up
        budget (``max_requests`` sends, like the window's) is spent."""
        at = time.time() if due is None else due
        return at < self.measure_from and self.sent_warmup >= self.max_requests

    def hold_warmup(self) -> None:
        """Closed loop: once the warm-up budget is spent, wait until the window opens (or the
        point stops), so the next send is measured instead of one more warm-up request."""
        while not self.stopped and self.warmup_spent():
            # Re-checked after each sleep: a timer on the hub's cached clock may fire early.
            gevent.sleep(min(max(self.measure_from - time.time(), 0.001), 1.0))

    def start_of(self, user: int) -> float | None:
        """Wall-clock time of a closed-loop user's first send (``None``: at once).

        Users beyond the list (a distributed worker given more users than starts) wrap round.
        """
        starts = self.user_starts
        return starts[user % len(starts)] if starts else None

    def send(
        self,
        session: Session,
        user: int,
        scheduled_at: float | None,
        item: PromptItem | None = None,
        *,
        tally: StreamTally | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Send one request to a balanced replica and keep its row unless it was warm-up.

        ``item`` defaults to the workload's next; ``tally`` reads the stream (see
        :func:`measure_request`); ``extra`` columns are set on the row before it is kept.

        Returns:
            The request's row, kept or not (the runner times its warm-up probe by it).
        """
        item = self.next_item() if item is None else item
        body = item.body(
            self.api, self.model, ignore_eos=self.ignore_eos, temperature=self.temperature
        )
        url = self.balancer.acquire()
        measured = (scheduled_at if scheduled_at is not None else time.time()) >= self.measure_from
        if measured:
            self.sent_measured += 1
        else:
            self.sent_warmup += 1
        self.in_flight += 1
        try:
            row = measure_request(
                session,
                url,
                self.api,
                body,
                timeout_s=self.timeout_s,
                scheduled_at=scheduled_at,
                headers=self.headers,
                prompt_tokens=item.input_tokens,
                tally=tally,
            )
        finally:
            self.in_flight -= 1
            self.balancer.release(url)
        row[Col.USER] = user
        row[Col.SESSION] = NO_SESSION
        row[Col.TURN] = NO_TURN
        if extra:
            row.update(extra)
        if measured:
            self.rows.append(row)
            if self.on_row is not None:
                self.on_row(row)
        return row

    def next_session(self) -> tuple[int, SessionPlan]:
        """The next session plan and its index, round robin from :attr:`next_index`."""
        sessions = self.sessions or []
        if not sessions:
            raise ValueError("this point's workload has no sessions")
        index = self.next_index
        self.next_index += 1
        return index, sessions[index % len(sessions)]

    def run_session(self, session: Session, user: int, scheduled_at: float | None) -> None:
        """Send one session's turns in order, each after the previous reply and a think time.

        Closed loop (``scheduled_at`` None) a user runs one session after another. Open loop
        each arrival starts a session at ``scheduled_at``, and each later turn is due a think
        time after the previous reply ended: its schedule lag is measured against that. The
        session ends early when the window closes or a turn fails (no reply to send back).
        """
        index, plan = self.next_session()
        state = SessionState(plan, session_id(index, self.worker))
        rng = np.random.default_rng([self.seed, self.worker, index])
        due = scheduled_at
        while not state.done:
            if state.turns_done:
                pause = float(think_times(self.turn_think_time, 1, rng)[0])
                if scheduled_at is not None:
                    due = time.time() + pause
                if pause > 0:
                    gevent.sleep(pause)
            if not self.may_send():
                return
            if self.warmup_spent(due):
                if scheduled_at is not None:
                    # Open loop: a later turn would be sent late, as warm-up, in the window.
                    return
                self.hold_warmup()
                if not self.may_send():
                    return
            if not state.turns_done and (scheduled_at or 0.0) >= self.measure_from:
                self.sessions_started += 1  # open loop only: closed loop has no schedule
            tally = StreamTally(chat=self.api == "chat", keep_text=True)
            row = self.send(
                session,
                user,
                due,
                state.next_item(),
                tally=tally,
                extra={Col.SESSION: state.session_id, Col.TURN: state.turn},
            )
            if not row[Col.OK]:
                state.abandon()
                return
            state.record_reply(tally.text, int(row[Col.COMPLETION_TOKENS]))


class ClosedLoopUser(User):
    """Closed loop: each user sends its next request once the previous one finished.

    Its first send waits for the user's place on the start ramp
    (:attr:`PointContext.user_starts`); each later one for a think time drawn from
    :attr:`PointContext.think_time` (none by default, as in GuideLLM and AIPerf: the ramp alone
    de-synchronises the start, and ``points.csv``'s sync share says whether the point stayed so).
    With a sessions workload each task is a whole session, and the think time falls between
    sessions (``[workload] turn_think_time_s`` between its turns). Users send warm-up requests
    as fast as the target answers, so after ``max_requests`` of them they wait for the window.
    """

    host = "http://unused.invalid"

    def on_start(self) -> None:
        ctx: PointContext = self.environment.tokenbooth
        self.ctx = ctx
        self.session = new_session(self.environment, pool_size=4)
        self.index: int = getattr(self.environment, "tokenbooth_user_seq", 0)
        self.environment.tokenbooth_user_seq = self.index + 1
        self.rng = np.random.default_rng([ctx.seed, ctx.worker, self.index])
        start = ctx.start_of(self.index)
        if start is not None and start > time.time():
            gevent.sleep(start - time.time())

    def wait_time(self) -> float:
        """Locust's pause after each task: the think time (0 without one)."""
        return float(think_times(self.ctx.think_time, 1, self.rng)[0])

    @task
    def request(self) -> None:
        self.ctx.hold_warmup()
        if not self.ctx.may_send():
            raise StopUser()
        if self.ctx.sessions:
            self.ctx.run_session(self.session, self.index, None)
        else:
            self.ctx.send(self.session, self.index, None)


class OpenLoopUser(User):
    """Open loop: one dispatcher per load-generator process sends at the scheduled times.

    Each request runs in its own greenlet, so a slow response never delays the next send:
    only the load generator's own overload shows up, as schedule lag. With a sessions workload
    each arrival starts a new session, whose later turns follow their own think times.
    """

    wait_time = constant(0)
    host = "http://unused.invalid"

    @task
    def dispatch(self) -> None:
        ctx: PointContext = self.environment.tokenbooth
        session = new_session(self.environment)
        pool = Pool()
        for k, due in enumerate(ctx.schedule or []):
            delay = due - time.time()
            if delay > 0:
                gevent.sleep(delay)
            if not ctx.may_send():
                break
            if ctx.warmup_spent(due):
                continue  # warm-up sessions' later turns spent the warm-up budget
            if ctx.sessions:
                pool.spawn(ctx.run_session, session, -1, due)
            else:
                pool.spawn(ctx.send, session, -1, due, ctx.scheduled_item(k))
        pool.join(timeout=ctx.timeout_s)
        ctx.stopped = True
        raise StopUser()
