"""Service metrics built from :mod:`telemetry.names` on an injected ``CollectorRegistry``.

The registry is always passed in, never the global default, so every app instance and every
test owns its series. Counters and histograms are cumulative for the life of the process;
scrapes never reset them. Latency histograms carry OpenMetrics exemplars (``trace_id``) that
link a bucket to a trace; exemplars appear only in the OpenMetrics rendering.

Build info (``tokenbooth_build_info``) is set by :class:`ServiceMetrics` itself, so a service
that creates its metrics can never forget it.
"""

from __future__ import annotations

import platform
import re
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from telemetry import names
from telemetry._exposition import render_openmetrics, render_prometheus
from telemetry.vllm_compat import MetricsCompat, VllmCompatMetrics

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_PROMETHEUS",
    "ERROR_TYPE_MAX_DISTINCT",
    "ServiceMetrics",
    "register_process_collectors",
    "render_metrics",
]

CONTENT_TYPE_PROMETHEUS: Final = CONTENT_TYPE_PLAIN_0_0_4
"""``text/plain; version=0.0.4; charset=utf-8``: what every Prometheus understands."""
CONTENT_TYPE_OPENMETRICS: Final = "application/openmetrics-text; version=1.0.0; charset=utf-8"
"""OpenMetrics 1.0 text, the only format that carries exemplars."""

ERROR_TYPE_MAX_DISTINCT: Final = 32
"""Distinct ``error_type`` values one :class:`ServiceMetrics` admits before mapping to "other"."""
_ERROR_TYPE_MAX_LEN: Final = 64
_ERROR_TYPE_BAD_CHARS: Final = re.compile(r"[^A-Za-z0-9_.\-]")

_SERVICE_LABELS: Final = (names.LABEL_MODEL, names.LABEL_MODEL_REVISION)
_OPENMETRICS_MEDIA_TYPE: Final = "application/openmetrics-text"


def _package_version(package: str) -> str:
    # Read from installed metadata rather than importing: importing ctranslate2 loads CUDA/MKL
    # libraries, far too heavy for a label.
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _exemplar(trace_id: str | None) -> dict[str, str] | None:
    return {names.EXEMPLAR_TRACE_ID: trace_id} if trace_id else None


class ServiceMetrics:
    """All service metrics, created from :mod:`telemetry.names` on an injected registry.

    Every series carries only ``model`` and ``model_revision`` (plus ``outcome`` and
    ``error_type`` on the request counter), so cardinality does not depend on traffic. Methods
    are thread-safe: the engine's per-token callback may call them from a worker thread.

    Args:
        registry: Where to register the series; one ``ServiceMetrics`` per registry.
        model: Served model id (``model`` label).
        revision: Model revision, e.g. a manifest hash (``model_revision`` label).
        max_batch_size: The batcher's limit; denominator of the fill ratio.
        ttft_slo_seconds: Added as a TTFT bucket boundary so SLO attainment is exact.
        tpot_slo_seconds: Added as a boundary of the TPOT and inter-token-gap histograms.
        e2e_slo_seconds: Added as a request-duration bucket boundary.
        max_queue_size: The batcher's queue limit, exported as ``tokenbooth_queue_capacity`` (the
            denominator of the queue-saturation alert); ``None`` exports no value.
        metrics_compat: ``"vllm"`` also exports vLLM's names for the same observations
            (:mod:`telemetry.vllm_compat`); ``"none"`` only the native ones.

    Raises:
        ValueError: ``max_batch_size`` < 1 or an SLO is not a finite positive number.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        model: str,
        revision: str,
        max_batch_size: int,
        ttft_slo_seconds: float | None = None,
        tpot_slo_seconds: float | None = None,
        e2e_slo_seconds: float | None = None,
        max_queue_size: int | None = None,
        metrics_compat: MetricsCompat = "none",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._registry = registry
        self._model = model
        self._revision = revision
        self._max_batch_size = max_batch_size
        self._labels = (model, revision)
        self._error_types: set[str] = set()
        self._error_types_lock = threading.Lock()
        self._vllm = (
            VllmCompatMetrics(registry, model_name=model) if metrics_compat == "vllm" else None
        )

        def histogram(name: str, doc: str, buckets: tuple[float, ...], unit: str = "") -> Histogram:
            family = Histogram(
                name, doc, _SERVICE_LABELS, registry=registry, buckets=buckets, unit=unit
            )
            return family.labels(*self._labels)

        self._ttft = histogram(
            names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
            "Time to first token per request (arrival to first generated token).",
            names.with_slo_boundaries(names.TIME_TO_FIRST_TOKEN_BUCKETS, ttft_slo_seconds),
            "seconds",
        )
        self._tpot = histogram(
            names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
            "Per request (duration - TTFT) / (output tokens - 1).",
            names.with_slo_boundaries(names.TIME_PER_OUTPUT_TOKEN_BUCKETS, tpot_slo_seconds),
            "seconds",
        )
        self._duration = histogram(
            names.GEN_AI_SERVER_REQUEST_DURATION,
            "End-to-end server time per finished request.",
            names.with_slo_boundaries(names.REQUEST_DURATION_BUCKETS, e2e_slo_seconds),
            "seconds",
        )
        self._itl = histogram(
            names.TOKENBOOTH_INTER_TOKEN_LATENCY,
            "Every gap between consecutive output tokens of a request.",
            names.with_slo_boundaries(names.INTER_TOKEN_LATENCY_BUCKETS, tpot_slo_seconds),
            "seconds",
        )
        self._queue_wait = histogram(
            names.TOKENBOOTH_QUEUE_WAIT,
            "Time a request waited in the queue before its batch started.",
            names.QUEUE_WAIT_BUCKETS,
            "seconds",
        )
        self._formation_delay = histogram(
            names.TOKENBOOTH_BATCH_FORMATION_DELAY,
            "Time the batcher waited for a batch to fill, per executed batch.",
            names.BATCH_FORMATION_DELAY_BUCKETS,
            "seconds",
        )
        self._prefill = histogram(
            names.TOKENBOOTH_BATCH_PREFILL,
            "Prefill time per executed batch.",
            names.BATCH_PREFILL_BUCKETS,
            "seconds",
        )
        self._decode = histogram(
            names.TOKENBOOTH_BATCH_DECODE,
            "Decode time per executed batch.",
            names.BATCH_DECODE_BUCKETS,
            "seconds",
        )
        self._batch_size = histogram(
            names.TOKENBOOTH_BATCH_SIZE,
            "Requests per executed batch.",
            names.BATCH_SIZE_BUCKETS,
        )
        self._fill_ratio = histogram(
            names.TOKENBOOTH_BATCH_FILL_RATIO,
            "Batch size / max batch size, per executed batch.",
            names.BATCH_FILL_RATIO_BUCKETS,
            "ratio",
        )
        # Families only: children appear on bind_queue_state, so an unbound gauge exports
        # nothing rather than a misleading 0.
        self._waiting = Gauge(
            names.TOKENBOOTH_REQUESTS_WAITING,
            "Requests queued and not yet batched (read at scrape time).",
            _SERVICE_LABELS,
            registry=registry,
        )
        self._running = Gauge(
            names.TOKENBOOTH_REQUESTS_RUNNING,
            "Requests in an executing batch (read at scrape time).",
            _SERVICE_LABELS,
            registry=registry,
        )
        self._batches_running = Gauge(
            names.TOKENBOOTH_BATCHES_RUNNING,
            "Batches executing on batch workers, i.e. busy workers (read at scrape time).",
            _SERVICE_LABELS,
            registry=registry,
        )
        self._prompt_tokens = Counter(
            names.TOKENBOOTH_PROMPT_TOKENS,
            "Prompt tokens of finished requests.",
            _SERVICE_LABELS,
            registry=registry,
        ).labels(*self._labels)
        self._generation_tokens = Counter(
            names.TOKENBOOTH_GENERATION_TOKENS,
            "Generated tokens of finished requests.",
            _SERVICE_LABELS,
            registry=registry,
        ).labels(*self._labels)
        self._requests = Counter(
            names.TOKENBOOTH_REQUESTS,
            "Finished or rejected requests by outcome and error type.",
            (*_SERVICE_LABELS, names.LABEL_OUTCOME, names.LABEL_ERROR_TYPE),
            registry=registry,
        )
        # Zero-initialised so error-rate ratios read 0 from the start instead of "no data".
        for outcome in names.OUTCOMES:
            self._requests.labels(*self._labels, outcome, names.ERROR_TYPE_NONE)

        queue_capacity = Gauge(
            names.TOKENBOOTH_QUEUE_CAPACITY,
            "Requests that may wait before new ones are refused with 429 (max_queue_size).",
            _SERVICE_LABELS,
            registry=registry,
        )
        if max_queue_size is not None:
            queue_capacity.labels(*self._labels).set(max_queue_size)

        # Info metrics add "_info" themselves; names.py holds the exposed name.
        self._model_info = Info(
            names.TOKENBOOTH_MODEL_INFO.removesuffix("_info"),
            "What model this replica serves and how it runs it.",
            registry=registry,
        )
        build_info = Info(
            names.TOKENBOOTH_BUILD_INFO.removesuffix("_info"),
            "tokenbooth, Python and CTranslate2 versions of this process.",
            registry=registry,
        )
        build_info.info(
            {
                names.LABEL_VERSION: _package_version("tokenbooth"),
                names.LABEL_PYTHON_VERSION: platform.python_version(),
                names.LABEL_CTRANSLATE2_VERSION: _package_version("ctranslate2"),
            }
        )

    @property
    def registry(self) -> CollectorRegistry:
        """The registry these metrics live on (what ``/metrics`` renders)."""
        return self._registry

    def set_model_info(self, *, quantization: str, device: str, compute_type: str) -> None:
        """Publish ``tokenbooth_model_info`` once the engine knows how it loaded the model.

        Labels are ``model``, ``model_revision`` (same keys as the service series, so PromQL can
        join on them), ``quantization``, ``device`` and ``compute_type``. Calling again replaces
        the previous labels.
        """
        self._model_info.info(
            {
                names.LABEL_MODEL: self._model,
                names.LABEL_MODEL_REVISION: self._revision,
                names.LABEL_QUANTIZATION: quantization,
                names.LABEL_DEVICE: device,
                names.LABEL_COMPUTE_TYPE: compute_type,
            }
        )

    def bind_queue_state(
        self,
        waiting: Callable[[], int],
        running: Callable[[], int],
        batches_running: Callable[[], int],
    ) -> None:
        """Read the waiting/running request gauges and the busy-worker gauge at scrape time.

        Reading live (``Gauge.set_function``) means the gauges can never be stale between
        updates. The callables run on the scraping thread and must be cheap and non-blocking.
        """
        self._waiting.labels(*self._labels).set_function(lambda: float(waiting()))
        self._running.labels(*self._labels).set_function(lambda: float(running()))
        self._batches_running.labels(*self._labels).set_function(lambda: float(batches_running()))
        if self._vllm is not None:
            self._vllm.bind_queue_state(waiting, running)

    def observe_queue_wait(self, seconds: float, trace_id: str | None = None) -> None:
        """Record how long one request waited before its batch started."""
        self._queue_wait.observe(seconds, exemplar=_exemplar(trace_id))

    def observe_batch(
        self, *, size: int, formation_delay_s: float, prefill_s: float, decode_s: float
    ) -> None:
        """Record one executed batch: size, fill ratio, formation delay, prefill and decode time.

        Raises:
            ValueError: ``size`` < 1.
        """
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        self._batch_size.observe(size)
        self._fill_ratio.observe(size / self._max_batch_size)
        self._formation_delay.observe(formation_delay_s)
        self._prefill.observe(prefill_s)
        self._decode.observe(decode_s)

    def observe_first_token(self, ttft_s: float, trace_id: str | None = None) -> None:
        """Record the time to first token of one request."""
        self._ttft.observe(ttft_s, exemplar=_exemplar(trace_id))
        if self._vllm is not None:
            self._vllm.observe_first_token(ttft_s)

    def observe_token_gap(self, gap_s: float, trace_id: str | None = None) -> None:
        """Record one gap between consecutive tokens (every gap, not a per-request mean)."""
        self._itl.observe(gap_s, exemplar=_exemplar(trace_id))

    def observe_request_end(
        self,
        *,
        outcome: str,
        error_type: str = "",
        prompt_tokens: int,
        completion_tokens: int,
        duration_s: float,
        ttft_s: float | None,
        trace_id: str | None = None,
    ) -> None:
        """Record a request that reached the engine: outcome, tokens, duration and TPOT.

        TPOT is ``(duration_s - ttft_s) / (completion_tokens - 1)`` and is observed only when
        ``completion_tokens >= 2`` and ``ttft_s`` is known, because with fewer tokens there is no
        decode interval to divide.

        Args:
            outcome: One of :data:`telemetry.names.OUTCOMES`.
            error_type: Short machine reason ("" when none). Characters outside
                ``[A-Za-z0-9_.-]`` become ``_``, it is cut to 64 characters, and beyond
                :data:`ERROR_TYPE_MAX_DISTINCT` distinct values it becomes ``"other"``.
            prompt_tokens: Input tokens of the request.
            completion_tokens: Output tokens actually generated.
            duration_s: Arrival to last byte.
            ttft_s: Time to first token, ``None`` if no token was produced.
            trace_id: 32-hex trace id to attach as an exemplar.

        Raises:
            ValueError: Unknown ``outcome`` or negative token counts.
        """
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError(
                f"token counts must be >= 0, got prompt={prompt_tokens} "
                f"completion={completion_tokens}"
            )
        self._count(outcome, error_type)
        self._prompt_tokens.inc(prompt_tokens)
        self._generation_tokens.inc(completion_tokens)
        exemplar = _exemplar(trace_id)
        self._duration.observe(duration_s, exemplar=exemplar)
        if self._vllm is not None:
            self._vllm.observe_request_end(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                duration_s=duration_s,
            )
        if ttft_s is not None and completion_tokens >= 2:
            # Clamped because duration and TTFT come from separate clock reads; a tiny negative
            # from rounding must not land below the lowest bucket as garbage.
            tpot = max(0.0, duration_s - ttft_s) / (completion_tokens - 1)
            self._tpot.observe(tpot, exemplar=exemplar)

    def observe_rejected(self, error_type: str) -> None:
        """Count a request refused before queueing (``outcome="rejected"``), e.g. ``queue_full``."""
        self._count(names.OUTCOME_REJECTED, error_type)

    def _count(self, outcome: str, error_type: str) -> None:
        if outcome not in names.OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {names.OUTCOMES}")
        self._requests.labels(*self._labels, outcome, self._bounded_error_type(error_type)).inc()

    def _bounded_error_type(self, error_type: str) -> str:
        if not error_type:
            return names.ERROR_TYPE_NONE
        cleaned = _ERROR_TYPE_BAD_CHARS.sub("_", error_type)[:_ERROR_TYPE_MAX_LEN]
        with self._error_types_lock:
            if cleaned in self._error_types:
                return cleaned
            if len(self._error_types) >= ERROR_TYPE_MAX_DISTINCT:
                return names.ERROR_TYPE_OTHER
            self._error_types.add(cleaned)
            return cleaned


def register_process_collectors(registry: CollectorRegistry) -> None:
    """Add process CPU/memory/fd and Python platform series to ``registry``.

    The default global registry has these built in; an injected registry does not, so the
    service calls this once per registry (a second call raises ``ValueError`` for duplicates).
    """
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)


def _wants_openmetrics(accept_header: str | None) -> bool:
    if not accept_header:
        return False
    for media_range in accept_header.split(","):
        media_type, *params = (part.strip() for part in media_range.split(";"))
        if media_type.lower() != _OPENMETRICS_MEDIA_TYPE:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            return True
    return False


def render_metrics(registry: CollectorRegistry, accept_header: str | None) -> tuple[bytes, str]:
    """Render ``registry`` for a ``/metrics`` response, negotiated on the Accept header.

    OpenMetrics 1.0 (the only format with exemplars) when Accept lists
    ``application/openmetrics-text`` with a non-zero q, as Prometheus does when exemplar
    storage is enabled; otherwise Prometheus text 0.0.4.

    The bytes equal prometheus_client's own renderers; a faster path with cached label text
    keeps a busy registry well inside a 5 ms scrape budget (``scripts/bench_metrics.py``).

    Returns:
        ``(body, content_type)`` ready for the HTTP response.
    """
    if _wants_openmetrics(accept_header):
        return render_openmetrics(registry), CONTENT_TYPE_OPENMETRICS
    return render_prometheus(registry), CONTENT_TYPE_PROMETHEUS
