"""Operational endpoints: ``/v1/models``, ``/health/live``, ``/health/ready``, ``/metrics``."""

from __future__ import annotations

import time
from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency

from service import schemas
from service.state import Phase, ServiceState
from telemetry.metrics import render_metrics

__all__ = ["live", "metrics", "models", "ready"]

_STARTED = int(time.time())


@get("/v1/models", summary="List served models", tags=["openai"])
async def models(svc: NamedDependency[ServiceState]) -> schemas.ModelList:
    """The served model with where and how it runs (device, compute type, revision)."""
    if svc.engine is None:
        return schemas.ModelList(data=[])
    info = svc.engine.info
    return schemas.ModelList(
        data=[
            schemas.ModelCard(
                id=info.model_name,
                created=_STARTED,
                root=info.model_dir,
                max_model_len=info.context_length,
                revision=info.revision,
                quantization=info.quantization,
                device=info.device,
                compute_type=info.compute_type,
                engine=info.engine,
            )
        ]
    )


@get("/health/live", summary="Liveness: the process is up", tags=["health"])
async def live() -> schemas.HealthStatus:
    """Always 200 while the event loop answers."""
    return schemas.HealthStatus(status="ok")


@get("/health/ready", summary="Readiness: model loaded and warmed, not draining", tags=["health"])
async def ready(svc: NamedDependency[ServiceState]) -> Response[schemas.HealthStatus]:
    """200 only when the model is loaded and warmed and the server is not draining."""
    if svc.phase is Phase.READY:
        return Response(schemas.HealthStatus(status="ok"), status_code=200)
    status = {
        Phase.LOADING: "loading",
        Phase.DRAINING: "draining",
        Phase.FAILED: "failed",
    }[svc.phase]
    return Response(
        schemas.HealthStatus(status=status, detail=svc.failure),  # type: ignore[arg-type]
        status_code=503,
    )


@get("/metrics", summary="Prometheus metrics", tags=["telemetry"], include_in_schema=True)
async def metrics(
    request: Request[Any, Any, Any], svc: NamedDependency[ServiceState]
) -> Response[bytes]:
    """Prometheus text, or OpenMetrics (with exemplars) when the scraper asks for it."""
    body, content_type = render_metrics(svc.registry, request.headers.get("accept"))
    return Response(body, media_type=content_type)
