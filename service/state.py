"""Per-app runtime state: the long-lived resources handlers receive through dependency injection."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer
    from prometheus_client import CollectorRegistry

    from service.batcher import Batcher
    from service.engine import Engine
    from service.settings import ServiceSettings
    from telemetry.http import ConnectionMetrics
    from telemetry.metrics import ServiceMetrics

__all__ = ["Phase", "ServiceState"]


class Phase(StrEnum):
    """Lifecycle phase; readiness is 200 only in READY."""

    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class ServiceState:
    """Everything a request handler needs, built by the lifespan and kept on ``app.state``.

    A plain class on purpose: Litestar validates dataclass dependencies field by field on
    every request, and this object is injected into every handler.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        registry: CollectorRegistry,
        tracer: Tracer,
        connections: ConnectionMetrics,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.connections = connections
        self.tracer = tracer
        self.tracer_provider = tracer_provider
        self.phase = Phase.LOADING
        self.drain_started_at: float | None = None  # perf_counter when the drain began
        self.failure: str | None = None
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None
        self.metrics: ServiceMetrics | None = None
        self.gpu_available: bool | None = None
        # Child spans are created only when a span processor exports them.
        self.export_spans = True
        self.extra: dict[str, object] = {}
        # Template rendering and tokenization run here, off the event loop; threads start
        # lazily and the lifespan shuts the pool down.
        self.tokenize_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokenize")
