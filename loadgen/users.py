"""Locust users that stream SSE from the OpenAI-compatible API and time every token.

Importing this module imports Locust, which monkey-patches the process with gevent: only the
sweep runner imports it, never the service or unit tests of pure modules.

Per request the harness records: scheduled and actual send time, time to the first generated
token (content, or reasoning text where a server streams it), every inter-token gap, end-to-end
latency, the server's ``usage`` cross-checked against the streamed chunks, status, error text,
target replica, and the ``X-Request-ID`` and W3C ``traceparent`` it sent, so server traces and
logs join the client's rows. The stream itself is read by :mod:`loadgen.sse`.
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
from gevent.pool import Pool
from locust import User, constant, task
from locust.clients import HttpSession
from locust.exception import StopUser
from requests.adapters import HTTPAdapter

from loadgen.results import Col
from loadgen.sse import StreamTally, error_message
from loadgen.workload import PromptItem

__all__ = [
    "Balancer",
    "ClosedLoopUser",
    "OpenLoopUser",
    "PointContext",
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


class _TimedAdapter(HTTPAdapter):
    """Stamps each request with the moment it is handed to the connection.

    requests and Locust spend a millisecond or more preparing a request (URL, headers,
    cookies, events) before any byte is written; latency measured from before that work
    would charge the client's own overhead to the server.
    """

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        request.tb_sent = time.perf_counter()
        return super().send(request, *args, **kwargs)


def new_session(environment: Any, pool_size: int = 1024) -> HttpSession:
    """A Locust HttpSession (fires Locust request events) with a pool sized for open loop."""
    session = HttpSession("http://unused.invalid", environment.events.request, None)
    adapter = _TimedAdapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def measure_request(
    session: HttpSession,
    url: str,
    api: str,
    body: dict[str, Any],
    *,
    timeout_s: float,
    scheduled_at: float | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Send one streaming request and return its result row (``loadgen.results.Col`` keys)."""
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
    tally = StreamTally(chat=chat)
    payload = _body_encoder.encode(body)
    wall_call = time.time()
    t_call = time.perf_counter()
    status, sent = _stream(session, url, path, payload, hdrs, timeout_s, tally)
    t_end = time.perf_counter()
    t0 = t_call if sent is None else sent
    row: dict[str, Any] = {
        Col.REQUEST_ID: request_id,
        Col.TRACE_ID: trace_id,
        Col.TARGET: url,
        Col.SCHEDULED_AT: math.nan if scheduled_at is None else scheduled_at,
        Col.STATUS: status,
    }
    wall0 = wall_call + (t0 - t_call)  # wall clock of the actual send
    _timings(row, tally, t0=t0, t_end=t_end, wall0=wall0, scheduled_at=scheduled_at)
    return row


def _stream(
    session: HttpSession,
    url: str,
    path: str,
    payload: bytes,
    headers: dict[str, str],
    timeout_s: float,
    tally: StreamTally,
) -> tuple[int, float | None]:
    """POST one request and feed its body to ``tally``: (HTTP status, send time if stamped)."""
    status = 0
    sent: float | None = None
    try:
        with session.post(
            url + path,
            data=payload,
            headers=headers,
            stream=True,
            catch_response=True,
            timeout=timeout_s,
            name=path,
        ) as resp:
            sent = getattr(resp.request, "tb_sent", None)
            status = resp.status_code
            if status != 200:
                tally.error = error_message(resp.content) or resp.text[:300]
                resp.failure(f"HTTP {status}: {tally.error}")
            else:
                for data in resp.iter_content(chunk_size=None):
                    tally.feed(data, time.perf_counter())
                if tally.error:
                    resp.failure(tally.error)
                else:
                    resp.success()
    except Exception as exc:
        tally.error = f"{type(exc).__name__}: {exc}"
    return status, sent


def _timings(
    row: dict[str, Any],
    tally: StreamTally,
    *,
    t0: float,
    t_end: float,
    wall0: float,
    scheduled_at: float | None,
) -> None:
    """Fill ``row``'s latency, token and outcome columns from what the stream said.

    ``t0``, ``t_end`` and the token times are ``time.perf_counter`` readings; ``wall0`` is the
    wall clock at ``t0``.
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
    usage = tally.usage
    if usage is not None:
        row[Col.PROMPT_TOKENS] = usage.prompt_tokens or 0
        row[Col.COMPLETION_TOKENS] = usage.completion_tokens or 0
        row[Col.USAGE_MISMATCH] = row[Col.COMPLETION_TOKENS] != n_chunks
    else:
        row[Col.PROMPT_TOKENS] = 0
        row[Col.COMPLETION_TOKENS] = 0
        row[Col.USAGE_MISMATCH] = False
    out_tokens = row[Col.COMPLETION_TOKENS] or n_chunks
    if token_times and out_tokens >= 2:
        row[Col.TPOT_S] = (row[Col.E2E_S] - row[Col.TTFT_S]) / (out_tokens - 1)
    else:
        row[Col.TPOT_S] = math.nan
    error = tally.error
    if row[Col.STATUS] == 200 and not error and usage is None:
        error = "stream ended without a usage chunk"
    row[Col.ERROR] = error
    row[Col.OK] = row[Col.STATUS] == 200 and not error
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
    max_requests: int  # measured requests, then stop
    schedule: list[float] | None = None  # open loop: absolute wall-clock send times
    headers: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    sent_measured: int = 0
    in_flight: int = 0
    stopped: bool = False
    on_row: Callable[[dict[str, Any]], None] | None = None
    _next_item: int = 0

    def next_body(self) -> dict[str, Any]:
        item = self.items[self._next_item % len(self.items)]
        self._next_item += 1
        return item.body(
            self.api, self.model, ignore_eos=self.ignore_eos, temperature=self.temperature
        )

    def may_send(self) -> bool:
        """False once the window closed or the measured-request budget is spent."""
        if self.stopped or time.time() >= self.stop_at or self.sent_measured >= self.max_requests:
            self.stopped = True
            return False
        return True

    def send(self, session: HttpSession, user: int, scheduled_at: float | None) -> None:
        """Send one request to a balanced replica and keep its row unless it was warm-up."""
        body = self.next_body()
        url = self.balancer.acquire()
        measured = (scheduled_at if scheduled_at is not None else time.time()) >= self.measure_from
        if measured:
            self.sent_measured += 1
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
            )
        finally:
            self.in_flight -= 1
            self.balancer.release(url)
        if measured:
            row[Col.USER] = user
            self.rows.append(row)
            if self.on_row is not None:
                self.on_row(row)


class ClosedLoopUser(User):
    """Closed loop: each user sends its next request as soon as the previous one finished."""

    wait_time = constant(0)
    host = "http://unused.invalid"

    def on_start(self) -> None:
        ctx: PointContext = self.environment.tokenbooth
        self.ctx = ctx
        self.session = new_session(self.environment, pool_size=4)
        self.index: int = getattr(self.environment, "tokenbooth_user_seq", 0)
        self.environment.tokenbooth_user_seq = self.index + 1

    @task
    def request(self) -> None:
        if not self.ctx.may_send():
            raise StopUser()
        self.ctx.send(self.session, self.index, None)


class OpenLoopUser(User):
    """Open loop: one dispatcher per load-generator process sends at the scheduled times.

    Each request runs in its own greenlet, so a slow response never delays the next send:
    only the load generator's own overload shows up, as schedule lag.
    """

    wait_time = constant(0)
    host = "http://unused.invalid"

    @task
    def dispatch(self) -> None:
        ctx: PointContext = self.environment.tokenbooth
        session = new_session(self.environment)
        pool = Pool()
        for due in ctx.schedule or []:
            delay = due - time.time()
            if delay > 0:
                gevent.sleep(delay)
            if not ctx.may_send():
                break
            pool.spawn(ctx.send, session, -1, due)
        pool.join(timeout=ctx.timeout_s)
        ctx.stopped = True
        raise StopUser()
