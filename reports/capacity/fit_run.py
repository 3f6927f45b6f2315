"""Fit the capacity model from a run: the per-point inputs, then one fit per base configuration.

Besides each valid point's statistics the fit needs what only the raw files hold: every
successful request's (prompt, output) lengths, the batch busy and process CPU seconds in the
server deltas, and the closed-loop batch-catching counts in the client rows. They are added as
:class:`reports.capacity.columns.FitCol` columns to a copy of the points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadgen.results import Col, Env, Gpu, Machine, Point, Srv
from loadgen.spec import SweepSpec, parse_spec
from reports.analysis import Analysis, analyze, is_stage
from reports.capacity.columns import FitCol
from reports.capacity.host import Host
from reports.capacity.model import CapacityModel, fit_points
from reports.capacity.race import batch_catch_counts
from reports.capacity.results import Window
from reports.capacity.steps import FloatArray
from reports.load import Run, load_run, prepare_points
from telemetry import names

__all__ = ["fit", "fit_analysis", "fit_run_dir"]


def _environment_host(environment: Mapping[str, Any]) -> Host:
    """The device and core count ``environment.json`` recorded (CPU, cores unknown, without)."""
    gpu = environment.get(Env.GPU) or {}
    device = "cuda" if isinstance(gpu, Mapping) and gpu.get(Gpu.AVAILABLE) else "cpu"
    machine = environment.get(Env.MACHINE) or {}
    cores = machine.get(Machine.CPU_COUNT) if isinstance(machine, Mapping) else None
    return Host(device, int(cores) if cores else None)


def _add_token_columns(pts: pd.DataFrame, requests: pd.DataFrame) -> None:
    """Per point: every successful request's output tokens and, paired with them, its prompt."""
    tokens: dict[int, FloatArray] = {}
    prompts: dict[int, FloatArray] = {}
    if not requests.empty:
        ok = requests[requests[Col.OK].fillna(False).astype(bool)]
        for pid, g in ok.groupby(Col.POINT_ID):
            out = pd.to_numeric(g[Col.COMPLETION_TOKENS], errors="coerce")
            if Col.PROMPT_TOKENS in g.columns:
                inp = pd.to_numeric(g[Col.PROMPT_TOKENS], errors="coerce")
            else:
                inp = pd.Series(math.nan, index=g.index)
            both = out.notna() & inp.notna()
            if both.any():  # pairs: a request's prompt and output length go together
                tokens[int(pid)] = out[both].to_numpy(dtype=float)
                prompts[int(pid)] = inp[both].to_numpy(dtype=float)
            else:
                tokens[int(pid)] = out.dropna().to_numpy(dtype=float)
                prompts[int(pid)] = np.empty(0)
    pts[FitCol.COMPLETION_TOKENS] = [tokens.get(int(p), np.empty(0)) for p in pts[Point.POINT_ID]]
    pts[FitCol.PROMPT_TOKENS] = [prompts.get(int(p), np.empty(0)) for p in pts[Point.POINT_ID]]


def _add_server_columns(pts: pd.DataFrame, server: pd.DataFrame) -> None:
    """Per point: batch busy seconds and process CPU seconds, summed over replicas."""
    busy: dict[int, float] = {}
    cpu: dict[int, float] = {}
    need = (Srv.POINT_ID, Srv.METRIC, Srv.DELTA)
    if not server.empty and all(c in server.columns for c in need):
        plain = server[server[Srv.LE].fillna("") == ""] if Srv.LE in server.columns else server
        sums = (names.TOKENBOOTH_BATCH_PREFILL + "_sum", names.TOKENBOOTH_BATCH_DECODE + "_sum")
        for pid, g in plain.groupby(Srv.POINT_ID):
            deltas = pd.to_numeric(g[Srv.DELTA], errors="coerce")
            busy[int(pid)] = float(deltas[g[Srv.METRIC].isin(sums)].sum())
            c = deltas[g[Srv.METRIC] == names.PROCESS_CPU_SECONDS].dropna()
            cpu[int(pid)] = float(c.sum()) if len(c) else math.nan
    pts[FitCol.BATCH_BUSY_S] = [busy.get(int(p), math.nan) for p in pts[Point.POINT_ID]]
    pts[FitCol.PROCESS_CPU_S] = [cpu.get(int(p), math.nan) for p in pts[Point.POINT_ID]]


def _add_catch_counts(pts: pd.DataFrame, requests: pd.DataFrame) -> None:
    """Per closed-loop point: (caught, chances) of the batch-catching race in its client rows."""
    counts: dict[int, tuple[int, int]] = {}
    if not requests.empty and Col.POINT_ID in requests.columns:
        ok = requests[requests[Col.OK].fillna(False).astype(bool)]
        closed = set(pts.loc[pts[Point.LOAD_MODE] == "concurrency", Point.POINT_ID].astype(int))
        for pid, g in ok.groupby(Col.POINT_ID):
            if int(pid) in closed:
                counts[int(pid)] = batch_catch_counts(g)
    pts[FitCol.CATCH_COUNTS] = [counts.get(int(p), (0, 0)) for p in pts[Point.POINT_ID]]


def fit_analysis(
    analysis: Analysis,
    *,
    fit_replicas: Iterable[int] | None = None,
    seed: int = 0,
    replications: int = 1,
) -> CapacityModel:
    """Fit the capacity model from an analysed run (valid, steady points: stages are left out).

    Args:
        analysis: The run's analysis.
        fit_replicas: Use only points with these replica counts (e.g. ``[1]`` to predict
            two replicas from one); ``None`` uses every valid point.
        seed: Simulation seed.
        replications: Simulated windows pooled per prediction.

    Returns:
        The model (configurations without server batch metrics are listed in ``unfitted``).
    """
    run = analysis.run
    # Stage points are transient (each meets the queue the last left): no steady service time.
    pts = analysis.points[analysis.points[Point.VALID] & ~is_stage(analysis.points)].copy()
    keep = None if fit_replicas is None else tuple(sorted(set(fit_replicas)))
    if keep is not None:
        pts = pts[pts[Point.REPLICAS].isin(keep)]
    _add_token_columns(pts, run.requests)
    _add_server_columns(pts, run.server)
    _add_catch_counts(pts, run.requests)
    return fit_points(
        pts.reset_index(drop=True),
        window=Window.from_spec(run.spec),
        balance=run.spec.target.balance,
        host=_environment_host(run.environment),
        seed=seed,
        replications=replications,
        fit_replicas=keep,
    )


def fit(
    points_df: pd.DataFrame,
    requests_df: pd.DataFrame,
    server_df: pd.DataFrame,
    *,
    spec: SweepSpec | str | None = None,
    environment: Mapping[str, Any] | None = None,
    fit_replicas: Iterable[int] | None = None,
    seed: int = 0,
) -> CapacityModel:
    """Fit the capacity model from a run's frames (as :class:`loadgen.results.RunDir` reads them).

    Args:
        points_df: ``RunDir.points()``.
        requests_df: ``RunDir.requests()``.
        server_df: ``RunDir.server()``.
        spec: The run's spec (text or parsed); sets the window, balancing and validity rules.
        environment: ``RunDir.environment()``; sets the device and core count.
        fit_replicas: Use only these replica counts (``None``: all).
        seed: Simulation seed.

    Returns:
        The model.
    """
    parsed = parse_spec(spec, check_files=False) if isinstance(spec, str) else spec
    if parsed is None:
        parsed = parse_spec("")
    run = Run(
        path=Path("."),
        spec=parsed,
        environment=dict(environment or {}),
        points=prepare_points(points_df),
        requests=requests_df,
        server=server_df,
    )
    return fit_analysis(analyze(run, n_resamples=0), fit_replicas=fit_replicas, seed=seed)


def fit_run_dir(
    path: Path | str, *, fit_replicas: Iterable[int] | None = None, seed: int = 0
) -> CapacityModel:
    """Fit the capacity model straight from a run directory.

    Args:
        path: The run directory.
        fit_replicas: Use only these replica counts (``None``: all).
        seed: Simulation seed.

    Returns:
        The model.
    """
    return fit_analysis(
        analyze(load_run(path), n_resamples=0), fit_replicas=fit_replicas, seed=seed
    )
