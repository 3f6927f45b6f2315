"""Tracing setup from OTEL_* env vars, W3C propagation and trace-id helpers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext, TraceFlags

from telemetry import names
from telemetry.tracing import (
    TracingConfigError,
    configure_tracing,
    extract_context,
    get_tracer,
    inject_headers,
    shutdown_tracing,
    trace_id_hex,
)

PARENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{PARENT_TRACE_ID}-{PARENT_SPAN_ID}-01"


pytestmark = pytest.mark.usefixtures("clean_otel_env")


class _OtlpSink(BaseHTTPRequestHandler):
    received: list[tuple[str, str, int]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.rfile.read(length)
        self.received.append((self.path, self.headers["Content-Type"], length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def otlp_collector() -> Iterator[tuple[str, list[tuple[str, str, int]]]]:
    """A local HTTP server standing in for an OTLP/HTTP collector."""
    received: list[tuple[str, str, int]] = []
    handler = type("Sink", (_OtlpSink,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()
    thread.join()


def _processors(provider: TracerProvider) -> tuple[SpanProcessor, ...]:
    # No public accessor lists a provider's processors; the SDK keeps them here.
    return provider._active_span_processor._span_processors


def test_explicit_exporter_receives_finished_spans(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = get_tracer(provider)
    with tracer.start_as_current_span(names.SPAN_QUEUE_WAIT) as span:
        span.set_attribute(names.ATTR_BATCH_SIZE, 4)
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "gen_ai.queue_wait"
    assert finished.attributes == {"tokenbooth.batch.size": 4}
    assert finished.resource.attributes[SERVICE_NAME] == "tokenbooth"
    assert finished.instrumentation_scope is not None
    assert finished.instrumentation_scope.name == "tokenbooth"


def test_traceparent_extraction_gives_parent_trace_id(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    context = extract_context({"Traceparent": TRACEPARENT, "Content-Type": "application/json"})
    with get_tracer(provider).start_as_current_span(names.SPAN_STREAM, context=context) as span:
        assert trace_id_hex(span) == PARENT_TRACE_ID
    (finished,) = exporter.get_finished_spans()
    assert finished.parent is not None
    assert format(finished.parent.span_id, "016x") == PARENT_SPAN_ID
    assert format(finished.context.trace_id, "032x") == PARENT_TRACE_ID


@pytest.mark.parametrize("headers", [{}, {"traceparent": "00-zz-yy-01"}])
def test_missing_or_bad_traceparent_starts_a_new_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter, headers: dict[str, str]
) -> None:
    context = extract_context(headers)
    with get_tracer(provider).start_as_current_span("root", context=context) as span:
        trace_id = trace_id_hex(span)
    assert trace_id is not None
    assert trace_id != PARENT_TRACE_ID
    assert len(trace_id) == 32
    assert exporter.get_finished_spans()[0].parent is None


def test_inject_headers_round_trips(provider: TracerProvider) -> None:
    headers: dict[str, str] = {}
    with get_tracer(provider).start_as_current_span("client") as span:
        inject_headers(headers)
        expected = trace_id_hex(span)
    assert headers["traceparent"].split("-")[1] == expected
    incoming = extract_context(headers)
    with get_tracer(provider).start_as_current_span("server", context=incoming) as child:
        assert trace_id_hex(child) == expected


def test_trace_id_hex_is_none_for_invalid_or_unsampled_spans() -> None:
    assert trace_id_hex(INVALID_SPAN) is None
    unsampled = NonRecordingSpan(
        SpanContext(
            trace_id=int(PARENT_TRACE_ID, 16),
            span_id=int(PARENT_SPAN_ID, 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.DEFAULT),
        )
    )
    assert trace_id_hex(unsampled) is None


def test_sampler_comes_from_env(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = configure_tracing(exporter=exporter)
    with get_tracer(provider).start_as_current_span("dropped") as span:
        assert trace_id_hex(span) is None
    shutdown_tracing(provider)
    assert exporter.get_finished_spans() == ()


def test_resource_from_env_and_arguments(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "booth-eu")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging,replica=a")
    provider = configure_tracing(
        "ignored-default", exporter=exporter, resource_attributes={"replica": "b"}
    )
    attributes = provider.resource.attributes
    shutdown_tracing(provider)
    assert attributes[SERVICE_NAME] == "booth-eu"
    assert attributes["deployment.environment"] == "staging"
    assert attributes["replica"] == "b"


def test_service_name_argument_is_the_default(exporter: InMemorySpanExporter) -> None:
    provider = configure_tracing("booth-test", exporter=exporter)
    assert provider.resource.attributes[SERVICE_NAME] == "booth-test"
    shutdown_tracing(provider)


@pytest.mark.parametrize("value", [None, "none"])
def test_no_exporter_when_env_is_empty(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str | None
) -> None:
    if value is not None:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", value)
    with caplog.at_level(logging.INFO, logger="telemetry.tracing"):
        provider = configure_tracing()
    assert _processors(provider) == ()
    messages = [r.getMessage() for r in caplog.records if r.name == "telemetry.tracing"]
    assert len(messages) == 1
    assert "no span exporter configured" in messages[0]
    # Spans still carry trace ids for exemplars and logs.
    with get_tracer(provider).start_as_current_span("local") as span:
        assert trace_id_hex(span) is not None
    shutdown_tracing(provider)


def test_otlp_http_exports_to_base_endpoint(
    monkeypatch: pytest.MonkeyPatch, otlp_collector: tuple[str, list[tuple[str, str, int]]]
) -> None:
    url, received = otlp_collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    provider = configure_tracing()
    with get_tracer(provider).start_as_current_span(names.SPAN_BATCH):
        pass
    shutdown_tracing(provider)  # flushes the batch processor
    assert len(received) == 1
    path, content_type, length = received[0]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    assert length > 0


def test_otlp_traces_endpoint_is_used_verbatim(
    monkeypatch: pytest.MonkeyPatch, otlp_collector: tuple[str, list[tuple[str, str, int]]]
) -> None:
    url, received = otlp_collector
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{url}/custom/traces")
    provider = configure_tracing()
    with get_tracer(provider).start_as_current_span(names.SPAN_DECODE):
        pass
    shutdown_tracing(provider)
    assert [r[0] for r in received] == ["/custom/traces"]


def test_console_exporter(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    provider = configure_tracing()
    with get_tracer(provider).start_as_current_span(names.SPAN_PREFILL):
        pass
    shutdown_tracing(provider)
    assert '"name": "gen_ai.prefill"' in capsys.readouterr().out


def test_grpc_protocol_names_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(TracingConfigError, match="opentelemetry-exporter-otlp-proto-grpc"):
        configure_tracing()


def test_unsupported_protocol_and_exporter_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
    with pytest.raises(TracingConfigError, match="unsupported OTLP protocol 'http/json'"):
        configure_tracing()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(TracingConfigError, match="zipkin"):
        configure_tracing()


def test_global_tracer_provider_is_left_alone(exporter: InMemorySpanExporter) -> None:
    from opentelemetry import trace

    before = trace.get_tracer_provider()
    provider = configure_tracing(exporter=exporter)
    assert trace.get_tracer_provider() is before
    assert trace.get_tracer_provider() is not provider
    shutdown_tracing(provider)
