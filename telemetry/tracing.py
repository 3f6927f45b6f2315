"""OpenTelemetry tracing set up from the standard ``OTEL_*`` environment variables.

:func:`configure_tracing` returns an SDK ``TracerProvider`` and never installs it globally, so
each app (and each test) owns its provider and exporter. Honoured variables:

* ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: resource, via ``Resource.create``.
* ``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``: the SDK's own sampler handling.
* ``OTEL_TRACES_EXPORTER``: comma list of ``otlp``, ``console``, ``none``. When unset, OTLP is
  used only if an endpoint is set; otherwise spans are not exported and that is logged once.
* ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` and the other
  ``OTEL_EXPORTER_OTLP_*`` settings: read by the OTLP exporter itself.
* ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``http/protobuf``
  (installed, the default) or ``grpc`` (needs ``opentelemetry-exporter-otlp-proto-grpc``).
* ``OTEL_SDK_DISABLED=true``: the SDK hands out no-op tracers.

Spans still get trace ids without an exporter: they feed exemplars and log correlation.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Final

from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "TRACER_NAME",
    "TracingConfigError",
    "configure_tracing",
    "exports_spans",
    "extract_context",
    "get_tracer",
    "inject_headers",
    "shutdown_tracing",
    "trace_id_hex",
]

TRACER_NAME: Final = "tokenbooth"
"""Instrumentation scope of every span tokenbooth creates."""

_GRPC_PACKAGE: Final = "opentelemetry-exporter-otlp-proto-grpc"
_GRPC_MODULE: Final = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
_HTTP_DEFAULT_ENDPOINT: Final = "http://localhost:4318/v1/traces"
_PROPAGATOR: Final = TraceContextTextMapPropagator()

logger = logging.getLogger(__name__)


class TracingConfigError(RuntimeError):
    """The ``OTEL_*`` settings ask for something this install cannot do.

    Raised at startup instead of silently dropping spans.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _build_resource(service_name: str, resource_attributes: Mapping[str, str] | None) -> Resource:
    attributes: dict[str, str] = dict(resource_attributes or {})
    # Resource.create lets code attributes override env ones; the service_name argument is only
    # a default, so an operator's OTEL_SERVICE_NAME / service.name in OTEL_RESOURCE_ATTRIBUTES
    # must still win over it.
    env_has_name = SERVICE_NAME in OTELResourceDetector().detect().attributes
    if not env_has_name:
        attributes.setdefault(SERVICE_NAME, service_name)
    return Resource.create(attributes)


def _otlp_exporter() -> tuple[SpanExporter, str]:
    protocol = (
        _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or _env("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = _env("OTEL_EXPORTER_OTLP_ENDPOINT")
        endpoint = _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
            f"{base.rstrip('/')}/v1/traces" if base else _HTTP_DEFAULT_ENDPOINT
        )
        # The exporter resolves endpoint, headers, TLS and timeout from the env itself.
        return OTLPSpanExporter(), f"otlp {protocol} {endpoint}"
    if protocol == "grpc":
        try:
            module = importlib.import_module(_GRPC_MODULE)
        except ImportError as exc:
            raise TracingConfigError(
                f"OTLP protocol 'grpc' needs the package {_GRPC_PACKAGE!r}, which is not "
                f"installed; install it with: pip install {_GRPC_PACKAGE} "
                "(or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)"
            ) from exc
        grpc_exporter: SpanExporter = module.OTLPSpanExporter()
        return grpc_exporter, f"otlp {protocol}"
    raise TracingConfigError(
        f"unsupported OTLP protocol {protocol!r}; use 'http/protobuf' or 'grpc'"
    )


def configure_tracing(
    service_name: str = "tokenbooth",
    *,
    exporter: SpanExporter | None = None,
    resource_attributes: dict[str, str] | None = None,
) -> TracerProvider:
    """Build a ``TracerProvider`` from the ``OTEL_*`` environment (not installed globally).

    Args:
        service_name: ``service.name`` unless ``OTEL_SERVICE_NAME`` or
            ``OTEL_RESOURCE_ATTRIBUTES`` set one.
        exporter: Use exactly this exporter with a ``SimpleSpanProcessor`` (spans are exported
            as they end, which tests rely on) and ignore the env exporter settings.
        resource_attributes: Extra resource attributes; they override env values for the same key.

    Returns:
        The provider; pass it to :func:`get_tracer` and finally :func:`shutdown_tracing`.

    Raises:
        TracingConfigError: Unknown ``OTEL_TRACES_EXPORTER`` entry, unsupported protocol, or the
            gRPC exporter package is missing.
    """
    provider = TracerProvider(resource=_build_resource(service_name, resource_attributes))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return provider

    requested = _env("OTEL_TRACES_EXPORTER")
    kinds = [k.strip().lower() for k in requested.split(",") if k.strip()]
    if not kinds:
        has_endpoint = bool(
            _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _env("OTEL_EXPORTER_OTLP_ENDPOINT")
        )
        # Unlike the SDK default ("otlp" to localhost), an unconfigured service exports nothing
        # rather than retrying against a collector that is not there.
        kinds = ["otlp"] if has_endpoint else ["none"]

    unknown = sorted(set(kinds) - {"otlp", "console", "none"})
    if unknown:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER has unsupported exporter(s) {unknown}; "
            "supported: otlp, console, none"
        )

    descriptions: list[str] = []
    if "otlp" in kinds:
        otlp, description = _otlp_exporter()
        provider.add_span_processor(BatchSpanProcessor(otlp))
        descriptions.append(description)
    if "console" in kinds:
        # sys.stdout read now, not at SDK import, so a redirected stdout is honoured.
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
        descriptions.append("console")

    if descriptions:
        logger.info("tracing: exporting spans via %s", ", ".join(descriptions))
    else:
        logger.info(
            "tracing: no span exporter configured (OTEL_TRACES_EXPORTER=%s, no "
            "OTEL_EXPORTER_OTLP_ENDPOINT); spans are created for trace ids but not exported",
            requested or "<unset>",
        )
    return provider


def exports_spans(provider: TracerProvider) -> bool:
    """Whether any span processor is attached, i.e. whether finished spans go anywhere.

    Without one, only the request's own span is worth creating (its trace id joins logs and
    exemplars); child spans would cost CPU per request and vanish.
    """
    active = getattr(provider, "_active_span_processor", None)
    processors = getattr(active, "_span_processors", None)
    if processors is None:
        return True  # unknown SDK internals: assume spans are exported
    return len(processors) > 0


def shutdown_tracing(provider: TracerProvider) -> None:
    """Flush pending spans and stop the provider's processors and exporters."""
    provider.shutdown()


def get_tracer(provider: TracerProvider) -> Tracer:
    """Return tokenbooth's tracer from ``provider``."""
    return provider.get_tracer(TRACER_NAME)


def trace_id_hex(span: Span) -> str | None:
    """Return the span's trace id as 32 lowercase hex digits, for exemplars and logs.

    Returns:
        ``None`` when the span context is invalid or not sampled: such an id points at no
        stored trace, so linking to it would be a dead link.
    """
    context = span.get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return format(context.trace_id, "032x")


def extract_context(headers: Mapping[str, str]) -> Context:
    """Read an incoming W3C ``traceparent``/``tracestate`` into a context to parent spans on.

    Header names are matched case-insensitively. A missing or malformed ``traceparent`` gives
    an empty context, so the request starts a new trace.
    """
    carrier = {key.lower(): value for key, value in headers.items()}
    return _PROPAGATOR.extract(carrier=carrier)


def inject_headers(headers: MutableMapping[str, str], context: Context | None = None) -> None:
    """Write W3C ``traceparent``/``tracestate`` for ``context`` (default: current) into headers."""
    _PROPAGATOR.inject(headers, context=context)
