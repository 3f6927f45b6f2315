"""Fit one base configuration's batch service times from its measured points.

Per base configuration (what one replica runs), from the server's own metrics:

* prefill per batch ``= p0 + p1 b`` (``tokenbooth_batch_prefill_seconds`` against
  ``tokenbooth_batch_size``), and
* one decode step ``= s0 + s1 a`` with ``a`` the sequences still active
  (``tokenbooth_batch_decode_seconds`` against the expected steps of a batch of ``b``, drawn from
  the measured (prompt, output) lengths),

both by non-negative least squares over the measured points (each first divided by the CPU
contention it ran under), plus the client-side overhead (client TTFT minus server TTFT), the
closed-loop catch probability and the CPU demand, and finally the closed-loop users' start
spread that reproduces the measured batch sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import nnls

from loadgen.results import Point
from reports.capacity.columns import FitCol, cell
from reports.capacity.host import Host, busy_workers, cpu_demand, loadgen_cores
from reports.capacity.race import catch_probability
from reports.capacity.results import LOCUST_START_SPREAD_S, ServiceTimes, Window
from reports.capacity.simulate import simulate
from reports.capacity.steps import FloatArray, decode_step_table, interpolate_steps
from reports.load import Rpt, batch_policy, spare_workers

__all__ = ["START_SPREAD_CANDIDATES", "calibrate_start", "fit_service", "tokens_from_points"]

START_SPREAD_CANDIDATES: Final[tuple[float, ...]] = (LOCUST_START_SPREAD_S, 0.0)
"""Closed-loop start spreads tried: Locust's spawn interval, or every user at once."""
_MAX_SAMPLE: Final = 5000
"""Measured requests kept in a fitted service's length sample (a seeded subsample beyond)."""
_SERVER_BATCH_COLUMNS: Final = (
    Point.SERVER_BATCH_SIZE_MEAN,
    Point.SERVER_PREFILL_MEAN_S,
    Point.SERVER_DECODE_MEAN_S,
)


def _nnls_line(x: FloatArray, y: FloatArray) -> tuple[float, float, float, bool]:
    """Non-negative ``y = a + b x``; (a, b, relative RMSE, whether a slope was identifiable)."""
    if x.size >= 2 and float(x.max() - x.min()) >= 0.5:
        design = np.column_stack([np.ones_like(x), x])
        coef, _ = nnls(design, y)
        a, b = float(coef[0]), float(coef[1])
        slope_ok = True
    else:
        a, b, slope_ok = float(y.mean()), 0.0, False
    resid = y - (a + b * x)
    mean = float(y.mean())
    rel = float(np.sqrt(np.mean(resid**2)) / mean) if mean > 0 else math.nan
    return a, b, rel, slope_ok


def _nnls_steps(
    longest: FloatArray, total: FloatArray, decode: FloatArray, spread: float
) -> tuple[float, float, float]:
    """Non-negative ``decode = s0 longest + s1 total``; (s0, s1, relative RMSE).

    Without spread in batch size the two columns cannot be told apart: the step is then taken
    as independent of the active sequences (``s1 = 0``).
    """
    if longest.size >= 2 and spread >= 0.5:
        coef, _ = nnls(np.column_stack([longest, total]), decode)
        s0, s1 = float(coef[0]), float(coef[1])
    else:
        ok = longest > 0
        s0, s1 = (float(np.mean(decode[ok] / longest[ok])) if ok.any() else 0.0), 0.0
    resid = decode - (s0 * longest + s1 * total)
    mean = float(decode.mean())
    rel = float(np.sqrt(np.mean(resid**2)) / mean) if mean > 0 else math.nan
    return s0, s1, rel


def tokens_from_points(points: pd.DataFrame) -> tuple[FloatArray, FloatArray]:
    """(completion tokens, prompt tokens) per measured request; prompts empty when unknown.

    Args:
        points: Fit points, with the :class:`FitCol` token arrays when the run has raw rows.

    Returns:
        The pooled samples; without raw rows, one request of the points' mean output length.
    """
    if FitCol.COMPLETION_TOKENS in points.columns:
        parts = [np.asarray(v, dtype=float) for v in points[FitCol.COMPLETION_TOKENS] if len(v)]
        if parts:
            prompts: list[FloatArray] = []
            if FitCol.PROMPT_TOKENS in points.columns:
                pairs = zip(
                    points[FitCol.COMPLETION_TOKENS], points[FitCol.PROMPT_TOKENS], strict=True
                )
                for t, p in pairs:
                    if len(t):
                        prompts.append(np.asarray(p, dtype=float))
            tokens = np.concatenate(parts)
            prompt = np.concatenate(prompts) if prompts else np.empty(0)
            return tokens, prompt if prompt.size == tokens.size else np.empty(0)
    if Rpt.COMPLETION_TOKENS_MEAN in points.columns:
        mean = pd.to_numeric(points[Rpt.COMPLETION_TOKENS_MEAN], errors="coerce").dropna()
    else:  # no raw rows: the harness's summary still gives output tokens per request
        tps = pd.to_numeric(points[Point.OUTPUT_TOKENS_PER_S], errors="coerce")
        rps = pd.to_numeric(points[Point.ACHIEVED_RPS], errors="coerce")
        mean = (tps / rps.where(rps > 0)).dropna()
    tokens = np.asarray([max(1, round(float(mean.mean())))]) if len(mean) else np.empty(0)
    return tokens, np.empty(0)


@dataclass(frozen=True)
class _Sample:
    """The measured request lengths a fitted service replays."""

    outputs: npt.NDArray[np.int64]
    prompts: npt.NDArray[np.int64]  # empty: prompt lengths not recorded
    steps: tuple[tuple[float, float], ...]


def _sample(tokens: FloatArray, prompts: FloatArray, max_b: int) -> _Sample:
    if tokens.size > _MAX_SAMPLE:
        pick = np.random.default_rng(0).choice(tokens.size, _MAX_SAMPLE, replace=False)
        tokens = tokens[pick]
        prompts = prompts[pick] if prompts.size else prompts
    outputs = tokens.astype(np.int64)
    paired = (
        prompts.astype(np.int64) if prompts.size == tokens.size else np.empty(0, dtype=np.int64)
    )
    steps = decode_step_table(paired if paired.size else np.zeros_like(outputs), outputs, max_b)
    return _Sample(outputs, paired, steps)


@dataclass(frozen=True)
class _Lines:
    """The two least-squares fits and what they rest on."""

    prefill: tuple[float, float]
    step: tuple[float, float]
    prefill_rmse: float
    step_rmse: float
    slope_identified: bool
    batch_sizes: FloatArray


def _fit_lines(
    usable: pd.DataFrame,
    steps: tuple[tuple[float, float], ...],
    host: Host,
    cpu_per_worker: float,
    workers: int,
) -> _Lines:
    """Prefill and decode-step lines over the points, each point's times uncontended first."""
    bs, pf, longest, total, decode = [], [], [], [], []
    for _, row in usable.iterrows():
        b = float(row[Point.SERVER_BATCH_SIZE_MEAN])
        slow = host.contention(cpu_per_worker, busy_workers(row, workers), loadgen_cores(row))
        lg, tt = interpolate_steps(steps, b)
        bs.append(b)
        pf.append(float(row[Point.SERVER_PREFILL_MEAN_S]) / slow)
        decode.append(float(row[Point.SERVER_DECODE_MEAN_S]) / slow)
        longest.append(lg)
        total.append(tt)
    x = np.asarray(bs)
    p0, p1, p_err, p_slope = _nnls_line(x, np.asarray(pf))
    s0, s1, s_err = _nnls_steps(
        np.asarray(longest), np.asarray(total), np.asarray(decode), float(x.max() - x.min())
    )
    return _Lines((p0, p1), (s0, s1), p_err, s_err, p_slope, x)


def _client_overhead(usable: pd.DataFrame) -> float | None:
    """Median client TTFT minus server TTFT; ``None`` without server TTFT."""
    has_ttft = Rpt.TTFT_MEAN_S in usable.columns and Point.SERVER_TTFT_MEAN_S in usable.columns
    rows = (
        usable.dropna(subset=[Rpt.TTFT_MEAN_S, Point.SERVER_TTFT_MEAN_S])
        if has_ttft
        else usable[:0]
    )
    if rows.empty:
        return None
    diff = rows[Rpt.TTFT_MEAN_S] - rows[Point.SERVER_TTFT_MEAN_S]
    return max(0.0, float(diff.median()))


def _notes(
    lines: _Lines, sample: _Sample, race_note: str, host: Host, worker_cpu: float
) -> list[str]:
    notes = []
    if not lines.slope_identified:
        notes.append(
            "mean batch size hardly varied across points: service time taken as independent "
            "of batch size"
        )
    if not sample.prompts.size:
        notes.append("no prompt lengths: every prompt taken as the same length")
    if race_note:
        notes.append(race_note)
    if host.device == "cpu" and not math.isfinite(worker_cpu):
        notes.append(
            "no process CPU in the server deltas: a busy batch worker taken to use its "
            "intra threads' cores"
        )
    return notes


def fit_service(
    base: str, label: str, pts: pd.DataFrame, tokens: FloatArray, prompts: FloatArray, host: Host
) -> ServiceTimes | str:
    """Fit one base configuration, or say why it cannot be fitted.

    Args:
        base: The base configuration (:attr:`Rpt.BASE_CONFIG_ID`).
        label: Its label.
        pts: Its valid points (statistics and :class:`FitCol` inputs).
        tokens: Completion tokens of its measured requests.
        prompts: Their prompt tokens (empty: not recorded).
        host: What the points' replicas shared.

    Returns:
        The service times, or the reason there are none.
    """
    usable = pts.dropna(subset=[c for c in _SERVER_BATCH_COLUMNS if c in pts.columns])
    if any(c not in pts.columns for c in _SERVER_BATCH_COLUMNS) or usable.empty:
        return (
            "server batch metrics (batch size, prefill and decode time per batch) are missing, "
            "so batch service time cannot be fitted"
        )
    if tokens.size == 0:
        return "no successful requests with completion-token counts"
    first = usable.iloc[0]
    workers = int(cell(first, Point.BATCH_WORKERS, 1))
    spares = spare_workers(first)
    threads = int(cell(first, Point.INTRA_THREADS, 1))
    max_b = int(cell(first, Point.MAX_BATCH_SIZE, 1))
    sample = _sample(tokens, prompts, max_b)
    # Busy time counts batches on spare workers too, so the worker-time it is shared over
    # (and the batches that can overlap) is that of regular and spare workers together.
    worker_cpu, loadgen_per_request = cpu_demand(usable, workers + spares)
    cpu_per_worker = worker_cpu if math.isfinite(worker_cpu) else float(max(threads, 1))
    catch_p, race_note = catch_probability(usable, workers + spares)
    lines = _fit_lines(usable, sample.steps, host, cpu_per_worker, workers + spares)
    notes = _notes(lines, sample, race_note, host, worker_cpu)
    overhead = _client_overhead(usable)
    if overhead is None:
        notes.append("no server TTFT: client overhead taken as 0")
    return ServiceTimes(
        base_config_id=base,
        label=label,
        max_batch_size=max_b,
        max_batch_delay_s=cell(first, Point.MAX_BATCH_DELAY_MS, 0.0) / 1000.0,
        batch_workers=workers,
        intra_threads=threads,
        prefill_s=lines.prefill,
        step_s=lines.step,
        output_tokens=tuple(int(t) for t in sample.outputs),
        prompt_tokens=tuple(int(p) for p in sample.prompts),
        decode_steps=sample.steps,
        client_overhead_s=overhead or 0.0,
        fit_points=len(usable),
        fit_replicas=tuple(sorted({int(r) for r in usable[Point.REPLICAS]})),
        batch_size_range=(float(lines.batch_sizes.min()), float(lines.batch_sizes.max())),
        prefill_rel_rmse=lines.prefill_rmse,
        step_rel_rmse=lines.step_rmse,
        notes=tuple(notes),
        catch_next_batch_p=catch_p,
        worker_cpu_cores=worker_cpu,
        loadgen_cpu_s_per_request=loadgen_per_request,
        batch_policy=batch_policy(first),
        spare_workers=spares,
    )


def calibrate_start(
    st: ServiceTimes,
    points: pd.DataFrame,
    window: Window,
    balance: str,
    host: Host,
    seed: int,
) -> ServiceTimes:
    """Pick the closed-loop start spread whose simulated batch sizes match the measured ones.

    Args:
        st: The fitted service times.
        points: The configuration's fit points.
        window: The measured window the simulation replays.
        balance: The sweep's balancing rule.
        host: What the replicas shared.
        seed: Simulation seed.

    Returns:
        ``st`` with the best of :data:`START_SPREAD_CANDIDATES` (unchanged without closed-loop
        points that recorded batch sizes).
    """
    closed = points[
        (points[Point.LOAD_MODE] == "concurrency") & points[Point.SERVER_BATCH_SIZE_MEAN].notna()
    ]
    if closed.empty:
        return st
    best: tuple[float, float] | None = None
    for spread in START_SPREAD_CANDIDATES:
        cand = replace(st, user_start_spread_s=spread)
        err = 0.0
        for _, row in closed.iterrows():
            slow = host.contention(
                st.cpu_per_worker, busy_workers(row, st.workers), loadgen_cores(row)
            )
            sim, _, _ = simulate(
                cand,
                int(row[Point.REPLICAS]),
                slow,
                rate=None,
                concurrency=max(1, round(float(row[Point.LOAD_LEVEL]))),
                window=window,
                balance=balance,
                seed=seed,
            )
            simulated = float(np.mean(sim.batch_sizes)) if sim.batch_sizes else math.nan
            measured = float(row[Point.SERVER_BATCH_SIZE_MEAN])
            if simulated > 0 and measured > 0:
                err += abs(math.log(simulated / measured))
        if best is None or err < best[1] - 1e-9:
            best = (spread, err)
    assert best is not None
    return replace(st, user_start_spread_s=best[0])
