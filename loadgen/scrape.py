"""Snapshots of each server's ``/metrics`` before and after a point, and their deltas.

The deltas of cumulative counters and histograms give the server's own view of exactly the
requests of one point (TTFT, queue wait, batch formation, prefill/decode, batch size, tokens),
which reports put beside the client's measurements. A snapshot is read through the server
kind's adapter (:mod:`loadgen.servers`), so it holds canonical samples whatever the server, and
each row keeps the server's own sample name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from loadgen.results import Srv
from loadgen.servers.adapter import Adapter, RawSample
from loadgen.servers.tokenbooth import TOKENBOOTH

__all__ = ["SampleKey", "Snapshot", "deltas", "parse", "samples", "snapshot"]

logger = logging.getLogger("tokenbooth.loadgen")

SampleKey = tuple[str, str, str]
"""(sample name, le, other labels as k=v;k=v)."""


class Snapshot(dict[SampleKey, float]):
    """One scrape: canonical sample -> value, and where each sample came from.

    Attributes:
        sources: Canonical sample name -> the server's own sample name, where they differ.
    """

    __slots__ = ("sources",)

    def __init__(
        self,
        values: Iterable[tuple[SampleKey, float]] = (),
        sources: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(values)
        self.sources: dict[str, str] = dict(sources or {})


def _labels_key(labels: Mapping[str, str]) -> tuple[str, str]:
    le = labels.get("le", "")
    rest = ";".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "le")
    return le, rest


def samples(text: str) -> list[RawSample]:
    """Every sample of a Prometheus text exposition.

    Raises:
        ValueError: The text is not Prometheus exposition.
    """
    return [
        (s.name, s.labels, float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def parse(text: str, adapter: Adapter = TOKENBOOTH) -> Snapshot:
    """Parse Prometheus text into a flat snapshot of the server view's samples.

    Args:
        text: ``/metrics`` as served.
        adapter: The server kind's adapter (tokenbooth's names need no mapping).

    Raises:
        ValueError: The text is not Prometheus exposition.
    """
    snap = Snapshot()
    for s in adapter.canonical(samples(text)):
        le, rest = _labels_key(s.labels)
        snap[(s.name, le, rest)] = s.value
        if s.source != s.name:
            snap.sources[s.name] = s.source
    return snap


def snapshot(
    url: str,
    *,
    adapter: Adapter = TOKENBOOTH,
    timeout_s: float = 5.0,
    headers: dict[str, str] | None = None,
) -> Snapshot:
    """GET ``url``/metrics and parse it; an empty snapshot when it cannot be read."""
    try:
        r = requests.get(url + "/metrics", timeout=timeout_s, headers=headers)
        r.raise_for_status()
    except requests.RequestException:
        return Snapshot()
    try:
        return parse(r.text, adapter)
    except ValueError as exc:
        # A server whose /metrics is not Prometheus text has no server view, not a failed point.
        logger.warning("%s/metrics could not be parsed: %s", url, exc)
        return Snapshot()


_CUMULATIVE_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def deltas(
    point_id: int, replica: str, before: Mapping[SampleKey, float], after: Mapping[SampleKey, float]
) -> list[dict[str, Any]]:
    """Rows (``Srv`` columns) for every sample of one server's snapshot after a point.

    Counters and histograms get a delta (a series first seen after the point started from 0);
    gauges keep before and after, without a delta.
    """
    sources = after.sources if isinstance(after, Snapshot) else {}
    rows = []
    for key, value in after.items():
        name, le, labels = key
        cumulative = name.endswith(_CUMULATIVE_SUFFIXES)
        prev = before.get(key, 0.0 if cumulative else math.nan)
        rows.append(
            {
                Srv.POINT_ID: point_id,
                Srv.REPLICA: replica,
                Srv.METRIC: name,
                Srv.SOURCE: sources.get(name, name),
                Srv.LE: le,
                Srv.LABELS: labels,
                Srv.BEFORE: prev,
                Srv.AFTER: value,
                Srv.DELTA: value - prev if cumulative else math.nan,
            }
        )
    return rows
