"""HTTP connection metrics: open connections (live gauge) and closes by reason.

A slowloris shows here before it shows anywhere else: open connections climb while requests
do not, and ``header_timeout`` closes follow ``header_timeout_s`` later. The service's
connection guard (``service.connections``) feeds it; it needs no model, so it exists from the
first scrape, loading included.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from telemetry import names

__all__ = ["ConnectionMetrics"]


class ConnectionMetrics:
    """Counts connections opened and closed; the open gauge is read at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._open = 0
        gauge = Gauge(
            names.TOKENBOOTH_HTTP_CONNECTIONS_OPEN,
            "HTTP connections open now (read at scrape time).",
            registry=registry,
        )
        gauge.set_function(lambda: float(self._open))
        self._closed = Counter(
            names.TOKENBOOTH_HTTP_CONNECTIONS_CLOSED,
            "Closed HTTP connections by reason.",
            (names.LABEL_REASON,),
            registry=registry,
        )
        # Zero-initialised so rate() of a reason that has not happened yet reads 0.
        for reason in names.CONNECTION_CLOSE_REASONS:
            self._closed.labels(reason)

    @property
    def open(self) -> int:
        """Connections open now."""
        return self._open

    def opened(self) -> None:
        """A connection was accepted (event loop thread)."""
        self._open += 1

    def closed(self, reason: str) -> None:
        """A connection ended; ``reason`` must be one of ``names.CONNECTION_CLOSE_REASONS``."""
        if reason not in names.CONNECTION_CLOSE_REASONS:
            raise ValueError(f"unknown close reason {reason!r}")
        self._open -= 1
        self._closed.labels(reason).inc()
