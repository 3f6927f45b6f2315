"""Snapshots of each replica's ``/metrics`` before and after a point, and their deltas.

The deltas of cumulative counters and histograms give the server's own view of exactly the
requests of one point (TTFT, queue wait, batch formation, prefill/decode, batch size), which
reports put beside the client's measurements.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from loadgen.results import Point, Srv
from telemetry import names

__all__ = ["Snapshot", "deltas", "server_summary", "snapshot"]

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


def deltas(point_id: int, replica: str, before: Snapshot, after: Snapshot) -> list[dict[str, Any]]:
    """Rows (``Srv`` columns) for every tokenbooth/gen_ai sample of one replica."""
    rows = []
    for key, value in after.items():
        name, le, labels = key
        # Process CPU and memory come along: they show how much of the host each replica used.
        if not name.startswith(("tokenbooth_", "gen_ai_", "process_cpu", "process_resident")):
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


def _total(rows: Iterable[Mapping[str, Any]], metric: str) -> float:
    return float(sum(r[Srv.DELTA] for r in rows if r[Srv.METRIC] == metric and not r[Srv.LE]))


def _mean(rows: Sequence[Mapping[str, Any]], base: str) -> float:
    count = _total(rows, base + "_count")
    return _total(rows, base + "_sum") / count if count > 0 else math.nan


def server_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Server-side means of one point, over all replicas (``Point.SERVER_*`` columns)."""
    return {
        Point.SERVER_TTFT_MEAN_S: _mean(rows, names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN),
        Point.SERVER_QUEUE_WAIT_MEAN_S: _mean(rows, names.TOKENBOOTH_QUEUE_WAIT),
        Point.SERVER_BATCH_FORMATION_MEAN_S: _mean(rows, names.TOKENBOOTH_BATCH_FORMATION_DELAY),
        Point.SERVER_PREFILL_MEAN_S: _mean(rows, names.TOKENBOOTH_BATCH_PREFILL),
        Point.SERVER_DECODE_MEAN_S: _mean(rows, names.TOKENBOOTH_BATCH_DECODE),
        Point.SERVER_BATCH_SIZE_MEAN: _mean(rows, names.TOKENBOOTH_BATCH_SIZE),
        Point.SERVER_BATCH_FILL_MEAN: _mean(rows, names.TOKENBOOTH_BATCH_FILL_RATIO),
        Point.SERVER_REQUESTS: _total(rows, names.TOKENBOOTH_REQUESTS),
        Point.SERVER_GENERATION_TOKENS: _total(rows, names.TOKENBOOTH_GENERATION_TOKENS),
    }
