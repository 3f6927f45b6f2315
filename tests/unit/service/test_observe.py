"""One recorder per finished request: refused requests are counted and logged like served ones,
and one summary becomes the counter, the span's end and the log line."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

from service.app import create_app, get_state
from service.errors import EngineError, ErrorCode
from service.fake_engine import FakeEngine
from service.job import Outcome
from service.observe import RequestSummary, record
from telemetry import names
from telemetry.metrics import ServiceMetrics
from tests.conftest import fake_settings, wait_ready

MODEL = "fake-model"
LABELS = {names.LABEL_MODEL: MODEL, names.LABEL_MODEL_REVISION: "fake"}


def requests_total(registry: CollectorRegistry, outcome: str, error_type: str = "") -> float:
    value = registry.get_sample_value(
        names.TOKENBOOTH_REQUESTS,
        {**LABELS, names.LABEL_OUTCOME: outcome, names.LABEL_ERROR_TYPE: error_type},
    )
    return 0.0 if value is None else value


def request_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return [p for p in parsed if p[names.LOG_EVENT] == names.EVENT_REQUEST]


def error_type_labels(registry: CollectorRegistry) -> set[str]:
    return {
        s.labels[names.LABEL_ERROR_TYPE]
        for metric in registry.collect()
        for s in metric.samples
        if s.name == names.TOKENBOOTH_REQUESTS
    }


# ------------------------------------------------------------------ refused requests over HTTP

REFUSED = [
    pytest.param(b'{"model": "fake-model", "prompt": ', 400, "invalid_json", id="bad-json"),
    pytest.param(b'{"model": "fake-model", "prompt": 5}', 422, "invalid_body", id="wrong-type"),
    pytest.param(b'{"model": "other", "prompt": "hi"}', 404, "model_not_found", id="model"),
    pytest.param(
        b'{"model": "fake-model", "prompt": "hi", "temperature": 3}',
        400,
        "invalid_request",
        id="range",
    ),
    pytest.param(
        b'{"model": "fake-model", "prompt": "hi", "max_tokens": 100000}',
        400,
        "max_tokens_too_large",
        id="cap",
    ),
    pytest.param(
        b'{"model": "fake-model", "prompt": "' + b" word" * 3000 + b'", "max_tokens": 8}',
        400,
        "context_length_exceeded",
        id="context",
    ),
    pytest.param(
        b'{"model": "fake-model", "prompt": "' + b"a" * 70_000 + b'"}',
        413,
        "body_too_large",
        id="body-size",
    ),
]


@pytest.mark.parametrize(("body", "status", "error_type"), REFUSED)
async def test_refused_request_is_counted_rejected_and_logged_with_a_known_outcome(
    registry: CollectorRegistry,
    log_buffer: io.StringIO,
    body: bytes,
    status: int,
    error_type: str,
) -> None:
    app = create_app(fake_settings(max_body_bytes=65_536), registry=registry)
    async with AsyncTestClient(app) as client:
        await wait_ready(client)
        r = await client.post(
            "/v1/completions",
            content=body,
            headers={"content-type": "application/json", "X-Request-ID": "refused-1"},
        )
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == error_type
    assert requests_total(registry, names.OUTCOME_REJECTED, error_type) == 1
    # Nothing reached the engine: no duration, no tokens.
    assert registry.get_sample_value(names.GEN_AI_SERVER_REQUEST_DURATION + "_count", LABELS) == 0
    assert registry.get_sample_value(names.TOKENBOOTH_PROMPT_TOKENS, LABELS) == 0
    (line,) = request_lines(log_buffer)
    assert line[names.LOG_REQUEST_ID] == "refused-1"
    assert line[names.LOG_OUTCOME] == names.OUTCOME_REJECTED
    assert line[names.LOG_OUTCOME] in names.OUTCOMES
    assert line[names.LOG_STATUS] == status
    assert line[names.LOG_ERROR_TYPE] == error_type


async def test_draining_replica_counts_each_refusal_once(
    registry: CollectorRegistry, log_buffer: io.StringIO
) -> None:
    from service.state import Phase

    app = create_app(fake_settings(), registry=registry)
    async with AsyncTestClient(app) as client:
        await wait_ready(client)
        get_state(app).phase = Phase.DRAINING
        r = await client.post("/v1/completions", json={"model": MODEL, "prompt": "hi"})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "draining"
    assert requests_total(registry, names.OUTCOME_REJECTED, "draining") == 1
    (line,) = request_lines(log_buffer)
    assert line[names.LOG_OUTCOME] == names.OUTCOME_REJECTED


async def test_error_type_label_values_come_from_the_fixed_set(
    registry: CollectorRegistry,
) -> None:
    app = create_app(fake_settings(), registry=registry)
    bodies: list[Any] = [
        {"model": MODEL, "prompt": "hi", "max_tokens": 1},
        {"model": MODEL, "prompt": "hi", "top_p": 0},
        {"model": MODEL, "prompt": "hi", "n": 3},
        {"model": "nope", "prompt": "hi"},
        {"model": MODEL, "prompt": "hi", "echo": True},
        {"prompt": "hi"},
        [],
    ]
    async with AsyncTestClient(app) as client:
        await wait_ready(client)
        for body in bodies:
            await client.post("/v1/completions", json=body)
    labels = error_type_labels(registry)
    assert labels <= {names.ERROR_TYPE_NONE, *ErrorCode}
    assert {"invalid_request", "unsupported_n", "model_not_found", "invalid_body"} <= labels
    assert (
        sum(requests_total(registry, names.OUTCOME_REJECTED, label) for label in labels)
        == len(bodies) - 1
    )


# -------------------------------------------------------------- engine failures, end to end


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
async def test_engine_failure_is_a_500_counted_error_once(
    monkeypatch: pytest.MonkeyPatch,
    registry: CollectorRegistry,
    log_buffer: io.StringIO,
    stream: bool,
) -> None:
    def broken(self: FakeEngine, *args: Any, **kwargs: Any) -> None:
        raise EngineError("generation failed: out of memory")

    monkeypatch.setattr(FakeEngine, "generate_batch", broken)
    app = create_app(fake_settings(), registry=registry)
    async with AsyncTestClient(app) as client:
        await wait_ready(client)
        r = await client.post(
            "/v1/completions", json={"model": MODEL, "prompt": "hi", "stream": stream}
        )
    if stream:
        assert r.status_code == 200  # headers went out before the engine failed
        error = json.loads(r.text.split("\n\n")[-3].removeprefix("data: "))["error"]
    else:
        assert r.status_code == 500, r.text
        error = r.json()["error"]
    assert error["code"] == "engine_error"
    assert error["type"] == "server_error"
    assert "out of memory" in error["message"]
    assert requests_total(registry, names.OUTCOME_ERROR, "engine_error") == 1
    (line,) = request_lines(log_buffer)
    assert line[names.LOG_OUTCOME] == names.OUTCOME_ERROR
    assert line[names.LOG_STATUS] == 500


# ------------------------------------------------------------------------ the recorder itself


@pytest.fixture
def metrics(registry: CollectorRegistry) -> ServiceMetrics:
    return ServiceMetrics(registry, model=MODEL, revision="fake", max_batch_size=4)


def summary(**overrides: Any) -> RequestSummary:
    base: dict[str, Any] = {
        "request_id": "req-1",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "route": "/v1/completions",
        "status": 200,
        "outcome": Outcome.LENGTH,
        "duration_s": 0.5,
        "prompt_tokens": 7,
        "completion_tokens": 5,
        "ttft_s": 0.1,
        "queue_wait_s": 0.002,
        "batch_size": 3,
    }
    base.update(overrides)
    return RequestSummary(**base)


def test_outcome_is_built_from_the_names_constants() -> None:
    assert tuple(o.value for o in Outcome) == names.OUTCOMES


def test_served_request_becomes_counter_histograms_span_and_line(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    registry: CollectorRegistry,
    metrics: ServiceMetrics,
    log_buffer: io.StringIO,
) -> None:
    span = provider.get_tracer("t").start_span("POST /v1/completions")
    record(summary(), span, metrics)

    assert requests_total(registry, names.OUTCOME_LENGTH) == 1
    assert registry.get_sample_value(names.TOKENBOOTH_GENERATION_TOKENS, LABELS) == 5
    assert registry.get_sample_value(names.TOKENBOOTH_PROMPT_TOKENS, LABELS) == 7
    tpot = registry.get_sample_value(names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN + "_sum", LABELS)
    assert tpot == pytest.approx((0.5 - 0.1) / 4)

    (ended,) = exporter.get_finished_spans()
    assert ended.attributes is not None
    assert ended.attributes[names.ATTR_USAGE_OUTPUT_TOKENS] == 5
    assert ended.attributes[names.ATTR_BATCH_SIZE] == 3
    assert tuple(ended.attributes[names.ATTR_RESPONSE_FINISH_REASONS]) == ("length",)  # type: ignore[arg-type]
    assert names.ATTR_ERROR_TYPE not in ended.attributes
    assert ended.status.status_code is StatusCode.UNSET

    (line,) = request_lines(log_buffer)
    assert {k: line[k] for k in names.REQUEST_LOG_FIELDS} == {
        names.LOG_REQUEST_ID: "req-1",
        names.LOG_ROUTE: "/v1/completions",
        names.LOG_STATUS: 200,
        names.LOG_OUTCOME: "length",
        names.LOG_ERROR_TYPE: "",
        names.LOG_PROMPT_TOKENS: 7,
        names.LOG_COMPLETION_TOKENS: 5,
        names.LOG_TTFT_S: 0.1,
        names.LOG_DURATION_S: 0.5,
        names.LOG_QUEUE_WAIT_S: 0.002,
        names.LOG_BATCH_SIZE: 3,
    }
    assert line[names.LOG_TRACE_ID] == "0af7651916cd43dd8448eb211c80319c"


def test_rejected_request_is_counted_only_and_logged_without_engine_fields(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    registry: CollectorRegistry,
    metrics: ServiceMetrics,
    log_buffer: io.StringIO,
) -> None:
    span = provider.get_tracer("t").start_span("POST /v1/completions")
    rejected = summary(
        status=429,
        outcome=Outcome.REJECTED,
        error_type=ErrorCode.QUEUE_FULL,
        detail="request queue is full",
        prompt_tokens=0,
        completion_tokens=0,
        ttft_s=None,
        queue_wait_s=None,
        batch_size=0,
        duration_s=0.001,
    )
    record(rejected, span, metrics)

    assert requests_total(registry, names.OUTCOME_REJECTED, "queue_full") == 1
    assert registry.get_sample_value(names.GEN_AI_SERVER_REQUEST_DURATION + "_count", LABELS) == 0
    (ended,) = exporter.get_finished_spans()
    assert ended.attributes is not None
    assert ended.attributes[names.ATTR_ERROR_TYPE] == "queue_full"
    assert names.ATTR_USAGE_OUTPUT_TOKENS not in ended.attributes
    assert ended.status.status_code is StatusCode.ERROR
    assert ended.status.description == "request queue is full"
    (line,) = request_lines(log_buffer)
    assert line[names.LOG_OUTCOME] == names.OUTCOME_REJECTED
    assert line[names.LOG_ERROR_TYPE] == "queue_full"
    assert line[names.LOG_DURATION_S] == 0.001
    assert not {
        names.LOG_PROMPT_TOKENS,
        names.LOG_COMPLETION_TOKENS,
        names.LOG_TTFT_S,
        names.LOG_QUEUE_WAIT_S,
        names.LOG_BATCH_SIZE,
    } & set(line)


def test_without_metrics_the_span_and_line_are_still_recorded(
    provider: TracerProvider, exporter: InMemorySpanExporter, log_buffer: io.StringIO
) -> None:
    # While the model loads there is no ServiceMetrics yet; a 503 still ends its span and logs.
    span = provider.get_tracer("t").start_span("POST /v1/completions")
    record(
        summary(status=503, outcome=Outcome.REJECTED, error_type=ErrorCode.NOT_READY, batch_size=0),
        span,
        None,
    )
    assert len(exporter.get_finished_spans()) == 1
    (line,) = request_lines(log_buffer)
    assert line[names.LOG_ERROR_TYPE] == "not_ready"


async def test_a_client_gone_mid_upload_is_counted_aborted_not_a_server_error(
    registry: CollectorRegistry, log_buffer: io.StringIO
) -> None:
    """Raw ASGI: the body's first half arrives, then the client disconnects."""
    app = create_app(fake_settings(), registry=registry)
    async with AsyncTestClient(app) as client:
        await wait_ready(client)
        messages = iter(
            [
                {"type": "http.request", "body": b'{"model": "fake-model", ', "more_body": True},
                {"type": "http.disconnect"},
            ]
        )
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/completions",
            "raw_path": b"/v1/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        await app(scope, receive, send)  # type: ignore[arg-type]
    aborted = requests_total(registry, names.OUTCOME_ABORTED, ErrorCode.CLIENT_DISCONNECTED)
    assert aborted == 1
    assert requests_total(registry, names.OUTCOME_ERROR, ErrorCode.INTERNAL_ERROR) == 0
    (line,) = request_lines(log_buffer)
    assert line[names.LOG_OUTCOME] == names.OUTCOME_ABORTED
    assert line[names.LOG_STATUS] == 499
    assert sent[0]["status"] == 499
