"""Traces and request logs of the service on the fake engine: span tree, links, W3C parent,
GenAI attributes, prompt privacy, real OTLP/HTTP export, and the JSON request log line."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.fake_engine import FakeCodec
from telemetry import names
from telemetry.tracing import configure_tracing, shutdown_tracing
from tests.conftest import fake_settings, wait_ready

MODEL = "fake-model"
CHAT_ROUTE = "/v1/chat/completions"
SERVER_SPAN = f"POST {CHAT_ROUTE}"
# Unique words that appear in no span name, attribute key or log field, so finding them anywhere
# in exported telemetry means request text leaked.
SECRET = "zanzibar-quokka-7731"
PARENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{PARENT_TRACE_ID}-{PARENT_SPAN_ID}-01"
PER_REQUEST_SPANS = (
    names.SPAN_QUEUE_WAIT,
    names.SPAN_PREFILL,
    names.SPAN_DECODE,
    names.SPAN_STREAM,
)


# Ambient OTEL_* settings of the host must not change what these tests export.
pytestmark = pytest.mark.usefixtures("clean_otel_env")


def chat_body(content: str = f"tell me about {SECRET}", **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }


def sse_payloads(text: str) -> list[Any]:
    events = [e[len("data: ") :] for e in text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def hex_span(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


def interval(span: ReadableSpan) -> tuple[int, int]:
    """(start, end) of a finished span in epoch nanoseconds."""
    assert span.start_time is not None and span.end_time is not None
    return span.start_time, span.end_time


async def wait_for_spans(
    exporter: InMemorySpanExporter, wanted: Sequence[str], limit_s: float = 5.0
) -> dict[str, list[ReadableSpan]]:
    """Finished spans by name once every name in ``wanted`` has ended at least once.

    The batch, prefill and decode spans end when the engine call returns, which can be just
    after the client has read the last SSE byte, so the test polls instead of racing.
    """
    deadline = time.monotonic() + limit_s
    while True:
        by_name: dict[str, list[ReadableSpan]] = {}
        for span in exporter.get_finished_spans():
            by_name.setdefault(span.name, []).append(span)
        if all(name in by_name for name in wanted) or time.monotonic() > deadline:
            return by_name
        await asyncio.sleep(0.01)


def request_log_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return [p for p in parsed if p[names.LOG_EVENT] == names.EVENT_REQUEST]


async def stream_chat(
    provider: TracerProvider,
    registry: CollectorRegistry,
    headers: dict[str, str] | None = None,
    **settings: Any,
) -> tuple[list[Any], Any]:
    app = create_app(fake_settings(**settings), registry=registry, tracer_provider=provider)
    async with AsyncTestClient(app) as client:
        await wait_ready(client)
        r = await client.post(
            CHAT_ROUTE,
            json=chat_body(stream=True, stream_options={"include_usage": True}),
            headers=headers or {},
        )
        assert r.status_code == 200, r.text
        payloads = sse_payloads(r.text)
    return payloads, payloads[-1]["usage"]


async def test_span_tree_of_one_streamed_request(
    provider: TracerProvider, exporter: InMemorySpanExporter, registry: CollectorRegistry
) -> None:
    # A lone request waits out the 30 ms batch delay, so queue wait is a visible part of TTFT.
    _, usage = await stream_chat(
        provider, registry, fake_ttft_ms=20.0, fake_itl_ms=2.0, max_batch_delay_ms=30.0
    )
    spans = await wait_for_spans(exporter, [SERVER_SPAN, names.SPAN_BATCH, *PER_REQUEST_SPANS])
    (server,) = spans[SERVER_SPAN]
    assert server.kind is SpanKind.SERVER
    assert server.parent is None  # no traceparent sent: the request starts its own trace
    assert server.start_time is not None and server.end_time is not None

    for name in PER_REQUEST_SPANS:
        (child,) = spans[name]
        assert child.parent is not None, name
        assert child.parent.span_id == server.context.span_id, name
        assert hex_trace(child) == hex_trace(server), name
        assert child.start_time is not None and child.end_time is not None
        # Children lie inside the request (1 ms slack: phase spans are placed on the wall clock
        # from perf_counter stamps).
        assert child.start_time >= server.start_time - 1_000_000, name
        assert child.end_time <= server.end_time + 1_000_000, name

    (batch,) = spans[names.SPAN_BATCH]
    assert batch.attributes is not None
    assert batch.attributes[names.ATTR_BATCH_SIZE] == 1
    linked = [(link.context.trace_id, link.context.span_id) for link in batch.links]
    assert linked == [(server.context.trace_id, server.context.span_id)]

    # The phases tile the request in order: queue wait, then prefill up to the first token
    # (the fake engine's 20 ms TTFT), then decode.
    queue_start, queue_end = interval(spans[names.SPAN_QUEUE_WAIT][0])
    prefill_start, prefill_end = interval(spans[names.SPAN_PREFILL][0])
    decode_start, _ = interval(spans[names.SPAN_DECODE][0])
    assert abs(queue_end - prefill_start) < 1_000_000
    assert abs(prefill_end - decode_start) < 1_000_000
    assert queue_end - queue_start >= 29_000_000
    assert prefill_end - prefill_start >= 19_000_000

    attrs = server.attributes
    assert attrs is not None
    assert attrs[names.ATTR_OPERATION_NAME] == names.OPERATION_CHAT
    assert attrs[names.ATTR_REQUEST_MODEL] == MODEL
    assert attrs[names.ATTR_REQUEST_MAX_TOKENS] == 4
    assert attrs[names.ATTR_USAGE_INPUT_TOKENS] == usage["prompt_tokens"]
    codec = FakeCodec()
    rendered = codec.render_chat([{"role": "user", "content": f"tell me about {SECRET}"}])
    assert usage["prompt_tokens"] == len(codec.encode(rendered))
    assert attrs[names.ATTR_USAGE_OUTPUT_TOKENS] == usage["completion_tokens"] == 4
    assert tuple(attrs[names.ATTR_RESPONSE_FINISH_REASONS]) == ("length",)  # type: ignore[arg-type]
    ttft = attrs[names.ATTR_TTFT_SECONDS]
    assert isinstance(ttft, float)
    assert 0.049 <= ttft < (server.end_time - server.start_time) / 1e9
    # TTFT is queue wait plus prefill, as the phase spans show it (the slack covers reading and
    # tokenizing the body between arrival and enqueue).
    assert ttft == pytest.approx((prefill_end - queue_start) / 1e9, abs=0.005)
    assert registry.get_sample_value(
        names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN + "_sum",
        {"model": MODEL, "model_revision": "fake"},
    ) == pytest.approx(ttft)


def _exported_text(spans: Sequence[ReadableSpan]) -> str:
    return "\n".join(span.to_json() for span in spans)


@pytest.mark.parametrize("trace_prompts", [False, True])
async def test_prompt_text_is_recorded_only_when_enabled(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    registry: CollectorRegistry,
    trace_prompts: bool,
) -> None:
    await stream_chat(provider, registry, trace_prompts=trace_prompts)
    spans = await wait_for_spans(exporter, [SERVER_SPAN, names.SPAN_BATCH, *PER_REQUEST_SPANS])
    everything = _exported_text(exporter.get_finished_spans())
    (server,) = spans[SERVER_SPAN]
    assert server.attributes is not None
    if trace_prompts:
        prompt = server.attributes[names.ATTR_PROMPT]
        assert isinstance(prompt, str) and SECRET in prompt
        # Only the server span carries it, once.
        assert everything.count(SECRET) == 1
    else:
        assert names.ATTR_PROMPT not in server.attributes
        assert SECRET not in everything


async def test_client_traceparent_is_honoured(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    registry: CollectorRegistry,
    log_buffer: io.StringIO,
) -> None:
    await stream_chat(provider, registry, headers={"traceparent": TRACEPARENT})
    spans = await wait_for_spans(exporter, [SERVER_SPAN, names.SPAN_BATCH, *PER_REQUEST_SPANS])
    (server,) = spans[SERVER_SPAN]
    assert hex_trace(server) == PARENT_TRACE_ID
    assert server.parent is not None
    assert server.parent.is_remote
    assert format(server.parent.span_id, "016x") == PARENT_SPAN_ID
    assert hex_span(server) != PARENT_SPAN_ID
    for name in PER_REQUEST_SPANS:
        assert [hex_trace(s) for s in spans[name]] == [PARENT_TRACE_ID], name
    (batch,) = spans[names.SPAN_BATCH]
    assert [format(link.context.trace_id, "032x") for link in batch.links] == [PARENT_TRACE_ID]
    (line,) = request_log_lines(log_buffer)
    assert line[names.LOG_TRACE_ID] == PARENT_TRACE_ID


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_request_log_line_is_bound_to_request_and_trace(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    registry: CollectorRegistry,
    log_buffer: io.StringIO,
    stream: bool,
) -> None:
    app = create_app(fake_settings(), registry=registry, tracer_provider=provider)
    request_id = f"client-req-{'s' if stream else 'n'}-42"
    async with AsyncTestClient(app) as client:
        await wait_ready(client)
        extra: dict[str, Any] = (
            {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        )
        r = await client.post(
            CHAT_ROUTE, json=chat_body(max_tokens=5, **extra), headers={"X-Request-ID": request_id}
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == request_id
        usage = sse_payloads(r.text)[-1]["usage"] if stream else r.json()["usage"]
        spans = await wait_for_spans(exporter, [SERVER_SPAN])
    (server,) = spans[SERVER_SPAN]
    (line,) = request_log_lines(log_buffer)
    assert line[names.LOG_REQUEST_ID] == request_id
    assert line[names.LOG_TRACE_ID] == hex_trace(server)
    assert line[names.LOG_ROUTE] == CHAT_ROUTE
    assert line[names.LOG_STATUS] == 200
    assert line[names.LOG_OUTCOME] == names.OUTCOME_LENGTH
    assert line[names.LOG_ERROR_TYPE] == ""
    assert line[names.LOG_PROMPT_TOKENS] == usage["prompt_tokens"]
    assert line[names.LOG_COMPLETION_TOKENS] == usage["completion_tokens"] == 5
    assert server.attributes is not None
    assert line[names.LOG_TTFT_S] == pytest.approx(
        server.attributes[names.ATTR_TTFT_SECONDS], abs=1e-6
    )
    assert line[names.LOG_BATCH_SIZE] == 1
    assert isinstance(line[names.LOG_QUEUE_WAIT_S], float)
    assert line[names.LOG_DURATION_S] >= line[names.LOG_TTFT_S]
    # No request text anywhere in the service's logs, not only in the request line.
    assert SECRET not in log_buffer.getvalue()


async def test_refused_request_ends_its_span_as_an_error(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    registry: CollectorRegistry,
    log_buffer: io.StringIO,
) -> None:
    app = create_app(fake_settings(), registry=registry, tracer_provider=provider)
    async with AsyncTestClient(app) as client:
        await wait_ready(client)
        r = await client.post(CHAT_ROUTE, json={**chat_body(), "model": "elsewhere"})
        assert r.status_code == 404
    (server,) = exporter.get_finished_spans()
    assert server.name == SERVER_SPAN
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes[names.ATTR_ERROR_TYPE] == "model_not_found"
    assert names.ATTR_USAGE_OUTPUT_TOKENS not in server.attributes
    (line,) = request_log_lines(log_buffer)
    assert line[names.LOG_TRACE_ID] == hex_trace(server)
    assert line[names.LOG_OUTCOME] == names.OUTCOME_REJECTED


# --------------------------------------------------------------------------- real OTLP/HTTP


class _OtlpReceiver(BaseHTTPRequestHandler):
    """Stands in for an OpenTelemetry collector: decodes each OTLP/HTTP protobuf export."""

    exports: list[ExportTraceServiceRequest]
    paths: list[str]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.exports.append(request)
        self.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[str, list[ExportTraceServiceRequest], list[str]]]:
    exports: list[ExportTraceServiceRequest] = []
    paths: list[str] = []
    handler = type("Receiver", (_OtlpReceiver,), {"exports": exports, "paths": paths})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", exports, paths
    server.shutdown()
    server.server_close()
    thread.join()


def _received(
    exports: Sequence[ExportTraceServiceRequest],
) -> tuple[list[dict[str, Any]], set[str]]:
    """Decoded spans (name, ids, parent) and the service.name values of their resources."""
    spans: list[dict[str, Any]] = []
    service_names: set[str] = set()
    for export in exports:
        for resource_spans in export.resource_spans:
            for kv in resource_spans.resource.attributes:
                if kv.key == SERVICE_NAME:
                    service_names.add(kv.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "links": [link.trace_id.hex() for link in span.links],
                        }
                    )
    return spans, service_names


@pytest.mark.parametrize("owner", ["test", "app"])
async def test_spans_reach_an_otlp_http_collector(
    monkeypatch: pytest.MonkeyPatch,
    otlp_receiver: tuple[str, list[ExportTraceServiceRequest], list[str]],
    registry: CollectorRegistry,
    owner: str,
) -> None:
    """The real OTLP/HTTP exporter, configured only by env vars, delivers the request's spans.

    ``owner="test"``: the test builds the provider with ``configure_tracing`` and flushes it.
    ``owner="app"``: ``create_app`` builds it from the same env and must flush it on shutdown.
    """
    url, exports, paths = otlp_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{url}/v1/traces")
    provider: TracerProvider | None = configure_tracing() if owner == "test" else None
    app = create_app(fake_settings(), registry=registry, tracer_provider=provider)
    async with AsyncTestClient(app) as client:
        await wait_ready(client)
        r = await client.post(
            CHAT_ROUTE,
            json=chat_body(stream=True),
            headers={"traceparent": TRACEPARENT},
        )
        assert r.status_code == 200, r.text
    # Leaving the client ran the app's shutdown, which waits for the batch to end.
    if provider is not None:
        assert provider.force_flush(timeout_millis=5000)
        shutdown_tracing(provider)
    spans, service_names = _received(exports)
    assert set(paths) == {"/v1/traces"}
    assert service_names == {"tokenbooth"}
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    (server,) = by_name[SERVER_SPAN]
    assert server["trace_id"] == PARENT_TRACE_ID
    assert server["parent_span_id"] == PARENT_SPAN_ID
    for name in PER_REQUEST_SPANS:
        (child,) = by_name[name]
        assert child["trace_id"] == PARENT_TRACE_ID, name
        assert child["parent_span_id"] == server["span_id"], name
    (batch,) = by_name[names.SPAN_BATCH]
    assert batch["links"] == [PARENT_TRACE_ID]
    assert SECRET.encode() not in b"".join(e.SerializeToString() for e in exports)
