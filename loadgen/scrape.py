"""Snapshots of each replica's ``/metrics`` before and after a point, and their deltas.

The deltas of cumulative counters and histograms give the server's own view of exactly the
requests of one point (TTFT, queue wait, batch formation, prefill/decode, batch size), which
reports put beside the client's measurements.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from loadgen.results import Srv
from telemetry import names

__all__ = ["Snapshot", "deltas", "snapshot"]

Snapshot = dict[tuple[str, str, str], float]
"""(sample name, le, other labels as k=v;k=v) -> value."""


def _labels_key(labels: Mapping[str, str]) -> tuple[str, str]:
    le = labels.get("le", "")
    rest = ";".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "le")
    return le, rest


def parse(text: str) -> Snapshot:
    """Parse Prometheus text exposition into a flat snapshot."""
    snap: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            le, rest = _labels_key(s.labels)
            snap[(s.name, le, rest)] = float(s.value)
    return snap


def snapshot(
    url: str, *, timeout_s: float = 5.0, headers: dict[str, str] | None = None
) -> Snapshot:
    """GET ``url``/metrics and parse it; an empty snapshot when it cannot be read."""
    try:
        r = requests.get(url + "/metrics", timeout=timeout_s, headers=headers)
        r.raise_for_status()
    except requests.RequestException:
        return {}
    return parse(r.text)


_CUMULATIVE_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")
# process_cpu_seconds_total is a counter, process_resident_memory_bytes a gauge.
_KEPT = ("tokenbooth_", "gen_ai_", names.PROCESS_CPU_SECONDS, names.PROCESS_RESIDENT_MEMORY)


def deltas(point_id: int, replica: str, before: Snapshot, after: Snapshot) -> list[dict[str, Any]]:
    """Rows (``Srv`` columns) for every tokenbooth/gen_ai sample of one replica."""
    rows = []
    for key, value in after.items():
        name, le, labels = key
        # Process CPU and memory come along: they show how much of the host each replica used.
        if not name.startswith(_KEPT):
            continue
        if name.endswith("_created"):
            continue
        prev = before.get(key, 0.0 if name.endswith(_CUMULATIVE_SUFFIXES) else math.nan)
        cumulative = name.endswith(_CUMULATIVE_SUFFIXES)
        rows.append(
            {
                Srv.POINT_ID: point_id,
                Srv.REPLICA: replica,
                Srv.METRIC: name,
                Srv.LE: le,
                Srv.LABELS: labels,
                Srv.BEFORE: prev,
                Srv.AFTER: value,
                Srv.DELTA: value - prev if cumulative else math.nan,
            }
        )
    return rows
