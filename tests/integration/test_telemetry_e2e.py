"""Telemetry end to end on the real model: every request and token accounted for in the metrics,
server TTFT equal to what a client sees, and TTFT exemplars pointing at exported traces.

Each test serves the real SmolLM2 INT8 model (``real_model_dir``) on a live loopback server with
a fresh registry, drives it with greedy ``ignore_eos`` requests (so token counts are exact), and
reads the results back from that registry, the JSON request log and the span exporter.
"""

from __future__ import annotations

import io
import json
import re
import socket
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.settings import ServiceSettings
from telemetry import names
from telemetry.tracing import configure_tracing, shutdown_tracing
from tests.conftest import LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Start = Callable[[Litestar], LiveServer]
PROMPT = "The capital of France is"
TTFT = names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN


def real_settings(model_dir: Path, **overrides: Any) -> ServiceSettings:
    base: dict[str, Any] = {
        "engine": "ctranslate2",
        "model": model_dir,
        "device": "cpu",
        "batch_workers": 1,
        "spare_workers": 0,  # one batch at a time: the queue tests fill it
        "max_batch_delay_ms": 2.0,
    }
    base.update(overrides)
    return ServiceSettings(**base)


def request_lines(buffer: io.StringIO) -> dict[str, dict[str, Any]]:
    """The request log lines written so far, by request id."""
    out: dict[str, dict[str, Any]] = {}
    for raw in buffer.getvalue().splitlines():
        line = json.loads(raw)
        if line[names.LOG_EVENT] == names.EVENT_REQUEST:
            out[line[names.LOG_REQUEST_ID]] = line
    return out


def wait_for(condition: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Served:
    """A live server on the real model plus readers for its registry series."""

    def __init__(self, srv: LiveServer, registry: CollectorRegistry) -> None:
        self.srv = srv
        self.registry = registry
        card = httpx.get(srv.base_url + "/v1/models").json()["data"][0]
        self.model: str = card["id"]
        self.labels = {"model": self.model, "model_revision": card["revision"]}

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, {**self.labels, **labels})
        return 0.0 if value is None else value

    def body(self, max_tokens: int, *, chat: bool, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": stream,
        }
        if chat:
            body["messages"] = [{"role": "user", "content": "What is the capital of France?"}]
        else:
            body["prompt"] = PROMPT
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body


def serve(start: Start, registry: CollectorRegistry, app: Litestar) -> Served:
    return Served(start(app), registry)


def sse_data(text: str) -> list[Any]:
    events = [e[len("data: ") :] for e in text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]
    return [json.loads(e) for e in events[:-1]]


def post(
    served: Served, request_id: str, max_tokens: int, *, chat: bool, stream: bool
) -> dict[str, Any]:
    """One request; returns its ``usage`` (from the final SSE chunk when streamed)."""
    route = "/v1/chat/completions" if chat else "/v1/completions"
    r = httpx.post(
        served.srv.base_url + route,
        json=served.body(max_tokens, chat=chat, stream=stream),
        headers={"X-Request-ID": request_id},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    usage: dict[str, Any] = sse_data(r.text)[-1]["usage"] if stream else r.json()["usage"]
    return usage


def test_metrics_account_for_every_request_and_token(
    real_model_dir: Path,
    live_server: Start,
    registry: CollectorRegistry,
    log_buffer: io.StringIO,
) -> None:
    """Counts and sums in the registry equal what the clients received, request by request.

    One batch worker and a queue of two make overload deterministic: while a long streamed
    request holds the worker and two more fill the queue, a further request must get a 429
    (``rejected``/``queue_full``); the long request is then dropped by its client
    (``aborted``/``client_disconnected``).
    """
    app = create_app(
        real_settings(real_model_dir, max_queue_size=2, max_batch_size=4), registry=registry
    )
    served = serve(live_server, registry, app)

    # Phase 1: successful requests, streamed and not, chat and completion, two concurrent.
    plan = {
        "ok-1": (8, False, False),
        "ok-2": (12, True, False),
        "ok-3": (10, True, True),
        "ok-4": (16, False, True),
    }
    usages: dict[str, dict[str, Any]] = {}
    for rid in ("ok-1", "ok-2"):
        max_tokens, chat, stream = plan[rid]
        usages[rid] = post(served, rid, max_tokens, chat=chat, stream=stream)
    with ThreadPoolExecutor(2) as pool:
        futures = {
            rid: pool.submit(
                post, served, rid, plan[rid][0], chat=plan[rid][1], stream=plan[rid][2]
            )
            for rid in ("ok-3", "ok-4")
        }
        usages.update({rid: f.result() for rid, f in futures.items()})

    # Phase 2: overload and abort.
    long_body = served.body(400, chat=False, stream=True)
    with (
        httpx.Client(base_url=served.srv.base_url, timeout=60) as client,
        ThreadPoolExecutor(2) as pool,
    ):
        with client.stream(
            "POST", "/v1/completions", json=long_body, headers={"X-Request-ID": "aborted"}
        ) as long_stream:
            assert long_stream.status_code == 200
            # Held in a variable: a discarded httpx line iterator closes the connection when
            # it is garbage collected, which would abort the request here already.
            lines = long_stream.iter_lines()
            for line in lines:
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                    break  # the long request is running: the only batch worker is busy
            queued = {
                rid: pool.submit(post, served, rid, 8, chat=False, stream=False)
                for rid in ("queued-1", "queued-2")
            }
            wait_for(lambda: served.sample(names.TOKENBOOTH_REQUESTS_WAITING) == 2, "full queue")
            rejected = client.post(
                "/v1/completions",
                json=served.body(8, chat=False, stream=False),
                headers={"X-Request-ID": "rejected"},
            )
            assert rejected.status_code == 429, rejected.text
            assert rejected.json()["error"]["code"] == "queue_full"
            # Still generating: leaving this block closes the connection mid-stream.
            assert served.sample(names.TOKENBOOTH_REQUESTS_RUNNING) == 1
        usages.update({rid: f.result() for rid, f in queued.items()})
    wait_for(lambda: served.sample(names.TOKENBOOTH_REQUESTS_RUNNING) == 0, "idle batcher")

    def batches_recorded() -> bool:
        # A batch is recorded just after its last job finished (decode is observed last).
        size_sum = served.sample(names.TOKENBOOTH_BATCH_SIZE + "_sum")
        recorded = served.sample(names.TOKENBOOTH_BATCH_DECODE + "_count")
        return size_sum >= 7 and recorded == served.sample(names.TOKENBOOTH_BATCH_SIZE + "_count")

    wait_for(batches_recorded, "the last batch to be recorded")
    wait_for(lambda: "aborted" in request_lines(log_buffer), "the aborted request's log line")

    logs = request_lines(log_buffer)
    aborted = logs["aborted"]
    assert aborted[names.LOG_OUTCOME] == names.OUTCOME_ABORTED
    assert aborted[names.LOG_ERROR_TYPE] == "client_disconnected"
    assert aborted[names.LOG_STATUS] == 499
    # It streamed at least one token and stopped long before its 400.
    assert 1 <= aborted[names.LOG_COMPLETION_TOKENS] < 400
    assert logs["rejected"][names.LOG_OUTCOME] == names.OUTCOME_REJECTED
    assert logs["rejected"][names.LOG_STATUS] == 429

    # Exact counts: ignore_eos makes every successful request generate exactly max_tokens.
    for rid in plan:
        assert usages[rid]["completion_tokens"] == plan[rid][0], rid
    for rid in ("queued-1", "queued-2"):
        assert usages[rid]["completion_tokens"] == 8, rid
    for rid, usage in usages.items():
        assert logs[rid][names.LOG_OUTCOME] == names.OUTCOME_LENGTH, rid
        assert logs[rid][names.LOG_PROMPT_TOKENS] == usage["prompt_tokens"], rid
        assert logs[rid][names.LOG_COMPLETION_TOKENS] == usage["completion_tokens"], rid

    # Requests that reached the engine: the six successful ones and the aborted one.
    engine_reqs = [(u["prompt_tokens"], u["completion_tokens"]) for u in usages.values()] + [
        (aborted[names.LOG_PROMPT_TOKENS], aborted[names.LOG_COMPLETION_TOKENS])
    ]
    assert len(engine_reqs) == 7
    completion = [c for _, c in engine_reqs]

    sample = served.sample
    # The aborted request produced tokens, so it has a TTFT and inter-token gaps too.
    assert sample(TTFT + "_count") == 7
    assert sample(names.TOKENBOOTH_INTER_TOKEN_LATENCY + "_count") == sum(c - 1 for c in completion)
    assert sample(names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN + "_count") == sum(
        1 for c in completion if c >= 2
    )
    assert sample(names.GEN_AI_SERVER_REQUEST_DURATION + "_count") == 7
    # The rejected request never reached a batch.
    assert sample(names.TOKENBOOTH_QUEUE_WAIT + "_count") == 7
    assert sample(names.TOKENBOOTH_BATCH_SIZE + "_sum") == 7
    batches = sample(names.TOKENBOOTH_BATCH_SIZE + "_count")
    assert 1 <= batches <= 7
    assert sample(names.TOKENBOOTH_BATCH_PREFILL + "_count") == batches
    assert sample(names.TOKENBOOTH_BATCH_FORMATION_DELAY + "_count") == batches
    assert sample(names.TOKENBOOTH_GENERATION_TOKENS) == sum(completion)
    assert sample(names.TOKENBOOTH_PROMPT_TOKENS) == sum(p for p, _ in engine_reqs)

    def requests(outcome: str, error_type: str = "") -> float:
        return sample(names.TOKENBOOTH_REQUESTS, outcome=outcome, error_type=error_type)

    assert requests(names.OUTCOME_LENGTH) == 6
    assert requests(names.OUTCOME_REJECTED, "queue_full") == 1
    assert requests(names.OUTCOME_ABORTED, "client_disconnected") == 1
    total = sum(
        s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == names.TOKENBOOTH_REQUESTS
    )
    assert total == 8
    assert sample(names.TOKENBOOTH_REQUESTS_WAITING) == 0


def _stream_over_socket(port: int, body: dict[str, Any], request_id: str) -> tuple[float, bytes]:
    """POST a streamed completion on a raw socket; return (client TTFT, response bytes).

    A bare socket keeps client-side overhead to the loopback round trip: the clock starts when
    the whole request has been handed to the kernel and stops at the ``recv`` that brings the
    first SSE event with text.
    """
    payload = json.dumps(body).encode()
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n"
        f"X-Request-ID: {request_id}\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        received = b""
        ttft: float | None = None
        t0 = time.perf_counter()
        sock.sendall(head + payload)
        while True:
            chunk = sock.recv(65536)
            t = time.perf_counter()
            if not chunk:
                break
            received += chunk
            if ttft is None:
                for event in re.findall(rb"data: (\{.*?\})\n\n", received):
                    if json.loads(event)["choices"][0]["text"]:
                        ttft = t - t0
                        break
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    assert b"data: [DONE]" in received
    assert ttft is not None
    return ttft, received


def test_server_ttft_agrees_with_client_ttft(
    real_model_dir: Path,
    live_server: Start,
    registry: CollectorRegistry,
    log_buffer: io.StringIO,
) -> None:
    """The server's per-request TTFT equals the client's to within 5 ms.

    Client TTFT (request sent -> first content SSE chunk received) is necessarily a little
    longer than the server's (handler entry -> first token out of the engine): it also holds
    the loopback HTTP parse and routing before the handler, and the event-loop wakeup, SSE write
    and socket delivery after the token. That is 1-2 ms on an idle host; 5 ms leaves room for
    it. Scheduler noise on a shared 2-core host only ever adds delay, in single requests by up
    to ~25 ms while other processes saturate the CPUs, so the 5 ms bound is asserted on the
    median of seven sequential requests and each single request is held to 0 < diff < 50 ms.
    The 60 ms batch delay is part of every request's TTFT: a server that started the clock at
    batch start instead of arrival would be 60 ms short and fail on every request.
    """
    app = create_app(real_settings(real_model_dir, max_batch_delay_ms=60.0), registry=registry)
    served = serve(live_server, registry, app)
    body = served.body(8, chat=False, stream=True)
    diffs: list[float] = []
    for i in range(7):
        request_id = f"ttft-{i}"
        before = served.sample(TTFT + "_sum")
        client_ttft, raw = _stream_over_socket(served.srv.port, body, request_id)
        assert b'"completion_tokens":8' in raw

        def logged(rid: str = request_id) -> bool:
            return rid in request_lines(log_buffer)

        def batch_ended(n: int = i + 1) -> bool:
            return served.sample(names.TOKENBOOTH_BATCH_SIZE + "_count") == n

        wait_for(logged, "request log line")
        # The batch ends just after its last token; wait so the next request batches alone.
        wait_for(batch_ended, "batch end")
        server_ttft = request_lines(log_buffer)[request_id][names.LOG_TTFT_S]
        # The log line and the histogram record the same measurement.
        assert served.sample(TTFT + "_count") == i + 1
        assert served.sample(TTFT + "_sum") - before == pytest.approx(server_ttft, abs=2e-6)
        assert server_ttft >= 0.06  # includes the batch delay
        diff = client_ttft - server_ttft
        print(
            f"{request_id}: client {client_ttft * 1e3:.2f} ms server {server_ttft * 1e3:.2f} ms "
            f"diff {diff * 1e3:.2f} ms"
        )
        # Causality: the client sends before the server's clock starts and receives after it stops.
        assert 0 < diff < 0.05, (client_ttft, server_ttft)
        diffs.append(diff)
    assert statistics.median(diffs) < 0.005, [round(d * 1e3, 2) for d in diffs]


_EXEMPLAR = re.compile(
    rf'^{TTFT}_bucket\{{(?P<labels>[^}}]*)\}} \S+ # \{{trace_id="(?P<trace_id>[0-9a-f]{{32}})"\}} '
    r"(?P<value>\S+)"
)


def test_ttft_exemplar_names_an_exported_trace(
    real_model_dir: Path, live_server: Start, registry: CollectorRegistry
) -> None:
    """The exemplar on a TTFT bucket carries the trace id of that very request's server span."""
    exporter = InMemorySpanExporter()
    provider = configure_tracing(exporter=exporter)
    try:
        app = create_app(real_settings(real_model_dir), registry=registry, tracer_provider=provider)
        served = serve(live_server, registry, app)
        for i in range(2):
            post(served, f"ex-{i}", 4, chat=True, stream=bool(i))
        r = httpx.get(
            served.srv.base_url + "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/openmetrics-text")
    finally:
        shutdown_tracing(provider)
    exemplars = [m for line in r.text.splitlines() if (m := _EXEMPLAR.match(line))]
    assert exemplars, [line for line in r.text.splitlines() if line.startswith(TTFT)]
    server_spans = {
        format(s.context.trace_id, "032x"): s
        for s in exporter.get_finished_spans()
        if s.name == "POST /v1/chat/completions" and s.context is not None
    }
    assert len(server_spans) == 2
    for match in exemplars:
        trace_id = match["trace_id"]
        assert trace_id in server_spans, (trace_id, sorted(server_spans))
        attributes = server_spans[trace_id].attributes
        assert attributes is not None
        # Same request: the exemplar's value is the TTFT that span recorded.
        assert float(match["value"]) == pytest.approx(attributes[names.ATTR_TTFT_SECONDS])
        le = re.search(r'le="([^"]+)"', match["labels"])
        assert le is not None and float(match["value"]) <= float(le[1])
