"""The service under test: one ``tokenbooth serve`` process, started as every benchmark needs."""

from __future__ import annotations

from service.launch import LOOPBACK, Replica, free_port, start_replica
from service.settings import ServiceSettings

__all__ = ["start_service"]


def start_service(settings: ServiceSettings) -> Replica:
    """``tokenbooth serve`` with ``settings`` on a free loopback port, logging only warnings.

    Not yet ready: pass the replica to :func:`service.launch.wait_ready`. The service runs in
    its own process so it does not share a GIL with the benchmark's client.
    """
    # Per-request log lines would cost the service CPU the benchmark is measuring.
    update = {"host": LOOPBACK, "port": free_port(), "log_level": "WARNING"}
    return start_replica(settings.model_copy(update=update))
