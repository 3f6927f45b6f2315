"""One recorder per finished request: the metric updates, the span's end and the log line.

Every request that reaches a generation route ends in exactly one :class:`RequestSummary`,
whether it was refused (``outcome="rejected"``: bad input, unknown model, queue full,
draining) or ran on the engine, and :func:`record` turns that one summary into all three
signals, so the requests counter, the trace and the log can never disagree about how a request
ended. :class:`RequestObservation` follows one request from arrival to that record: it owns
the request's server span, its ids and the streaming child span.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from service.errors import APIError, ErrorCode, ServerError
from service.job import Job, Outcome
from service.responses import CLIENT_CLOSED_STATUS
from telemetry import names
from telemetry.logging import bind_request, log_event, new_request_id
from telemetry.tracing import extract_context, trace_id_hex

if TYPE_CHECKING:
    from service.state import ServiceState
    from telemetry.metrics import ServiceMetrics

__all__ = ["RequestObservation", "RequestSummary", "record"]

logger = logging.getLogger("tokenbooth.access")


@dataclass(frozen=True, slots=True)
class RequestSummary:
    """How one request ended: everything its metrics, span end and log line are made of.

    Token counts, TTFT, queue wait and batch size describe work on the engine; a rejected
    request has none, and its log line leaves them out rather than logging zeros.
    """

    request_id: str
    trace_id: str | None
    route: str
    status: int
    outcome: Outcome
    duration_s: float
    error_type: ErrorCode | None = None
    detail: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    queue_wait_s: float | None = None
    batch_size: int = 0

    @property
    def rejected(self) -> bool:
        """Refused before it was queued: nothing ran on the engine."""
        return self.outcome is Outcome.REJECTED


def record(summary: RequestSummary, span: Span, metrics: ServiceMetrics | None) -> None:
    """Record one finished request: metrics (if loaded), the server span's end, the log line."""
    error_type = summary.error_type or names.ERROR_TYPE_NONE
    if metrics is not None:
        if summary.rejected:
            metrics.observe_rejected(error_type)
        else:
            metrics.observe_request_end(
                outcome=summary.outcome.value,
                error_type=error_type,
                prompt_tokens=summary.prompt_tokens,
                completion_tokens=summary.completion_tokens,
                duration_s=summary.duration_s,
                ttft_s=summary.ttft_s,
                trace_id=summary.trace_id,
            )
    _end_span(span, summary)
    fields: dict[str, object] = {
        names.LOG_REQUEST_ID: summary.request_id,
        names.LOG_ROUTE: summary.route,
        names.LOG_STATUS: summary.status,
        names.LOG_OUTCOME: summary.outcome.value,
        names.LOG_ERROR_TYPE: error_type,
    }
    if not summary.rejected:
        fields[names.LOG_PROMPT_TOKENS] = summary.prompt_tokens
        fields[names.LOG_COMPLETION_TOKENS] = summary.completion_tokens
        fields[names.LOG_TTFT_S] = _rounded(summary.ttft_s)
        fields[names.LOG_QUEUE_WAIT_S] = _rounded(summary.queue_wait_s)
        fields[names.LOG_BATCH_SIZE] = summary.batch_size
    fields[names.LOG_DURATION_S] = _rounded(summary.duration_s)
    # Streaming responses end after the handler's bind_request block has exited, so the ids
    # are bound here or the line would lack its trace_id.
    with bind_request(summary.request_id, summary.trace_id):
        log_event(logger, names.EVENT_REQUEST, level=logging.INFO, **fields)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


def _end_span(span: Span, summary: RequestSummary) -> None:
    if not summary.rejected:
        span.set_attribute(names.ATTR_USAGE_OUTPUT_TOKENS, summary.completion_tokens)
        if summary.ttft_s is not None:
            span.set_attribute(names.ATTR_TTFT_SECONDS, summary.ttft_s)
        if summary.queue_wait_s is not None:
            span.set_attribute(names.ATTR_QUEUE_WAIT_SECONDS, summary.queue_wait_s)
        span.set_attribute(names.ATTR_BATCH_SIZE, summary.batch_size)
    if summary.outcome.succeeded:
        # A natural end's outcome is its finish reason ("stop" or "length").
        span.set_attribute(names.ATTR_RESPONSE_FINISH_REASONS, [summary.outcome.value])
    else:
        span.set_attribute(names.ATTR_ERROR_TYPE, summary.error_type or summary.outcome.value)
        span.set_status(Status(StatusCode.ERROR, summary.detail))
    span.end()


class RequestObservation:
    """The telemetry of one generation request, from arrival to its one :func:`record`.

    Args:
        state: The app's state (tracer, whether spans are exported, metrics, settings).
        route: The route path, for the span name and the log line.
        headers: Request headers: ``traceparent`` continues the client's trace,
            ``X-Request-ID`` names the request (a fresh id otherwise).
    """

    def __init__(self, state: ServiceState, route: str, headers: Mapping[str, str]) -> None:
        self.arrival = time.perf_counter()
        self.route = route
        self.request_id = headers.get("x-request-id") or new_request_id()
        self._state = state
        self.span = _request_span(state, route, headers)
        self.trace_id = trace_id_hex(self.span)
        self._stream_span: Span | None = None
        self._recorded = False

    @property
    def span_context(self) -> SpanContext:
        """Context of the server span, the parent of the batcher's phase spans."""
        return self.span.get_span_context()

    @contextmanager
    def bound(self) -> Iterator[None]:
        """Bind the request and trace ids to every log line inside the block."""
        with bind_request(self.request_id, self.trace_id):
            yield

    def describe(
        self,
        *,
        operation: str,
        model: str,
        max_tokens: int,
        temperature: float,
        prompt_tokens: int,
        prompt: str,
    ) -> None:
        """Put the GenAI request attributes on the server span (the prompt only if enabled)."""
        self.span.set_attributes(
            {
                names.ATTR_OPERATION_NAME: operation,
                names.ATTR_REQUEST_MODEL: model,
                names.ATTR_REQUEST_MAX_TOKENS: max_tokens,
                names.ATTR_REQUEST_TEMPERATURE: temperature,
                names.ATTR_USAGE_INPUT_TOKENS: prompt_tokens,
            }
        )
        if self._state.settings.trace_prompts:
            self.span.set_attribute(names.ATTR_PROMPT, prompt)

    def stream_started(self) -> None:
        """Open the streaming child span at the first token (once, and only when exported)."""
        if self._stream_span is None and self._state.export_spans:
            ctx = trace.set_span_in_context(self.span)
            self._stream_span = self._state.tracer.start_span(names.SPAN_STREAM, context=ctx)

    def reject(self, exc: APIError) -> None:
        """The request was refused before it was queued."""
        self._record(
            self._summary(
                exc.status_code, Outcome.REJECTED, self._since_arrival(), exc.code, exc.detail
            )
        )

    def cancelled(self) -> None:
        """The client went away before the request was queued (e.g. mid-upload)."""
        self._record(
            self._summary(
                CLIENT_CLOSED_STATUS,
                Outcome.ABORTED,
                self._since_arrival(),
                ErrorCode.CLIENT_DISCONNECTED,
                "client disconnected before the request was queued",
            )
        )

    def fail(self, exc: BaseException) -> None:
        """The handler failed unexpectedly before its job was queued (a 500)."""
        self._record(
            self._summary(
                ServerError.status_code,
                Outcome.ERROR,
                self._since_arrival(),
                ErrorCode.INTERNAL_ERROR,
                repr(exc),
            )
        )

    def finish(
        self,
        job: Job,
        status: int,
        *,
        cut: ErrorCode | None = None,
        ended_at: float | None = None,
    ) -> None:
        """The request's job has finished (``job.result`` is set) and its response is out.

        Args:
            job: The finished job.
            status: The HTTP status the request is logged with.
            cut: Why the client did not get the whole response, when it did not: a job that
                ran to its end then counts as ``aborted`` with this ``error_type``.
            ended_at: When the response's last byte went out (``perf_counter``); the job's
                end when omitted.
        """
        fin = job.result
        assert fin is not None, "finish() before the job finished"
        end = ended_at if ended_at is not None else (job.finished_at or time.perf_counter())
        outcome, error_type, detail = fin.outcome, fin.error_type, fin.detail
        if cut is not None and outcome.succeeded:
            outcome, error_type = Outcome.ABORTED, cut
            detail = f"response not delivered ({cut.value}) after the job ended {fin.outcome}"
        summary = self._summary(status, outcome, end - job.arrival, error_type, detail)
        self._record(
            dataclasses.replace(
                summary,
                prompt_tokens=job.prompt_len,
                completion_tokens=job.completion_tokens,
                ttft_s=job.ttft_s,
                queue_wait_s=job.queue_wait_s,
                batch_size=job.batch_size,
            )
        )

    def _since_arrival(self) -> float:
        return time.perf_counter() - self.arrival

    def _summary(
        self,
        status: int,
        outcome: Outcome,
        duration_s: float,
        error_type: ErrorCode | None,
        detail: str,
    ) -> RequestSummary:
        return RequestSummary(
            request_id=self.request_id,
            trace_id=self.trace_id,
            route=self.route,
            status=status,
            outcome=outcome,
            duration_s=duration_s,
            error_type=error_type,
            detail=detail,
        )

    def _record(self, summary: RequestSummary) -> None:
        if self._recorded:
            return
        self._recorded = True
        if self._stream_span is not None:
            self._stream_span.end()
        record(summary, self.span, self._state.metrics)


def _request_span(state: ServiceState, route: str, headers: Mapping[str, str]) -> Span:
    """The request's server span, continuing an incoming ``traceparent``.

    When no processor exports spans, only the trace id matters (log lines, exemplars, the
    client's rows); a non-recording span carries it without the SDK's per-span cost.
    """
    # Most clients send no traceparent; skip the propagator's parsing for them.
    parent = extract_context(dict(headers)) if "traceparent" in headers else None
    if state.export_spans:
        return state.tracer.start_span(
            names.server_span_name(route), context=parent, kind=SpanKind.SERVER
        )
    parent_ctx = trace.get_current_span(parent).get_span_context()
    if parent_ctx.is_valid:
        trace_id, flags = parent_ctx.trace_id, parent_ctx.trace_flags
    else:
        # Ids, not secrets: the same non-cryptographic source the OTel SDK's id generator uses.
        trace_id, flags = random.getrandbits(128) or 1, TraceFlags(TraceFlags.SAMPLED)
    span_id = random.getrandbits(64) or 1
    return trace.NonRecordingSpan(SpanContext(trace_id, span_id, False, flags))
