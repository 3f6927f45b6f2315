"""vLLM-compatible metric names (``--metrics-compat vllm``), exported beside the native ones.

With it on, a tokenbooth replica also answers the TTFT, end-to-end latency, token and queue
queries of vLLM dashboards and KEDA recipes: ``vllm:num_requests_running`` and
``vllm:num_requests_waiting`` (gauges), ``vllm:time_to_first_token_seconds`` and
``vllm:e2e_request_latency_seconds`` (histograms with vLLM's buckets), and
``vllm:prompt_tokens_total`` / ``vllm:generation_tokens_total``, each labelled ``model_name``.
Not enough for the Gateway API Inference Extension's endpoint picker, which also needs
``vllm:kv_cache_usage_perc`` and LoRA adapter info (there is no KV cache to report); no
``engine`` label either.

There is no second bookkeeping: :class:`telemetry.metrics.ServiceMetrics` forwards the same
observation to :class:`VllmCompatMetrics` that it records natively, and the gauges read the same
live callables as the native ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from telemetry import names

__all__ = ["METRICS_COMPAT", "MetricsCompat", "VllmCompatMetrics"]

MetricsCompat = Literal["none", "vllm"]
"""Which extra metric names a replica exports besides its own."""
METRICS_COMPAT: Final[tuple[MetricsCompat, ...]] = ("none", "vllm")
"""The values of :data:`MetricsCompat`, ``"none"`` (the default) first."""

_LABELS: Final = (names.VLLM_LABEL_MODEL_NAME,)


class VllmCompatMetrics:
    """The vLLM-named series of one replica, labelled ``model_name=<served model name>``.

    Args:
        registry: The replica's registry (the same one the native series live on).
        model_name: Served model name, as clients send it in ``model``.
    """

    def __init__(self, registry: CollectorRegistry, *, model_name: str) -> None:
        self._model_name = model_name
        # Families only until bind_queue_state, like the native gauges: no misleading 0.
        self._running = Gauge(
            names.VLLM_NUM_REQUESTS_RUNNING,
            "Number of requests in model execution batches.",
            _LABELS,
            registry=registry,
        )
        self._waiting = Gauge(
            names.VLLM_NUM_REQUESTS_WAITING,
            "Number of requests waiting to be processed.",
            _LABELS,
            registry=registry,
        )
        self._ttft = Histogram(
            names.VLLM_TIME_TO_FIRST_TOKEN,
            "Histogram of time to first token in seconds.",
            _LABELS,
            registry=registry,
            buckets=names.VLLM_TIME_TO_FIRST_TOKEN_BUCKETS,
        ).labels(model_name)
        self._e2e = Histogram(
            names.VLLM_E2E_REQUEST_LATENCY,
            "Histogram of e2e request latency in seconds.",
            _LABELS,
            registry=registry,
            buckets=names.VLLM_E2E_REQUEST_LATENCY_BUCKETS,
        ).labels(model_name)
        self._prompt_tokens = Counter(
            names.VLLM_PROMPT_TOKENS,
            "Number of prefill tokens processed.",
            _LABELS,
            registry=registry,
        ).labels(model_name)
        self._generation_tokens = Counter(
            names.VLLM_GENERATION_TOKENS,
            "Number of generation tokens processed.",
            _LABELS,
            registry=registry,
        ).labels(model_name)

    def bind_queue_state(self, waiting: Callable[[], int], running: Callable[[], int]) -> None:
        """Read the two request gauges at scrape time from the callables the native ones use."""
        self._waiting.labels(self._model_name).set_function(lambda: float(waiting()))
        self._running.labels(self._model_name).set_function(lambda: float(running()))

    def observe_first_token(self, ttft_s: float) -> None:
        """Record one request's time to first token."""
        self._ttft.observe(ttft_s)

    def observe_request_end(
        self, *, prompt_tokens: int, completion_tokens: int, duration_s: float
    ) -> None:
        """Record one finished request's tokens and end-to-end latency."""
        self._prompt_tokens.inc(prompt_tokens)
        self._generation_tokens.inc(completion_tokens)
        self._e2e.observe(duration_s)
