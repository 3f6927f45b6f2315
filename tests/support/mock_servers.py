"""Small real HTTP servers that speak like tokenbooth, vLLM, llama.cpp, TGI, SGLang or a bare
OpenAI-compatible server, for tests of detection, readiness and the server view.

Each serves ``/v1/chat/completions`` (streamed SSE in that server's style), ``/v1/models``, its
health and version endpoints, and ``/metrics`` from the recorded fixture of its kind
(``tests/fixtures/servers/<kind>/metrics.txt``) with its counters and histograms advanced as it
serves requests. Which samples a request advances is written here from each project's source,
by the names the server itself exposes, independently of the adapters under test: a wrong name
in an adapter leaves its server view empty instead of passing.

Stdlib ``http.server`` in a thread, HTTP/1.1 with keep-alive and chunked streams, loopback only.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

__all__ = [
    "FIXTURES",
    "KINDS",
    "MetricsText",
    "MockServer",
    "RequestFacts",
]

FIXTURES: Final = Path(__file__).resolve().parents[1] / "fixtures" / "servers"
MODEL: Final = "HuggingFaceTB/SmolLM2-135M-Instruct"

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


class MetricsText:
    """A recorded ``/metrics`` exposition whose sample values can be advanced, then rendered.

    Lines keep their order, comments and label text; only values change.
    """

    def __init__(self, text: str) -> None:
        self._lines: list[str | list[Any]] = []
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if line.startswith("#") or not m:
                self._lines.append(line)
                continue
            labels = dict(_LABEL.findall(m.group(3) or ""))
            self._lines.append([m.group(1), m.group(2) or "", labels, float(m.group(4))])
        self._lock = threading.Lock()

    def _samples(self, name: str, labels: dict[str, str]) -> Iterator[list[Any]]:
        for line in self._lines:
            if (
                isinstance(line, list)
                and line[0] == name
                and all(line[2].get(k) == v for k, v in labels.items())
            ):
                yield line

    def has(self, name: str) -> bool:
        """Whether the exposition has a sample of this name."""
        return next(self._samples(name, {}), None) is not None

    def add(self, name: str, amount: float, **labels: str) -> None:
        """Add to the first sample of ``name`` with these labels (a counter)."""
        with self._lock:
            for line in self._samples(name, labels):
                line[3] += amount
                return

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set the first sample of ``name`` with these labels (a gauge)."""
        with self._lock:
            for line in self._samples(name, labels):
                line[3] = float(value)
                return

    def observe(self, histogram: str, value: float, **labels: str) -> None:
        """Record one observation in a histogram: buckets at or above it, sum and count."""
        with self._lock:
            for line in self._samples(histogram + "_bucket", labels):
                le = line[2]["le"]
                if le == "+Inf" or value <= float(le):
                    line[3] += 1
            for suffix, amount in (("_sum", value), ("_count", 1.0)):
                for line in self._samples(histogram + suffix, labels):
                    line[3] += amount
                    break

    def render(self) -> str:
        """The exposition with the current values."""
        with self._lock:
            out = []
            for line in self._lines:
                if isinstance(line, str):
                    out.append(line)
                else:
                    value = line[3]
                    text = str(int(value)) if value.is_integer() else repr(value)
                    out.append(f"{line[0]}{line[1]} {text}")
            return "\n".join(out) + "\n"


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What one served request measured, for the metrics it advances."""

    prompt_tokens: int
    completion_tokens: int
    queue_s: float
    ttft_s: float
    gaps_s: tuple[float, ...]
    e2e_s: float


Recorder = Callable[[MetricsText, RequestFacts], None]
Gauges = Callable[[MetricsText, int, int], None]  # (metrics, in flight, served so far)


def _record_tokenbooth(m: MetricsText, r: RequestFacts) -> None:
    # telemetry/names.py; ServiceMetrics.observe_* in telemetry/metrics.py
    m.add("tokenbooth_prompt_tokens_total", r.prompt_tokens)
    m.add("tokenbooth_generation_tokens_total", r.completion_tokens)
    m.add("tokenbooth_requests_total", 1, outcome="length")
    m.observe("gen_ai_server_time_to_first_token_seconds", r.ttft_s)
    m.observe("gen_ai_server_request_duration_seconds", r.e2e_s)
    m.observe("tokenbooth_queue_wait_seconds", r.queue_s)
    for gap in r.gaps_s:
        m.observe("tokenbooth_inter_token_latency_seconds", gap)


def _gauges_tokenbooth(m: MetricsText, in_flight: int, served: int) -> None:
    m.set("tokenbooth_requests_running", in_flight)


def _record_vllm(m: MetricsText, r: RequestFacts) -> None:
    # vllm/v1/metrics/loggers.py PrometheusStatLogger.record
    m.add("vllm:prompt_tokens_total", r.prompt_tokens)
    m.add("vllm:generation_tokens_total", r.completion_tokens)
    m.add("vllm:request_success_total", 1, finished_reason="length")
    m.observe("vllm:time_to_first_token_seconds", r.ttft_s)
    for gap in r.gaps_s:
        m.observe("vllm:time_per_output_token_seconds", gap)
    m.observe("vllm:e2e_request_latency_seconds", r.e2e_s)
    m.observe("vllm:request_queue_time_seconds", r.queue_s)
    m.observe("vllm:request_prefill_time_seconds", r.ttft_s - r.queue_s)
    m.observe("vllm:request_decode_time_seconds", r.e2e_s - r.ttft_s)
    m.observe("vllm:request_inference_time_seconds", r.e2e_s - r.queue_s)
    m.observe("vllm:request_prompt_tokens", r.prompt_tokens)
    m.observe("vllm:request_generation_tokens", r.completion_tokens)


def _kv_share(served: int) -> float:
    # Blocks of finished requests stay cached: usage creeps up with traffic, never past full.
    return min(0.9, 0.002 * served)


def _gauges_vllm(m: MetricsText, in_flight: int, served: int) -> None:
    m.set("vllm:num_requests_running", in_flight)
    m.set("vllm:kv_cache_usage_perc", _kv_share(served))
    m.set("vllm:gpu_cache_usage_perc", _kv_share(served))


def _record_llamacpp(m: MetricsText, r: RequestFacts) -> None:
    # tools/server: server_metrics (prompt / predict counters), exported by /metrics
    # A prompt's first tokens (the chat template's prefix) come from the slot's cache.
    cached = min(4, r.prompt_tokens)
    m.add("llamacpp:prompt_tokens_cached_total", cached)
    m.add("llamacpp:prompt_tokens_total", r.prompt_tokens - cached)
    m.add("llamacpp:prompt_seconds_total", r.ttft_s)
    m.add("llamacpp:tokens_predicted_total", r.completion_tokens)
    m.add("llamacpp:tokens_predicted_seconds_total", r.e2e_s - r.ttft_s)
    m.add("llamacpp:n_decode_total", r.completion_tokens)


def _gauges_llamacpp(m: MetricsText, in_flight: int, served: int) -> None:
    m.set("llamacpp:requests_processing", in_flight)
    if m.has("llamacpp:kv_cache_usage_ratio"):
        m.set("llamacpp:kv_cache_usage_ratio", _kv_share(served))


def _record_tgi(m: MetricsText, r: RequestFacts) -> None:
    # router/src/server.rs (generate / chat_completions), router/src/validation.rs
    m.add("tgi_request_count", 1)
    m.add("tgi_request_success", 1)
    m.observe("tgi_request_input_length", r.prompt_tokens)
    m.observe("tgi_request_max_new_tokens", r.completion_tokens)
    m.observe("tgi_request_generated_tokens", r.completion_tokens)
    m.observe("tgi_request_duration", r.e2e_s)
    m.observe("tgi_request_queue_duration", r.queue_s)
    m.observe("tgi_request_inference_duration", r.e2e_s - r.queue_s)
    m.observe(
        "tgi_request_mean_time_per_token_duration", (r.e2e_s - r.queue_s) / r.completion_tokens
    )


def _gauges_tgi(m: MetricsText, in_flight: int, served: int) -> None:
    m.set("tgi_batch_current_size", in_flight)
    m.set("tgi_batch_current_max_tokens", in_flight * 128)


def _record_sglang(m: MetricsText, r: RequestFacts) -> None:
    # python/sglang/srt/metrics/collector.py TokenizerMetricsCollector / SchedulerMetricsCollector
    m.add("sglang:prompt_tokens_total", r.prompt_tokens)
    m.add("sglang:generation_tokens_total", r.completion_tokens)
    m.add("sglang:num_requests_total", 1)
    m.observe("sglang:time_to_first_token_seconds", r.ttft_s)
    m.observe("sglang:e2e_request_latency_seconds", r.e2e_s)
    m.observe("sglang:queue_time_seconds", r.queue_s)
    for gap in r.gaps_s:
        m.observe("sglang:inter_token_latency_seconds", gap)


def _gauges_sglang(m: MetricsText, in_flight: int, served: int) -> None:
    m.set("sglang:num_running_reqs", in_flight)
    m.set("sglang:token_usage", _kv_share(served))


def _chunk(kind: str, text: str | None, *, role: bool, finish: str | None) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if kind == "tgi":
        # TGI repeats the role on every delta and sends usage: null until the last chunk.
        delta = {"role": "assistant", "content": text or ""}
        return {
            "object": "chat.completion.chunk",
            "id": "",
            "created": int(time.time()),
            "model": MODEL,
            "system_fingerprint": "3.3.6-native",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }
    if text is not None:
        delta["content"] = text
    elif role:
        delta["content"] = None if kind == "llamacpp" else ""
    body: dict[str, Any] = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if kind == "llamacpp":
        body["system_fingerprint"] = "b6100-1d72c841"
    return body


@dataclass(frozen=True)
class _Kind:
    """How one kind of server looks from outside."""

    owned_by: str
    health: dict[str, tuple[int, Any]]  # path -> (status, JSON body or None)
    info: dict[str, Any] = field(default_factory=dict)  # version endpoints: path -> body
    headers: dict[str, str] = field(default_factory=dict)  # on every chat response
    data_prefix: bytes = b"data: "
    record: Recorder | None = None
    gauges: Gauges | None = None


KINDS: Final[dict[str, _Kind]] = {
    "tokenbooth": _Kind(
        owned_by="tokenbooth",
        health={"/health/ready": (200, {"status": "ready"}), "/health/live": (200, None)},
        record=_record_tokenbooth,
        gauges=_gauges_tokenbooth,
    ),
    "vllm": _Kind(
        owned_by="vllm",
        health={"/health": (200, None)},
        info={"/version": {"version": "0.10.1.1"}},
        record=_record_vllm,
        gauges=_gauges_vllm,
    ),
    "llamacpp": _Kind(
        owned_by="llamacpp",
        health={"/health": (200, {"status": "ok"})},
        info={"/props": {"build_info": "b6100-1d72c841", "total_slots": 4}},
        record=_record_llamacpp,
        gauges=_gauges_llamacpp,
    ),
    "tgi": _Kind(
        owned_by=MODEL,
        health={"/health": (200, None)},
        info={"/info": {"model_id": MODEL, "router": "text-generation-router", "version": "3.3.6"}},
        headers={"x-compute-type": "gpu+optimized"},
        data_prefix=b"data:",
        record=_record_tgi,
        gauges=_gauges_tgi,
    ),
    "sglang": _Kind(
        owned_by="sglang",
        health={"/health": (200, None)},
        info={"/get_server_info": {"version": "0.5.2", "model_path": MODEL}},
        record=_record_sglang,
        gauges=_gauges_sglang,
    ),
    # Speaks /v1/chat/completions and /v1/models only: no metrics, no health, no version.
    "openai": _Kind(owned_by="system", health={}),
}
"""Every kind the harness knows, as a mock."""


class MockServer:
    """One mock server of a kind on a free loopback port; a context manager.

    Args:
        kind: A key of :data:`KINDS`.
        ttft_s: Time from a request's arrival to its first token.
        itl_s: Time between tokens.
        fixtures: Directory of the recorded ``<kind>/metrics.txt``.
        health: Health paths and their ``(status, body)``, replacing the kind's own.
    """

    def __init__(
        self,
        kind: str,
        *,
        ttft_s: float = 0.004,
        itl_s: float = 0.001,
        fixtures: Path = FIXTURES,
        health: dict[str, tuple[int, Any]] | None = None,
    ) -> None:
        self.kind = kind
        self.style = KINDS[kind] if health is None else replace(KINDS[kind], health=health)
        self.ttft_s = ttft_s
        self.itl_s = itl_s
        path = fixtures / kind / "metrics.txt"
        self.metrics = MetricsText(path.read_text()) if self.style.record is not None else None
        self.served = 0
        self.in_flight = 0
        self.prompts: list[str] = []  # every request's messages (or prompt), JSON, in order
        self.paths: list[str] = []  # every path requested, in order
        self.errors: list[str] = []  # handler exceptions: a test asserts there were none
        self._lock = threading.Lock()
        self._httpd = _Server(self)
        # A short poll interval: shutdown() waits for the loop to notice, once per server.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> MockServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def _gauges(self) -> None:
        if self.metrics is not None and self.style.gauges is not None:
            self.style.gauges(self.metrics, self.in_flight, self.served)

    def begin(self) -> None:
        """A request arrived."""
        with self._lock:
            self.in_flight += 1
            self._gauges()

    def abort(self) -> None:
        """A request ended without a response."""
        with self._lock:
            self.in_flight -= 1
            self._gauges()

    def end(self, facts: RequestFacts) -> None:
        """A request finished: advance the metrics it counts in."""
        with self._lock:
            self.in_flight -= 1
            self.served += 1
            if self.metrics is not None and self.style.record is not None:
                self.style.record(self.metrics, facts)
            self._gauges()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mock: MockServer) -> None:
        self.mock = mock
        super().__init__(("127.0.0.1", 0), _handler(mock))

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.mock.errors.append(traceback.format_exc())


def _words(body: dict[str, Any]) -> int:
    messages = body.get("messages") or []
    text = " ".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
    return len((text or str(body.get("prompt") or "")).split())


def _handler(server: MockServer) -> type[BaseHTTPRequestHandler]:
    style = server.style

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Each SSE frame is its own small write: with Nagle's algorithm on, the client's delayed
        # ACK would hold every frame after the first for tens of milliseconds.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            return  # tests read what was served from MockServer, not from stderr

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: Any) -> None:
            self._send(status, b"" if value is None else json.dumps(value).encode())

        def do_GET(self) -> None:
            server.paths.append(self.path)
            if self.path == "/v1/models":
                model = {"id": MODEL, "object": "model", "created": 0, "owned_by": style.owned_by}
                self._json(200, {"object": "list", "data": [model]})
            elif self.path in style.health:
                self._json(*style.health[self.path])
            elif self.path in style.info:
                self._json(200, style.info[self.path])
            elif self.path == "/metrics" and server.metrics is not None:
                text = server.metrics.render().encode()
                self._send(200, text, "text/plain; version=0.0.4; charset=utf-8")
            else:
                self._json(404, {"error": {"message": f"no route {self.path}", "code": 404}})

        def _event(self, payload: bytes) -> None:
            frame = style.data_prefix + payload + b"\n\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            self.wfile.flush()

        def do_POST(self) -> None:
            server.paths.append(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            server.prompts.append(json.dumps(body.get("messages") or body.get("prompt")))
            if self.path != "/v1/chat/completions" or not body.get("stream"):
                self._json(404, {"error": {"message": "the mock streams chat completions only"}})
                return
            arrived = time.perf_counter()
            server.begin()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            for k, v in style.headers.items():
                self.send_header(k, v)
            self.end_headers()
            try:
                facts = self._stream(body, arrived)
            except OSError:
                server.abort()  # the client went away mid-stream: counted nowhere, as servers do
                return
            server.end(facts)

        def _stream(self, body: dict[str, Any], arrived: float) -> RequestFacts:
            n = int(body.get("max_tokens") or 16)
            prompt = _words(body)
            kind = server.kind
            queue_s = 0.0005
            time.sleep(server.ttft_s)
            if kind != "tgi":
                self._event(json.dumps(_chunk(kind, None, role=True, finish=None)).encode())
            stamps = []
            for i in range(n):
                if i:
                    time.sleep(server.itl_s)
                stamps.append(time.perf_counter())
                last = i == n - 1 and kind == "tgi"
                chunk = _chunk(kind, f" w{i}", role=i == 0, finish="length" if last else None)
                self._event(json.dumps(chunk).encode())
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
            if kind == "tgi":
                final: dict[str, Any] = _chunk(kind, "", role=True, finish=None)
                final["choices"] = []
            else:
                self._event(json.dumps(_chunk(kind, None, role=False, finish="length")).encode())
                final = _chunk(kind, None, role=False, finish=None)
                final["choices"] = []
            if body.get("stream_options", {}).get("include_usage"):
                final["usage"] = usage
                self._event(json.dumps(final).encode())
            self._event(b"[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            done = time.perf_counter()
            gaps = tuple(b - a for a, b in itertools.pairwise(stamps))
            return RequestFacts(prompt, n, queue_s, stamps[0] - arrived, gaps, done - arrived)

    return Handler
