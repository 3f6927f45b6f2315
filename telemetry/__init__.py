"""Telemetry: Prometheus metrics, OpenTelemetry traces, structured logs and GPU sampling.

The bottom layer of tokenbooth: it imports nothing from ``service``, ``loadgen`` or
``reports``. Modules:

* :mod:`telemetry.names`: every metric, label, span, attribute and log-field name.
* :mod:`telemetry.metrics`: :class:`ServiceMetrics` on an injected registry, ``/metrics``
  rendering (Prometheus text or OpenMetrics with exemplars).
* :mod:`telemetry.tracing`: ``TracerProvider`` from ``OTEL_*`` env vars, W3C propagation.
* :mod:`telemetry.logging`: JSON log lines bound to ``request_id`` / ``trace_id``.
* :mod:`telemetry.gpu`: NVML sampler that reports absence instead of fake zeros.
* :mod:`telemetry.vllm_compat`: vLLM's metric names for the same observations
  (``--metrics-compat vllm``).
"""

from telemetry.gpu import GpuSampler
from telemetry.logging import bind_request, configure_logging, log_event, new_request_id
from telemetry.metrics import ServiceMetrics, register_process_collectors, render_metrics
from telemetry.tracing import (
    configure_tracing,
    extract_context,
    inject_headers,
    shutdown_tracing,
    trace_id_hex,
)

__all__ = [
    "GpuSampler",
    "ServiceMetrics",
    "bind_request",
    "configure_logging",
    "configure_tracing",
    "extract_context",
    "inject_headers",
    "log_event",
    "new_request_id",
    "register_process_collectors",
    "render_metrics",
    "shutdown_tracing",
    "trace_id_hex",
]
