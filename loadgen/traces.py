"""Trace replay: Mooncake JSONL and BurstGPT CSV traces -> send offsets and prompts.

A trace point replays one trace: each request is sent at its own timestamp (relative to the
trace's first request, divided by ``[workload] time_scale``: 2 replays twice as fast, 0.5 at
half speed) through the open-loop machinery, so schedule lag is recorded and checked as for
any open-loop point. Prompts are synthetic text of the trace's input length in the served
model's tokens; outputs are the trace's output length (with ``ignore_eos`` as for synthetic).

Mooncake traces (``{"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}``
per line) name each 512-token block of a prompt by a hash id: every id maps to one
deterministic 512-token block of text, so requests whose ``hash_ids`` share a prefix of K ids
share their first K * 512 tokens, which is what a server's prefix cache sees. BurstGPT CSVs
(``Timestamp`` in seconds, ``Request tokens``, ``Response tokens``, and ``Model``,
``Total tokens``, ``Log Type``) carry no block ids: their prompts share nothing. Rows with 0
request or response tokens (BurstGPT's failed requests) are skipped, with a warning.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from loadgen.arrivals import warmup_start
from loadgen.spec import TRACE_FORMATS, LoadLevel, RunSpec, WorkloadSpec
from loadgen.workload import PromptItem, TokenCounter, WorkloadError, synthetic_text

__all__ = [
    "BLOCK_TOKENS",
    "BURSTGPT_COLUMNS",
    "TraceError",
    "TraceReplay",
    "TraceRequest",
    "plan_replay",
    "read_burstgpt",
    "read_mooncake",
    "read_trace",
    "trace_prompts",
]

logger = logging.getLogger("tokenbooth.loadgen")

BLOCK_TOKENS: Final = 512
"""Tokens per Mooncake hash id (the block size of the published Mooncake traces)."""
BURSTGPT_COLUMNS: Final = (
    "Timestamp",
    "Model",
    "Request tokens",
    "Response tokens",
    "Total tokens",
    "Log Type",
)
"""BurstGPT's CSV header; only ``Timestamp``, ``Request tokens``, ``Response tokens`` are read."""
_BURSTGPT_NEEDED: Final = ("Timestamp", "Request tokens", "Response tokens")
# Seed namespaces: a hash id's block is the same in every request that names it; filler
# beyond a request's hash ids (and every BurstGPT prompt) is its own.
_SHARED, _PRIVATE = 0, 1


class TraceError(WorkloadError):
    """A trace file is missing, malformed or empty; the message names the file and line."""


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace, its time unscaled."""

    offset_s: float  # seconds after the trace's first request
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()  # Mooncake: one id per 512-token block of the prompt


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _whole(value: Any, *, low: int) -> int | None:
    v = _number(value)
    return int(v) if v is not None and v.is_integer() and v >= low else None


def _relative(raw: list[tuple[float, int, int, tuple[int, ...]]]) -> list[TraceRequest]:
    """Sorted by time (stably: ties keep file order), offsets from the first request."""
    raw.sort(key=lambda r: r[0])
    t0 = raw[0][0]
    return [TraceRequest(t - t0, i, o, h) for t, i, o, h in raw]


def read_mooncake(path: Path) -> list[TraceRequest]:
    """A Mooncake JSONL trace (``timestamp`` in ms); raise :class:`TraceError` naming the line."""
    raw: list[tuple[float, int, int, tuple[int, ...]]] = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace: {exc.strerror}") from exc
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{where}: invalid JSON: {exc.msg}") from exc
        if not isinstance(obj, dict):
            raise TraceError(f"{where}: expected an object, got {type(obj).__name__}")
        missing = [k for k in ("timestamp", "input_length", "output_length") if k not in obj]
        if missing:
            raise TraceError(f"{where}: missing {', '.join(missing)}")
        ts = _number(obj["timestamp"])
        if ts is None or ts < 0:
            raise TraceError(f"{where}: timestamp must be ms >= 0, got {obj['timestamp']!r}")
        n_in = _whole(obj["input_length"], low=1)
        if n_in is None:
            raise TraceError(f"{where}: input_length must be an integer >= 1")
        n_out = _whole(obj["output_length"], low=1)
        if n_out is None:
            raise TraceError(f"{where}: output_length must be an integer >= 1")
        ids = obj.get("hash_ids", [])
        if not isinstance(ids, list) or any(_whole(h, low=0) is None for h in ids):
            raise TraceError(f"{where}: hash_ids must be a list of integers >= 0")
        raw.append((ts / 1000.0, n_in, n_out, tuple(int(h) for h in ids)))
    if not raw:
        raise TraceError(f"{path}: no requests in the trace")
    return _relative(raw)


def _cell(text: str | None) -> float | None:
    try:
        v = float(text or "")
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_burstgpt(path: Path) -> list[TraceRequest]:
    """A BurstGPT CSV trace (``Timestamp`` in s); raise :class:`TraceError` naming the line."""
    raw: list[tuple[float, int, int, tuple[int, ...]]] = []
    skipped = 0
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace: {exc.strerror}") from exc
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in _BURSTGPT_NEEDED if c not in header]
        if missing:
            raise TraceError(
                f"{path}:1: BurstGPT header lacks {missing}; expected {list(BURSTGPT_COLUMNS)}"
            )
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row or any(row[c] is None for c in _BURSTGPT_NEEDED):
                raise TraceError(f"{where}: expected {len(header)} fields")
            ts = _cell(row["Timestamp"])
            if ts is None or ts < 0:
                raise TraceError(
                    f"{where}: Timestamp must be seconds >= 0, got {row['Timestamp']!r}"
                )
            counts = []
            for col in ("Request tokens", "Response tokens"):
                v = _cell(row[col])
                if v is None or not v.is_integer() or v < 0:
                    raise TraceError(f"{where}: {col} must be an integer >= 0, got {row[col]!r}")
                counts.append(int(v))
            if 0 in counts:
                skipped += 1  # BurstGPT logs failed requests with 0 response tokens
                continue
            raw.append((ts, counts[0], counts[1], ()))
    if skipped:
        logger.warning("%s: skipped %d row(s) with 0 request or response tokens", path, skipped)
    if not raw:
        raise TraceError(f"{path}: no requests in the trace")
    return _relative(raw)


def read_trace(path: Path, fmt: str) -> list[TraceRequest]:
    """The trace at ``path`` in ``fmt`` (one of :data:`TRACE_FORMATS`), sorted by time."""
    if not path.exists():
        raise TraceError(f"trace file not found: {path}")
    if fmt == "mooncake":
        return read_mooncake(path)
    if fmt == "burstgpt":
        return read_burstgpt(path)
    raise TraceError(f"{path}: unknown trace format {fmt!r}; known: {list(TRACE_FORMATS)}")


@dataclass(frozen=True)
class TraceReplay:
    """What one trace point sends: its requests in order, their scaled offsets, its rate."""

    requests: tuple[TraceRequest, ...]
    offsets_s: tuple[float, ...]  # send times after the point's start, at the time scale
    offered_rps: float  # measured window: (n - 1) gaps over its span

    def level(self) -> LoadLevel:
        """The point's load level: open loop at the trace's offered rate, arrival ``trace``."""
        return LoadLevel("rate", round(self.offered_rps, 4), "trace")


def plan_replay(
    requests: Sequence[TraceRequest], workload: WorkloadSpec, run: RunSpec
) -> TraceReplay:
    """The part of a trace one point replays, bounded like any open-loop point.

    Requests due in the first ``warmup_s`` are warm-up, of which only the last
    ``max_requests`` are kept (:func:`loadgen.arrivals.warmup_start`: the bound covers what is
    sent, and the target is still warm when the window opens); the replay stops at ``warmup_s
    + duration_s`` or after ``max_requests`` measured ones, whichever comes first. The offered
    rate is that of the measured requests: ``(n - 1) / (last - first offset)``, which is
    exactly ``r`` for sends ``1/r`` apart, like an open-loop point's rate.

    Raises:
        TraceError: Fewer than two requests fall in the measured window.
    """
    scale = workload.time_scale
    window_end = run.warmup_s + run.duration_s
    kept: list[TraceRequest] = []
    offsets: list[float] = []
    measured: list[float] = []
    for r in requests:
        t = r.offset_s / scale
        if t >= window_end or len(measured) >= run.max_requests:
            break
        kept.append(r)
        offsets.append(t)
        if t >= run.warmup_s:
            measured.append(t)
    start = warmup_start(offsets, run.warmup_s, run.max_requests)
    kept, offsets = kept[start:], offsets[start:]
    span = measured[-1] - measured[0] if len(measured) >= 2 else 0.0
    if span <= 0:
        raise TraceError(
            f"{workload.path}: {len(measured)} request(s) at distinct times in the measured "
            f"window [{run.warmup_s:g}, {window_end:g}) s at time_scale {scale:g}; a trace point "
            "needs at least 2 (lengthen [run] duration_s, shorten warmup_s or raise time_scale)"
        )
    return TraceReplay(tuple(kept), tuple(offsets), (len(measured) - 1) / span)


def _block(counter: TokenCounter, seed: Sequence[int]) -> str:
    """Exactly :data:`BLOCK_TOKENS` tokens of words, each after a space, so blocks concatenate.

    The leading space makes every block start a fresh pre-token: the tokens of two joined
    blocks are the tokens of each, and a shared run of blocks is a shared run of tokens.
    """
    rng = np.random.default_rng(list(seed))
    text = " " + synthetic_text(BLOCK_TOKENS + 8, counter, rng)
    return counter.truncate(text, BLOCK_TOKENS)


def trace_prompts(
    requests: Sequence[TraceRequest], counter: TokenCounter, *, seed: int
) -> list[PromptItem]:
    """One prompt per request, of its input length in ``counter``'s tokens, in trace order.

    A request's prompt is the blocks of its hash ids in order, then blocks of its own, cut to
    its input length; ``seed`` varies every block (the runner passes one per point, so a
    repeated replay does not hit a prefix cache filled by the last one).
    """
    shared: dict[int, str] = {}
    items = []
    missed = 0
    for i, r in enumerate(requests):
        n_blocks = -(-r.input_tokens // BLOCK_TOKENS)
        parts = []
        for k in range(n_blocks):
            if k < len(r.hash_ids):
                h = r.hash_ids[k]
                if h not in shared:
                    shared[h] = _block(counter, (seed, _SHARED, h))
                parts.append(shared[h])
            else:
                parts.append(_block(counter, (seed, _PRIVATE, i, k)))
        prompt = counter.truncate("".join(parts), r.input_tokens)
        count = counter.count(prompt)
        missed += count != r.input_tokens
        items.append(PromptItem(max_tokens=r.output_tokens, prompt=prompt, input_tokens=count))
    if missed:
        logger.warning(
            "%d of %d trace prompts could not be cut to their exact token count; their "
            "input_tokens is the tokenizer's count",
            missed,
            len(requests),
        )
    return items
