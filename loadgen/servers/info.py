"""What the harness learnt about the server it measured, as ``environment.json`` stores it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadgen.results import Server
from loadgen.servers.kinds import ServerKind

__all__ = ["ServerInfo"]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """A measured server's kind and version, how the kind was found, whether it has a view.

    Attributes:
        kind: The server kind.
        version: Its version as it states it; ``""`` when it does not.
        detected_from: What gave the kind away (``/metrics: vllm: samples``), ``spec`` when the
            spec named it, ``local replicas`` for replicas the harness started.
        server_view: Whether its ``/metrics`` holds figures of the server view.
    """

    kind: ServerKind
    version: str = ""
    detected_from: str = ""
    server_view: bool = False

    def environment(self) -> dict[str, Any]:
        """``environment.json``'s ``server`` object (:class:`loadgen.results.Server` keys)."""
        return {
            Server.KIND: self.kind,
            Server.VERSION: self.version,
            Server.DETECTED_FROM: self.detected_from,
            Server.SERVER_VIEW: self.server_view,
        }

    def describe(self) -> str:
        """Kind and version for labels and logs, e.g. ``vllm 0.10.1``."""
        return f"{self.kind} {self.version}".strip()
