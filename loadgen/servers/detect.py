"""Which kind of server answers at a URL: one look at ``/metrics``, ``/v1/models`` and headers.

The only module of :mod:`loadgen.servers` that talks HTTP, and kept out of the package's own
imports: :mod:`loadgen.spec` imports the package, and reports read specs without an HTTP client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import requests

from loadgen.scrape import samples as parse_samples
from loadgen.servers.adapter import Adapter, RawSample, has_server_view
from loadgen.servers.info import ServerInfo
from loadgen.servers.kinds import AUTO, GENERIC, ServerKind
from loadgen.servers.registry import ADAPTERS, adapter_for

__all__ = ["PROBE_TIMEOUT_S", "detect", "identify"]

logger = logging.getLogger("tokenbooth.loadgen")

PROBE_TIMEOUT_S: Final = 3.0
"""Per probe: a live server answers these small GETs at once; a silent one must not stall a
sweep, and a missing endpoint is an answer (404), not a wait."""


@dataclass(frozen=True, slots=True)
class _Response:
    status: int  # 0: no response
    text: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        if self.status != 200:
            return None
        try:
            return json.loads(self.text)
        except ValueError:
            return None


def _get(url: str, headers: Mapping[str, str], timeout_s: float) -> _Response:
    try:
        r = requests.get(url, headers=dict(headers), timeout=timeout_s)
    except requests.RequestException as exc:
        logger.debug("probe %s: %s", url, exc)
        return _Response(0)
    return _Response(r.status_code, r.text, dict(r.headers))


def _owners(models: Any) -> list[str]:
    """The ``owned_by`` values of a ``/v1/models`` body."""
    data = models.get("data") if isinstance(models, dict) else None
    if not isinstance(data, list):
        return []
    return [str(m["owned_by"]) for m in data if isinstance(m, dict) and m.get("owned_by")]


def identify(
    metrics: Sequence[RawSample], models: Any, headers: Mapping[str, str]
) -> tuple[ServerKind, str]:
    """The kind some responses describe, and what gave it away.

    Metric names are the strongest sign (a server's own prefix), then ``/v1/models``
    ``owned_by``, then a header only one kind sends.

    Args:
        metrics: Parsed ``/metrics`` samples (empty when there are none).
        models: The ``/v1/models`` JSON body, or ``None``.
        headers: Response headers seen while probing.

    Returns:
        ``(kind, evidence)``; :data:`loadgen.servers.kinds.GENERIC` when nothing is recognised.
    """
    names = {n for n, _, _ in metrics}
    for adapter in ADAPTERS.values():
        if adapter.recognises_metrics(names):
            prefix = next(p for p in adapter.metric_prefixes if any(n.startswith(p) for n in names))
            return adapter.kind, f"/metrics: {prefix} samples"
    for owner in _owners(models):
        for adapter in ADAPTERS.values():
            if adapter.recognises_owner(owner):
                return adapter.kind, f"/v1/models owned_by={owner}"
    for adapter in ADAPTERS.values():
        header = adapter.recognised_header(headers)
        if header is not None:
            return adapter.kind, f"header {header}"
    return GENERIC, "not recognised: no known /metrics names, owned_by or header"


def _version(
    url: str, adapter: Adapter, samples: Iterable[RawSample], headers: Mapping[str, str], t: float
) -> str:
    from_metrics = adapter.version_from_samples(samples)
    if from_metrics:
        return from_metrics
    for source in adapter.versions:
        body = _get(url + source.path, headers, t).json()
        if isinstance(body, dict) and body.get(source.key) not in (None, ""):
            return str(body[source.key])
    return ""


def detect(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    kind: str = AUTO,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> ServerInfo:
    """Probe a server once: its kind, version, and whether it has a server view.

    Never raises for a server that lacks an endpoint or answers nonsense: what cannot be read
    is simply not evidence (a server with nothing recognisable is the generic kind).

    Args:
        url: Base URL, no trailing slash.
        headers: Request headers (authorization).
        kind: ``auto`` to detect; a kind named in the spec skips detection (its version is
            still asked for).
        timeout_s: Per request.

    Returns:
        What was found.
    """
    headers = headers or {}
    metrics = _get(url + "/metrics", headers, timeout_s)
    samples: list[RawSample] = []
    if metrics.status == 200:
        try:
            samples = parse_samples(metrics.text)
        except ValueError as exc:
            logger.warning("%s/metrics is not Prometheus text (%s): no server view", url, exc)
    if kind == AUTO:
        models = _get(url + "/v1/models", headers, timeout_s)
        found, evidence = identify(samples, models.json(), {**metrics.headers, **models.headers})
    else:
        found, evidence = adapter_for(kind).kind, "spec"
    adapter = adapter_for(found)
    version = _version(url, adapter, samples, headers, timeout_s)
    view = adapter.has_metrics and has_server_view(adapter.canonical(samples))
    return ServerInfo(found, version, evidence, view)
