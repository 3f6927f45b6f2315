"""``create_app(settings)``: the Litestar application, its lifespan and its error mapping.

Long-lived resources (engine, batcher, GPU sampler, tracer provider) live in one lifespan
context manager and on ``app.state``; handlers receive the :class:`ServiceState` through
``Provide``. Loading happens in a background task so ``/health/live`` answers at once and
``/health/ready`` tells the truth (503 while loading).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Request, Response, Router
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from prometheus_client import CollectorRegistry

from service.batcher import Batcher, BatcherConfig
from service.engine import Engine
from service.errors import (
    BODY_TOO_LARGE_MESSAGE,
    APIError,
    AuthenticationError,
    ErrorCode,
    TokenboothError,
)
from service.responses import error_body, error_json
from service.routes.generation import chat_completions, completions
from service.routes.ops import live, metrics, models, ready
from service.settings import ServiceSettings
from service.state import Phase, ServiceState
from telemetry import names
from telemetry.gpu import GpuSampler
from telemetry.http import ConnectionMetrics
from telemetry.logging import log_event
from telemetry.loop import LoopLagMonitor
from telemetry.metrics import ServiceMetrics, register_process_collectors
from telemetry.startup import StartupClock, StartupMetrics
from telemetry.tracing import TRACER_NAME, configure_tracing, exports_spans, shutdown_tracing

__all__ = ["create_app", "get_state", "load_engine"]

logger = logging.getLogger("tokenbooth.service")

_STATE_KEY = "tokenbooth"


def load_engine(settings: ServiceSettings) -> Engine:
    """Build (or reuse) the model and load the engine the settings ask for. Blocking."""
    if settings.engine == "fake":
        from service.fake_engine import FakeEngine

        return FakeEngine(
            ttft_s=settings.fake_ttft_ms / 1000,
            itl_s=settings.fake_itl_ms / 1000,
            context_length=settings.fake_context_length,
            model_name=settings.served_model_name or "fake-model",
        )
    from service.engine import CTranslate2Engine
    from service.models import build_model

    model_dir = build_model(
        settings.model, quantization=settings.quantization, models_dir=settings.models_dir
    )
    return CTranslate2Engine(
        model_dir,
        device=settings.device,
        compute_type=settings.compute_type,
        batch_workers=settings.workers,
        intra_threads=settings.intra_threads,
        served_name=settings.served_model_name,
    )


def _api_error_handler(_: Request[Any, Any, Any], exc: APIError) -> Response[bytes]:
    return Response(
        error_body(exc),
        status_code=exc.status_code,
        media_type="application/json",
        headers=exc.headers,
    )


_HTTP_CODES = {
    400: ("invalid_request_error", ErrorCode.BAD_REQUEST),
    401: ("authentication_error", ErrorCode.INVALID_API_KEY),
    404: ("invalid_request_error", ErrorCode.NOT_FOUND),
    405: ("invalid_request_error", ErrorCode.METHOD_NOT_ALLOWED),
    413: ("invalid_request_error", ErrorCode.BODY_TOO_LARGE),
}


def _http_error_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    etype, code = _HTTP_CODES.get(exc.status_code, ("server_error", ErrorCode.HTTP_ERROR))
    detail = BODY_TOO_LARGE_MESSAGE if exc.status_code == 413 else exc.detail
    return Response(
        error_json(detail, etype, None, code),
        status_code=exc.status_code,
        media_type="application/json",
        headers=dict(exc.headers or {}),
    )


def _internal_error_handler(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    logger.exception("unhandled error", exc_info=exc)
    return Response(
        error_json("internal server error", "server_error", None, ErrorCode.INTERNAL_ERROR),
        status_code=500,
        media_type="application/json",
    )


def _api_key_guard(settings: ServiceSettings, *, protect: bool = True) -> list[Any]:
    """A guard requiring the API key, or none when no key is set or ``protect`` is off."""
    key = settings.effective_api_key
    if key is None or not protect:
        return []
    expected = key.get_secret_value().encode()

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        header = connection.headers.get("authorization", "")
        scheme, _sep, token = header.partition(" ")
        # compare_digest: no timing side channel on the key's content.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected):
            raise AuthenticationError(
                "missing or invalid API key (use 'Authorization: Bearer <key>')"
            )

    return [guard]


async def _load(
    state: ServiceState, engine: Engine | None, startup: StartupMetrics, clock: StartupClock
) -> None:
    """Load and warm the model off the event loop, then mark the replica ready."""
    s = state.settings
    t0 = time.perf_counter()
    clock.load_started()
    try:
        if engine is None:
            engine = await asyncio.to_thread(load_engine, s)
        clock.model_loaded()
        state.engine = engine
        info = engine.info
        metrics = ServiceMetrics(
            state.registry,
            model=info.model_name,
            revision=info.revision,
            max_batch_size=s.max_batch_size,
            ttft_slo_seconds=None if s.ttft_slo_ms is None else s.ttft_slo_ms / 1000,
            tpot_slo_seconds=None if s.tpot_slo_ms is None else s.tpot_slo_ms / 1000,
            e2e_slo_seconds=None if s.e2e_slo_ms is None else s.e2e_slo_ms / 1000,
            max_queue_size=s.max_queue_size,
            metrics_compat=s.metrics_compat,
        )
        metrics.set_model_info(
            quantization=info.quantization, device=info.device, compute_type=info.compute_type
        )
        state.metrics = metrics
        log_event(
            logger,
            "model_loaded",
            model=info.model_name,
            revision=info.revision,
            device=info.device,
            compute_type=info.compute_type,
            engine=info.engine,
            load_s=round(time.perf_counter() - t0, 3),
        )
        if s.warmup:
            tokens = engine.codec.encode("Hello")
            await asyncio.to_thread(engine.generate_batch, [tokens], _greedy(), 2, lambda *_: False)
        batcher = Batcher(
            engine,
            BatcherConfig(
                max_batch_size=s.max_batch_size,
                max_batch_delay_s=s.max_batch_delay_ms / 1000,
                max_queue_size=s.max_queue_size,
                batch_workers=s.batch_workers,
                spare_workers=s.spare_workers,
                request_timeout_s=s.request_timeout_s,
                policy=s.batch_policy,
            ),
            metrics,
            state.tracer,
            phase_spans=state.export_spans,
        )
        await batcher.start()
        state.batcher = batcher
        if state.phase is Phase.LOADING:
            state.phase = Phase.READY
        clock.ready()
        startup.publish(clock)
        log_event(logger, "ready", ready_s=round(time.perf_counter() - t0, 3))
        # log_event's way (fields as top-level keys), with the fields built as one mapping.
        logger.info(names.EVENT_STARTUP, extra={"fields": clock.log_fields()})
    except Exception as exc:
        state.phase = Phase.FAILED
        state.failure = str(exc) if isinstance(exc, TokenboothError) else repr(exc)
        # The phases that did finish (a load that took minutes and then failed is worth seeing).
        startup.publish(clock)
        log_event(logger, "load_failed", level=logging.ERROR, error=state.failure)


def _greedy() -> Any:
    from service.engine import SamplingOptions

    return SamplingOptions(temperature=0.0, top_k=1)


def create_app(
    settings: ServiceSettings | None = None,
    *,
    engine: Engine | None = None,
    registry: CollectorRegistry | None = None,
    tracer_provider: Any | None = None,
) -> Litestar:
    """Build the service app.

    Args:
        settings: configuration; read from the environment when omitted.
        engine: an already loaded engine (tests); otherwise the lifespan loads one.
        registry: Prometheus registry to record into (tests pass a fresh one).
        tracer_provider: an OpenTelemetry TracerProvider (tests pass one with an in-memory
            exporter); otherwise one is configured from the ``OTEL_*`` environment.
    """
    settings = settings or ServiceSettings()
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    owns_provider = tracer_provider is None
    provider = tracer_provider if tracer_provider is not None else configure_tracing()
    register_process_collectors(registry)
    startup = StartupMetrics(registry)
    state = ServiceState(
        settings=settings,
        registry=registry,
        tracer=provider.get_tracer(TRACER_NAME),
        connections=ConnectionMetrics(registry),
        tracer_provider=provider,
    )
    state.export_spans = exports_spans(provider)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        sampler = GpuSampler(registry, interval_s=settings.gpu_sample_interval_s)
        async with sampler, LoopLagMonitor(registry):
            state.gpu_available = sampler.available
            loader = asyncio.create_task(
                _load(state, engine, startup, StartupClock()), name="model-load"
            )
            state.extra["loader"] = loader
            try:
                yield
            finally:
                if not loader.done():
                    loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loader
                if state.batcher is not None:
                    await state.batcher.stop()
                state.tokenize_pool.shutdown(wait=False, cancel_futures=True)
                if state.engine is not None:
                    state.engine.close()
                if owns_provider:
                    shutdown_tracing(provider)
                log_event(logger, "stopped")

    def provide_state() -> ServiceState:
        return state

    api_guards = _api_key_guard(settings)
    ops_guards = _api_key_guard(settings, protect=settings.protect_ops_endpoints)
    # Probes have a switch of their own: kubelet and compose healthchecks send no key.
    health_guards = _api_key_guard(settings, protect=settings.protect_health_endpoints)
    api = Router("/", route_handlers=[completions, chat_completions, models], guards=api_guards)
    ops = Router("/", route_handlers=[metrics], guards=ops_guards)
    health = Router("/", route_handlers=[live, ready], guards=health_guards)
    # The schema lists every route and field: it is guarded like the other ops endpoints.
    docs = Router("/docs", route_handlers=[], guards=ops_guards)
    app = Litestar(
        route_handlers=[api, ops, health],
        dependencies={"svc": Provide(provide_state, sync_to_thread=False)},
        lifespan=[lifespan],
        exception_handlers={
            APIError: _api_error_handler,
            HTTPException: _http_error_handler,
            Exception: _internal_error_handler,
        },
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="tokenbooth", version="0.1.0", openapi_router=docs),
        debug=False,
        # Logging is ours (telemetry.logging): Litestar must not install its own handlers.
        logging_config=None,
    )
    app.state[_STATE_KEY] = state
    return app


def get_state(app: Litestar) -> ServiceState:
    """The :class:`ServiceState` of an app built by :func:`create_app`."""
    st = app.state[_STATE_KEY]
    assert isinstance(st, ServiceState)
    return st
