"""Each replica's cold start, read once from its ``/metrics`` as soon as it is ready.

A tokenbooth replica exports ``tokenbooth_startup_duration_seconds{phase}`` (process start ->
model loaded -> warmed -> ready); the sweep writes one ``cold_start.csv`` row per configuration
and replica URL, which the report turns into autoscaling advice. Other servers, or a tokenbooth
too old to export it, get a row that says ``not_exported`` instead of a number.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any, Final

import requests

from loadgen.results import ColdStartStatus, Cs
from loadgen.scrape import samples
from telemetry import names

__all__ = ["PHASE_COLUMNS", "read_cold_start", "read_cold_starts"]

logger = logging.getLogger("tokenbooth.loadgen")

PHASE_COLUMNS: Final[dict[str, str]] = {
    names.STARTUP_PHASE_INIT: Cs.INIT_S,
    names.STARTUP_PHASE_LOAD: Cs.LOAD_S,
    names.STARTUP_PHASE_WARMUP: Cs.WARMUP_S,
    names.STARTUP_PHASE_TOTAL: Cs.TOTAL_S,
}
"""``phase`` label value -> its ``cold_start.csv`` column, for every phase the service exports."""


def _row(config_id: str, url: str, status: str, detail: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {
        Cs.CONFIG_ID: config_id,
        Cs.REPLICA: url,
        Cs.STATUS: status,
        Cs.DETAIL: detail,
    }
    row.update(dict.fromkeys(PHASE_COLUMNS.values(), math.nan))
    return row


def read_cold_start(
    url: str, config_id: str, *, headers: dict[str, str] | None = None, timeout_s: float = 5.0
) -> dict[str, Any]:
    """One ``cold_start.csv`` row for the replica at ``url`` (keys: :class:`Cs`).

    Every phase must be present for ``measured``: a replica that is ready has set all of them,
    so a partial set means something else answered (and is reported, not filled in).
    """
    try:
        r = requests.get(url + "/metrics", timeout=timeout_s, headers=headers)
        r.raise_for_status()
        found = samples(r.text)
    except (requests.RequestException, ValueError) as exc:
        return _row(config_id, url, ColdStartStatus.UNREACHABLE, f"{type(exc).__name__}: {exc}")
    phases = {
        labels.get(names.LABEL_PHASE, ""): value
        for name, labels, value in found
        if name == names.TOKENBOOTH_STARTUP_DURATION
    }
    missing = [p for p in PHASE_COLUMNS if p not in phases]
    if missing:
        detail = (
            f"{names.TOKENBOOTH_STARTUP_DURATION} not exported"
            if len(missing) == len(PHASE_COLUMNS)
            else f"{names.TOKENBOOTH_STARTUP_DURATION} lacks phase {', '.join(missing)}"
        )
        return _row(config_id, url, ColdStartStatus.NOT_EXPORTED, detail)
    row = _row(config_id, url, ColdStartStatus.MEASURED)
    for phase, column in PHASE_COLUMNS.items():
        row[column] = phases[phase]
    return row


def read_cold_starts(
    urls: Iterable[str], config_id: str, *, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """:func:`read_cold_start` for each URL, logging what was found."""
    rows = [read_cold_start(u, config_id, headers=headers) for u in urls]
    for row in rows:
        if row[Cs.STATUS] == ColdStartStatus.MEASURED:
            logger.info(
                "%s cold start %.2f s (load %.2f s, warm-up %.2f s)",
                row[Cs.REPLICA],
                row[Cs.TOTAL_S],
                row[Cs.LOAD_S],
                row[Cs.WARMUP_S],
            )
        else:
            logger.info("%s cold start %s: %s", row[Cs.REPLICA], row[Cs.STATUS], row[Cs.DETAIL])
    return rows
