"""The one source of metric, label, span, attribute and log-field names.

Metric names follow the OpenTelemetry GenAI semantic conventions translated to Prometheus
(dots become underscores, the unit is a suffix, counters end in ``_total``, no colons), so a
dashboard written against the conventions works unchanged. tokenbooth's own series use the
``tokenbooth_`` prefix. Dashboards, recording rules, the load generator's scraper and tests
import these constants instead of spelling names out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

__all__ = [
    "ATTR_BATCH_SIZE",
    "ATTR_ERROR_TYPE",
    "ATTR_OPERATION_NAME",
    "ATTR_PROMPT",
    "ATTR_QUEUE_WAIT_SECONDS",
    "ATTR_REQUEST_MAX_TOKENS",
    "ATTR_REQUEST_MODEL",
    "ATTR_REQUEST_TEMPERATURE",
    "ATTR_RESPONSE_FINISH_REASONS",
    "ATTR_TTFT_SECONDS",
    "ATTR_USAGE_INPUT_TOKENS",
    "ATTR_USAGE_OUTPUT_TOKENS",
    "BATCH_DECODE_BUCKETS",
    "BATCH_FILL_RATIO_BUCKETS",
    "BATCH_FORMATION_DELAY_BUCKETS",
    "BATCH_PREFILL_BUCKETS",
    "BATCH_SIZE_BUCKETS",
    "CONNECTION_CLOSE_EVICTED",
    "CONNECTION_CLOSE_HEADER_TIMEOUT",
    "CONNECTION_CLOSE_HEADER_TOO_LARGE",
    "CONNECTION_CLOSE_IDLE",
    "CONNECTION_CLOSE_NORMAL",
    "CONNECTION_CLOSE_OVER_LIMIT",
    "CONNECTION_CLOSE_REASONS",
    "CONNECTION_CLOSE_WRITE_TIMEOUT",
    "ERROR_TYPE_NONE",
    "ERROR_TYPE_OTHER",
    "EVENT_LOOP_LAG_BUCKETS",
    "EVENT_REQUEST",
    "EVENT_STARTUP",
    "EXEMPLAR_TRACE_ID",
    "GEN_AI_SERVER_REQUEST_DURATION",
    "GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN",
    "GEN_AI_SERVER_TIME_TO_FIRST_TOKEN",
    "INTER_TOKEN_LATENCY_BUCKETS",
    "LABEL_COMPUTE_TYPE",
    "LABEL_CTRANSLATE2_VERSION",
    "LABEL_DEVICE",
    "LABEL_ERROR_TYPE",
    "LABEL_GPU",
    "LABEL_GPU_UUID",
    "LABEL_MODEL",
    "LABEL_MODEL_REVISION",
    "LABEL_OUTCOME",
    "LABEL_PHASE",
    "LABEL_PYTHON_VERSION",
    "LABEL_QUANTIZATION",
    "LABEL_REASON",
    "LABEL_REVISION",
    "LABEL_VERSION",
    "LOG_BATCH_SIZE",
    "LOG_COMPLETION_TOKENS",
    "LOG_DURATION_S",
    "LOG_ERROR_TYPE",
    "LOG_EVENT",
    "LOG_LEVEL",
    "LOG_LOGGER",
    "LOG_OUTCOME",
    "LOG_PROMPT_TOKENS",
    "LOG_QUEUE_WAIT_S",
    "LOG_REQUEST_ID",
    "LOG_ROUTE",
    "LOG_STATUS",
    "LOG_TIMESTAMP",
    "LOG_TRACE_ID",
    "LOG_TTFT_S",
    "OPERATION_CHAT",
    "OPERATION_TEXT_COMPLETION",
    "OUTCOMES",
    "OUTCOME_ABORTED",
    "OUTCOME_ERROR",
    "OUTCOME_LENGTH",
    "OUTCOME_REJECTED",
    "OUTCOME_STOP",
    "OUTCOME_TIMEOUT",
    "PROCESS_CPU_SECONDS",
    "PROCESS_RESIDENT_MEMORY",
    "QUEUE_WAIT_BUCKETS",
    "REQUEST_DURATION_BUCKETS",
    "REQUEST_LOG_FIELDS",
    "SPAN_BATCH",
    "SPAN_DECODE",
    "SPAN_PREFILL",
    "SPAN_QUEUE_WAIT",
    "SPAN_STREAM",
    "STARTUP_PHASES",
    "STARTUP_PHASE_INIT",
    "STARTUP_PHASE_LOAD",
    "STARTUP_PHASE_TOTAL",
    "STARTUP_PHASE_WARMUP",
    "TIME_PER_OUTPUT_TOKEN_BUCKETS",
    "TIME_TO_FIRST_TOKEN_BUCKETS",
    "TOKENBOOTH_BATCHES_RUNNING",
    "TOKENBOOTH_BATCH_DECODE",
    "TOKENBOOTH_BATCH_FILL_RATIO",
    "TOKENBOOTH_BATCH_FORMATION_DELAY",
    "TOKENBOOTH_BATCH_PREFILL",
    "TOKENBOOTH_BATCH_SIZE",
    "TOKENBOOTH_BUILD_INFO",
    "TOKENBOOTH_EVENT_LOOP_LAG",
    "TOKENBOOTH_GENERATION_TOKENS",
    "TOKENBOOTH_GPU_AVAILABLE",
    "TOKENBOOTH_GPU_MEMORY_TOTAL",
    "TOKENBOOTH_GPU_MEMORY_USED",
    "TOKENBOOTH_GPU_POWER",
    "TOKENBOOTH_GPU_TEMPERATURE",
    "TOKENBOOTH_GPU_UTILIZATION",
    "TOKENBOOTH_HTTP_CONNECTIONS_CLOSED",
    "TOKENBOOTH_HTTP_CONNECTIONS_OPEN",
    "TOKENBOOTH_INTER_TOKEN_LATENCY",
    "TOKENBOOTH_MODEL_INFO",
    "TOKENBOOTH_PROMPT_TOKENS",
    "TOKENBOOTH_QUEUE_CAPACITY",
    "TOKENBOOTH_QUEUE_WAIT",
    "TOKENBOOTH_REQUESTS",
    "TOKENBOOTH_REQUESTS_RUNNING",
    "TOKENBOOTH_REQUESTS_WAITING",
    "TOKENBOOTH_STARTUP_DURATION",
    "VLLM_E2E_REQUEST_LATENCY",
    "VLLM_E2E_REQUEST_LATENCY_BUCKETS",
    "VLLM_GENERATION_TOKENS",
    "VLLM_LABEL_MODEL_NAME",
    "VLLM_NUM_REQUESTS_RUNNING",
    "VLLM_NUM_REQUESTS_WAITING",
    "VLLM_PROMPT_TOKENS",
    "VLLM_TIME_TO_FIRST_TOKEN",
    "VLLM_TIME_TO_FIRST_TOKEN_BUCKETS",
    "server_span_name",
    "with_slo_boundaries",
]

# --------------------------------------------------------------------------------------------
# GenAI semantic-convention server metrics (gen_ai.server.*), Prometheus spelling.
# --------------------------------------------------------------------------------------------

GEN_AI_SERVER_TIME_TO_FIRST_TOKEN: Final = "gen_ai_server_time_to_first_token_seconds"
"""Time from request arrival to the first generated token, per request."""
GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN: Final = "gen_ai_server_time_per_output_token_seconds"
"""Per request: ``(duration - ttft) / (output_tokens - 1)``, the mean decode time per token."""
GEN_AI_SERVER_REQUEST_DURATION: Final = "gen_ai_server_request_duration_seconds"
"""End-to-end server time per request, arrival to last byte."""

# Explicit bucket boundaries recommended by the GenAI semantic conventions.
TIME_TO_FIRST_TOKEN_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
TIME_PER_OUTPUT_TOKEN_BUCKETS: Final[tuple[float, ...]] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
REQUEST_DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip

# --------------------------------------------------------------------------------------------
# tokenbooth's own metrics.
# --------------------------------------------------------------------------------------------

TOKENBOOTH_INTER_TOKEN_LATENCY: Final = "tokenbooth_inter_token_latency_seconds"
"""Every gap between consecutive tokens of one request (not a per-request mean)."""
TOKENBOOTH_QUEUE_WAIT: Final = "tokenbooth_queue_wait_seconds"
"""Time a request spent queued before its batch started."""
TOKENBOOTH_BATCH_FORMATION_DELAY: Final = "tokenbooth_batch_formation_delay_seconds"
"""Time the batcher held the first request of a batch while waiting for more to join."""
TOKENBOOTH_BATCH_PREFILL: Final = "tokenbooth_batch_prefill_seconds"
"""Prefill (prompt processing up to the first token) time per executed batch."""
TOKENBOOTH_BATCH_DECODE: Final = "tokenbooth_batch_decode_seconds"
"""Decode (first token to last token) time per executed batch."""
TOKENBOOTH_BATCH_SIZE: Final = "tokenbooth_batch_size"
"""Number of requests in each executed batch."""
TOKENBOOTH_BATCH_FILL_RATIO: Final = "tokenbooth_batch_fill_ratio"
"""Batch size divided by the configured maximum batch size, per executed batch."""
TOKENBOOTH_REQUESTS_WAITING: Final = "tokenbooth_requests_waiting"
"""Requests queued and not yet in a batch, read live at scrape time."""
TOKENBOOTH_QUEUE_CAPACITY: Final = "tokenbooth_queue_capacity"
"""Requests that may wait (``max_queue_size``); one more gets a 429. Constant per process."""
TOKENBOOTH_REQUESTS_RUNNING: Final = "tokenbooth_requests_running"
"""Requests in a batch that is executing, read live at scrape time."""
TOKENBOOTH_BATCHES_RUNNING: Final = "tokenbooth_batches_running"
"""Batches executing on batch workers, read live (busy workers, spares included: at most
``batch_workers + spare_workers``)."""
TOKENBOOTH_PROMPT_TOKENS: Final = "tokenbooth_prompt_tokens_total"
"""Prompt (input) tokens of finished requests."""
TOKENBOOTH_GENERATION_TOKENS: Final = "tokenbooth_generation_tokens_total"
"""Generated (output) tokens of finished requests."""
TOKENBOOTH_REQUESTS: Final = "tokenbooth_requests_total"
"""Finished or rejected requests by ``outcome`` and ``error_type``."""
TOKENBOOTH_HTTP_CONNECTIONS_OPEN: Final = "tokenbooth_http_connections_open"
"""HTTP connections open now (idle, waiting for a request head, or serving one), read live."""
TOKENBOOTH_HTTP_CONNECTIONS_CLOSED: Final = "tokenbooth_http_connections_closed_total"
"""Closed HTTP connections by ``reason`` (one of ``CONNECTION_CLOSE_REASONS``)."""
TOKENBOOTH_EVENT_LOOP_LAG: Final = "tokenbooth_event_loop_lag_seconds"
"""How late the event loop ran a timer: what every request on this replica waited extra."""
TOKENBOOTH_MODEL_INFO: Final = "tokenbooth_model_info"
"""Constant 1, labelled with what model is served and how."""
TOKENBOOTH_BUILD_INFO: Final = "tokenbooth_build_info"
"""Constant 1, labelled with tokenbooth, Python and CTranslate2 versions."""
TOKENBOOTH_STARTUP_DURATION: Final = "tokenbooth_startup_duration_seconds"
"""Cold start of this process by ``phase`` (one of ``STARTUP_PHASES``), set once when ready."""
TOKENBOOTH_GPU_AVAILABLE: Final = "tokenbooth_gpu_available"
"""1 when NVML reports at least one GPU, else 0; the GPU series exist only when 1."""
TOKENBOOTH_GPU_UTILIZATION: Final = "tokenbooth_gpu_utilization_ratio"
"""Fraction of the last sample period the GPU was busy (NVML utilization / 100)."""
TOKENBOOTH_GPU_MEMORY_USED: Final = "tokenbooth_gpu_memory_used_bytes"
"""GPU memory in use, all processes."""
TOKENBOOTH_GPU_MEMORY_TOTAL: Final = "tokenbooth_gpu_memory_total_bytes"
"""GPU memory installed."""
TOKENBOOTH_GPU_POWER: Final = "tokenbooth_gpu_power_watts"
"""GPU board power draw."""
TOKENBOOTH_GPU_TEMPERATURE: Final = "tokenbooth_gpu_temperature_celsius"
"""GPU core temperature."""

# --------------------------------------------------------------------------------------------
# vLLM-compatible names, exported in addition to the native ones with ``--metrics-compat vllm``
# (telemetry/vllm_compat.py), so vLLM dashboards and KEDA recipes read a tokenbooth replica's
# TTFT, e2e latency, tokens and queue unchanged (not the Gateway API Inference Extension's
# endpoint picker: it also needs vllm:kv_cache_usage_perc and LoRA info). Names, the label and the
# buckets as vLLM's v1 engine exports them: vllm-project/vllm vllm/v1/metrics/loggers.py at
# commit 005a810bc40faa25b8870fbc8559c3462581eee3 (counters without ``_total`` there; the
# exposition adds it). vLLM also adds an ``engine`` label (its data-parallel engine index);
# tokenbooth has one engine per replica and leaves it out, as vLLM's v0 engine did.
# --------------------------------------------------------------------------------------------

VLLM_NUM_REQUESTS_RUNNING: Final = "vllm:num_requests_running"
"""vLLM's name for :data:`TOKENBOOTH_REQUESTS_RUNNING`."""
VLLM_NUM_REQUESTS_WAITING: Final = "vllm:num_requests_waiting"
"""vLLM's name for :data:`TOKENBOOTH_REQUESTS_WAITING`."""
VLLM_TIME_TO_FIRST_TOKEN: Final = "vllm:time_to_first_token_seconds"
"""vLLM's name for :data:`GEN_AI_SERVER_TIME_TO_FIRST_TOKEN`."""
VLLM_E2E_REQUEST_LATENCY: Final = "vllm:e2e_request_latency_seconds"
"""vLLM's name for :data:`GEN_AI_SERVER_REQUEST_DURATION`."""
VLLM_PROMPT_TOKENS: Final = "vllm:prompt_tokens_total"
"""vLLM's name for :data:`TOKENBOOTH_PROMPT_TOKENS`."""
VLLM_GENERATION_TOKENS: Final = "vllm:generation_tokens_total"
"""vLLM's name for :data:`TOKENBOOTH_GENERATION_TOKENS`."""
VLLM_LABEL_MODEL_NAME: Final = "model_name"
"""vLLM's model label: the served model name (tokenbooth's ``model``)."""
VLLM_TIME_TO_FIRST_TOKEN_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
VLLM_E2E_REQUEST_LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

# prometheus_client's process collector (not ours to define, named once so scrapes, the capacity
# model and the dashboard agree on it).
PROCESS_CPU_SECONDS: Final = "process_cpu_seconds_total"
"""CPU seconds the replica process used (user + system), a counter."""
PROCESS_RESIDENT_MEMORY: Final = "process_resident_memory_bytes"
"""Resident set size of the replica process, a gauge."""

# A CPU INT8 decode step of a small model takes a few milliseconds to tens of milliseconds and a
# GPU step well under that, so the gap buckets start at 1 ms; the tail catches stalls behind a
# long prefill of another batch.
INTER_TOKEN_LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.3, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
# Queue wait spans idle (sub-millisecond) to overloaded (tens of seconds before a timeout).
QUEUE_WAIT_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip
# Formation delay is bounded by the batcher's max delay, typically a few to tens of ms.
BATCH_FORMATION_DELAY_BUCKETS: Final[tuple[float, ...]] = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
BATCH_PREFILL_BUCKETS: Final[tuple[float, ...]] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_DECODE_BUCKETS: Final[tuple[float, ...]] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0,
)  # fmt: skip
# A healthy loop runs its timers within a millisecond; a blocked one shows here first.
EVENT_LOOP_LAG_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_SIZE_BUCKETS: Final[tuple[float, ...]] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_FILL_RATIO_BUCKETS: Final[tuple[float, ...]] = (
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
)  # fmt: skip

# --------------------------------------------------------------------------------------------
# Label keys. Service metrics carry only model and model_revision (plus outcome/error_type on
# the request counter) so cardinality stays fixed no matter what clients send.
# --------------------------------------------------------------------------------------------

LABEL_MODEL: Final = "model"
LABEL_MODEL_REVISION: Final = "model_revision"
LABEL_OUTCOME: Final = "outcome"
LABEL_ERROR_TYPE: Final = "error_type"
LABEL_QUANTIZATION: Final = "quantization"
LABEL_DEVICE: Final = "device"
LABEL_COMPUTE_TYPE: Final = "compute_type"
LABEL_VERSION: Final = "version"
LABEL_PYTHON_VERSION: Final = "python_version"
LABEL_CTRANSLATE2_VERSION: Final = "ctranslate2_version"
LABEL_REASON: Final = "reason"
LABEL_GPU: Final = "gpu"
LABEL_GPU_UUID: Final = "gpu_uuid"
LABEL_PHASE: Final = "phase"
LABEL_REVISION: Final = "revision"
"""Target label, not exported: the rollout track (stable, canary) copied from the pod label of
the same name by the ServiceMonitor and deploy/prometheus/prometheus-kubernetes.yml."""

ERROR_TYPE_NONE: Final = ""
"""``error_type`` label value of requests that did not fail."""
ERROR_TYPE_OTHER: Final = "other"
"""``error_type`` value used once the per-process cap on distinct error types is reached."""

EXEMPLAR_TRACE_ID: Final = "trace_id"
"""Exemplar label key linking a histogram bucket to the trace that landed in it."""

# --------------------------------------------------------------------------------------------
# Request outcomes (values of the ``outcome`` label and log field).
# --------------------------------------------------------------------------------------------

OUTCOME_STOP: Final = "stop"
"""Generation ended on a stop token or stop sequence."""
OUTCOME_LENGTH: Final = "length"
"""Generation ended at max_tokens or the context limit."""
OUTCOME_ABORTED: Final = "aborted"
"""The client went away before the response finished."""
OUTCOME_REJECTED: Final = "rejected"
"""Refused before queueing: an invalid request (4xx), queue full (429), draining (503)."""
OUTCOME_TIMEOUT: Final = "timeout"
"""Exceeded the server-side request deadline."""
OUTCOME_ERROR: Final = "error"
"""Failed inside the server (engine or internal error)."""
OUTCOMES: Final[tuple[str, ...]] = (
    OUTCOME_STOP,
    OUTCOME_LENGTH,
    OUTCOME_ABORTED,
    OUTCOME_REJECTED,
    OUTCOME_TIMEOUT,
    OUTCOME_ERROR,
)

# --------------------------------------------------------------------------------------------
# Why an HTTP connection closed (values of the ``reason`` label).
# --------------------------------------------------------------------------------------------

CONNECTION_CLOSE_NORMAL: Final = "normal"
"""The client closed, or the server closed after a response (``Connection: close``)."""
CONNECTION_CLOSE_IDLE: Final = "idle"
"""An idle keep-alive connection outlived the keep-alive timeout."""
CONNECTION_CLOSE_HEADER_TIMEOUT: Final = "header_timeout"
"""The request head did not arrive within ``header_timeout_s`` (slowloris, silent sockets)."""
CONNECTION_CLOSE_HEADER_TOO_LARGE: Final = "header_too_large"
"""The request head grew past ``max_header_bytes``."""
CONNECTION_CLOSE_WRITE_TIMEOUT: Final = "write_timeout"
"""The client stopped reading its response for ``write_timeout_s``."""
CONNECTION_CLOSE_EVICTED: Final = "evicted"
"""Closed while waiting for a request head, to make room past ``max_connections``."""
CONNECTION_CLOSE_OVER_LIMIT: Final = "over_limit"
"""Refused with a 503: ``max_connections`` open, every one serving a request."""
CONNECTION_CLOSE_REASONS: Final[tuple[str, ...]] = (
    CONNECTION_CLOSE_NORMAL,
    CONNECTION_CLOSE_IDLE,
    CONNECTION_CLOSE_HEADER_TIMEOUT,
    CONNECTION_CLOSE_HEADER_TOO_LARGE,
    CONNECTION_CLOSE_WRITE_TIMEOUT,
    CONNECTION_CLOSE_EVICTED,
    CONNECTION_CLOSE_OVER_LIMIT,
)

# --------------------------------------------------------------------------------------------
# Spans and span attributes (GenAI conventions where one exists, ``tokenbooth.*`` otherwise).
# Spelled here rather than imported from opentelemetry-semantic-conventions: its gen_ai.*
# constants live in a private ``_incubating`` module and are marked deprecated there (moved to
# a separate GenAI conventions project), while the names they spell are what backends query.
# --------------------------------------------------------------------------------------------

SPAN_QUEUE_WAIT: Final = "gen_ai.queue_wait"
SPAN_BATCH: Final = "gen_ai.batch"
SPAN_PREFILL: Final = "gen_ai.prefill"
SPAN_DECODE: Final = "gen_ai.decode"
SPAN_STREAM: Final = "gen_ai.stream"

OPERATION_CHAT: Final = "chat"
OPERATION_TEXT_COMPLETION: Final = "text_completion"

ATTR_OPERATION_NAME: Final = "gen_ai.operation.name"
ATTR_REQUEST_MODEL: Final = "gen_ai.request.model"
ATTR_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
ATTR_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
ATTR_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
ATTR_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
ATTR_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
ATTR_PROMPT: Final = "gen_ai.prompt"
"""The prompt text; set only when the operator enables ``trace_prompts``."""
ATTR_ERROR_TYPE: Final = "error.type"
ATTR_TTFT_SECONDS: Final = "tokenbooth.ttft_seconds"
ATTR_BATCH_SIZE: Final = "tokenbooth.batch.size"
ATTR_QUEUE_WAIT_SECONDS: Final = "tokenbooth.queue_wait_seconds"

# --------------------------------------------------------------------------------------------
# Structured log fields. The request log line carries counts and timings, never prompt or
# completion text: there is deliberately no field for it.
# --------------------------------------------------------------------------------------------

LOG_TIMESTAMP: Final = "ts"
LOG_LEVEL: Final = "level"
LOG_LOGGER: Final = "logger"
LOG_EVENT: Final = "event"
LOG_REQUEST_ID: Final = "request_id"
LOG_TRACE_ID: Final = "trace_id"
LOG_ROUTE: Final = "route"
LOG_STATUS: Final = "status"
LOG_OUTCOME: Final = "outcome"
LOG_ERROR_TYPE: Final = "error_type"
LOG_PROMPT_TOKENS: Final = "prompt_tokens"
LOG_COMPLETION_TOKENS: Final = "completion_tokens"
LOG_BATCH_SIZE: Final = "batch_size"
# Seconds, spelled "_s" because they are keyword arguments at every log_event call site.
LOG_QUEUE_WAIT_S: Final = "queue_wait_s"
LOG_TTFT_S: Final = "ttft_s"
LOG_DURATION_S: Final = "duration_s"

# --------------------------------------------------------------------------------------------
# Cold start (values of the ``phase`` label, and ``<phase>_s`` fields of the ``startup`` line).
# init + load + warmup == total: consecutive intervals of one clock.
# --------------------------------------------------------------------------------------------

STARTUP_PHASE_INIT: Final = "init"
"""Process start (the kernel's start time) to the model load beginning: interpreter, imports."""
STARTUP_PHASE_LOAD: Final = "load"
"""Building (if needed) and loading the model into the engine."""
STARTUP_PHASE_WARMUP: Final = "warmup"
"""Model loaded to ready: the warm-up generation and starting the batcher."""
STARTUP_PHASE_TOTAL: Final = "total"
"""Process start to ready: what a new replica costs before it takes traffic."""
STARTUP_PHASES: Final[tuple[str, ...]] = (
    STARTUP_PHASE_INIT,
    STARTUP_PHASE_LOAD,
    STARTUP_PHASE_WARMUP,
    STARTUP_PHASE_TOTAL,
)

EVENT_STARTUP: Final = "startup"
"""``event`` of the one log line a replica writes when it becomes ready, with its phases."""
EVENT_REQUEST: Final = "request"
"""``event`` of the one log line written per finished or refused request."""
REQUEST_LOG_FIELDS: Final[tuple[str, ...]] = (
    LOG_REQUEST_ID,
    LOG_ROUTE,
    LOG_STATUS,
    LOG_OUTCOME,
    LOG_ERROR_TYPE,
    LOG_PROMPT_TOKENS,
    LOG_COMPLETION_TOKENS,
    LOG_TTFT_S,
    LOG_DURATION_S,
    LOG_QUEUE_WAIT_S,
    LOG_BATCH_SIZE,
)
"""Fields of the request log line besides the base keys; counts and timings, never text."""


def server_span_name(route: str) -> str:
    """Name the request's server span as the HTTP conventions do: ``"POST {route}"``.

    Every generation route is a POST; the GenAI request attributes (operation, model, tokens)
    go on this same span rather than on a child, which would cost a span per request.
    """
    return f"POST {route}"


def with_slo_boundaries(buckets: Iterable[float], *slos: float | None) -> tuple[float, ...]:
    """Return ``buckets`` with each SLO threshold added as an exact bucket boundary.

    With the threshold as a boundary, ``rate(x_bucket{le="<slo>"}) / rate(x_count)`` is the exact
    fraction of requests meeting the SLO instead of an interpolation between two buckets.

    Args:
        buckets: Upper bounds, any order (``+Inf`` may be included; it stays last).
        *slos: Thresholds in the histogram's unit; ``None`` entries are skipped so unset optional
            SLOs can be passed straight through.

    Returns:
        Sorted boundaries without duplicates.

    Raises:
        ValueError: A threshold is not a finite positive number.
    """
    merged = {float(b) for b in buckets}
    for slo in slos:
        if slo is None:
            continue
        if not math.isfinite(slo) or slo <= 0:
            raise ValueError(f"SLO threshold must be a finite positive number, got {slo!r}")
        merged.add(float(slo))
    return tuple(sorted(merged))
