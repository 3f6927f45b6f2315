"""Read one run directory (through :mod:`loadgen.results`) and its spec into plain objects.

``reports`` never talks to a live service: everything a report says comes from the files a sweep
left behind. Columns are the :mod:`loadgen.results` constants; the few columns the report
derives itself are named once here, in :class:`Rpt`.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pandas as pd

from loadgen.results import (
    POINT_COLUMNS,
    POINTS_FILE,
    SPEC_FILE,
    Point,
    RunDir,
)

__all__ = [
    "Rpt",
    "Run",
    "RunSpec",
    "Slo",
    "base_config_label",
    "config_label",
    "load_run",
    "parse_spec",
    "prepare_points",
]


class Rpt:
    """Columns the report derives (never written back into a run directory)."""

    CONFIG: Final = "config"  # human label of the server configuration incl. replicas
    BASE_CONFIG: Final = "base_config"  # the same without replicas: what a replica runs
    N_TTFT: Final = "n_ttft"  # samples behind the TTFT percentiles
    N_ITL: Final = "n_itl"  # inter-token gaps behind the ITL percentiles
    N_TPOT: Final = "n_tpot"
    N_E2E: Final = "n_e2e"
    TTFT_P95_LO: Final = "ttft_p95_ci_lo_s"
    TTFT_P95_HI: Final = "ttft_p95_ci_hi_s"
    ITL_P95_LO: Final = "itl_p95_ci_lo_s"
    ITL_P95_HI: Final = "itl_p95_ci_hi_s"
    TPOT_P95_LO: Final = "tpot_p95_ci_lo_s"
    TPOT_P95_HI: Final = "tpot_p95_ci_hi_s"
    E2E_P95_LO: Final = "e2e_p95_ci_lo_s"
    E2E_P95_HI: Final = "e2e_p95_ci_hi_s"
    TTFT_MEAN_S: Final = "ttft_mean_s"
    E2E_MEAN_S: Final = "e2e_mean_s"
    COMPLETION_TOKENS_MEAN: Final = "completion_tokens_mean"
    ACHIEVED_RPS_SE: Final = "achieved_rps_se"  # batch-means standard error
    IN_FLIGHT_MEAN: Final = "in_flight_mean"  # Little's law: achieved rps x mean e2e
    SLO_PASS: Final = "slo_pass"
    SLO_FAIL: Final = "slo_fail"  # which SLO terms failed, "" when passing
    N_POINTS: Final = "n_points"  # repeats pooled into one load level
    POINT_IDS: Final = "point_ids"
    CPU_THREADS: Final = "cpu_threads"  # replicas x batch workers x intra threads

    # Capacity table (one row per configuration, Analysis.capacity_table).
    N_POINTS_TOTAL: Final = "points"
    N_VALID: Final = "valid_points"
    KNEE_FOUND: Final = "knee_found"
    KNEE_LOAD_LEVEL: Final = "knee_load_level"
    KNEE_RPS: Final = "knee_rps"
    KNEE_OUTPUT_TOKENS_PER_S: Final = "knee_output_tokens_per_s"
    KNEE_TTFT_P95_S: Final = "knee_ttft_p95_s"
    KNEE_NOTE: Final = "knee_note"
    CAPACITY_STATUS: Final = "capacity_status"
    CAPACITY_RPS: Final = "capacity_rps"
    CAPACITY_RPS_CI_LO: Final = "capacity_rps_ci_lo"
    CAPACITY_RPS_CI_HI: Final = "capacity_rps_ci_hi"
    CAPACITY_OUTPUT_TOKENS_PER_S: Final = "capacity_output_tokens_per_s"
    CAPACITY_LOAD_LEVEL: Final = "capacity_load_level"
    CAPACITY_CONCURRENCY: Final = "capacity_concurrency"
    CAPACITY_LIMITING: Final = "capacity_limiting"
    CAPACITY_NOTE: Final = "capacity_note"
    PEAK_RPS: Final = "peak_rps"  # highest valid achieved requests/s
    MODEL_RPS: Final = "model_rps"  # capacity model's full-batch requests/s

    # Capacity model hold-out table (CapacityModel.holdout_error().table).
    HOLDOUT_KIND: Final = "kind"  # leave-one-out | cross-replica
    MEASURED_RPS: Final = "measured_rps"
    PREDICTED_RPS: Final = "predicted_rps"
    THROUGHPUT_REL_ERROR: Final = "throughput_rel_error"
    MEASURED_TTFT_P95_S: Final = "measured_ttft_p95_s"
    PREDICTED_TTFT_P95_S: Final = "predicted_ttft_p95_s"
    TTFT_P95_REL_ERROR: Final = "ttft_p95_rel_error"

    # Model prediction grid (figure input).
    RATE_RPS: Final = "rate_rps"
    THROUGHPUT_RPS: Final = "throughput_rps"
    PRED_TTFT_P95_S: Final = "ttft_p95_s"

    # Run comparison (Comparison.table / .capacity).
    METRIC: Final = "metric"
    COLUMN: Final = "column"
    A: Final = "a"
    B: Final = "b"
    CHANGE: Final = "change"  # (b - a) / a
    BEYOND_NOISE: Final = "beyond_noise"
    EVIDENCE: Final = "evidence"
    FLAG: Final = "flag"  # regression | improvement | ""
    A_CAPACITY_RPS: Final = "a_capacity_rps"
    A_STATUS: Final = "a_status"
    B_CAPACITY_RPS: Final = "b_capacity_rps"
    B_STATUS: Final = "b_status"


DEFAULT_LAG_THRESHOLD_S: Final = 0.05
DEFAULT_MIN_SAMPLES: Final = 20


@dataclass(frozen=True)
class Slo:
    """Service level objective of ``[slo]``; a term left out of the spec is ``None`` (not checked).

    Attributes:
        ttft_p95_s: Upper bound of the 95th percentile of time to first token.
        tpot_p95_s: Upper bound of the 95th percentile of time per output token.
        e2e_p95_s: Upper bound of the 95th percentile of end-to-end latency.
        max_error_rate: Upper bound of the fraction of failed requests.
    """

    ttft_p95_s: float | None = None
    tpot_p95_s: float | None = None
    e2e_p95_s: float | None = None
    max_error_rate: float | None = None

    def describe(self) -> str:
        """One line naming every checked term, e.g. ``TTFT p95 ≤ 1 s, error rate ≤ 1%``."""
        parts = []
        if self.ttft_p95_s is not None:
            parts.append(f"TTFT p95 ≤ {self.ttft_p95_s:g} s")
        if self.tpot_p95_s is not None:
            parts.append(f"TPOT p95 ≤ {self.tpot_p95_s:g} s")
        if self.e2e_p95_s is not None:
            parts.append(f"E2E p95 ≤ {self.e2e_p95_s:g} s")
        if self.max_error_rate is not None:
            parts.append(f"error rate ≤ {self.max_error_rate:.2%}")
        return ", ".join(parts) if parts else "no SLO given"


@dataclass(frozen=True)
class RunSpec:
    """The parts of ``spec.toml`` a report uses, plus the raw text for the environment block.

    Attributes:
        name: ``[run] name``.
        text: The spec exactly as stored in the run directory.
        data: The parsed TOML.
        slo: ``[slo]``.
        target_rps: ``[report] target_rps`` or ``None``.
        lag_threshold_s: Open-loop p95 schedule lag above which a point is invalid.
        min_samples: Fewer successful requests than this make a point invalid.
        duration_s: Measured window per point.
        warmup_s: Warm-up before the measured window.
        max_requests: Per-point request cap (``None`` when unbounded).
        request_timeout_s: Client timeout of one request.
        balance: How requests were spread over replicas.
        target_kind: ``local`` or ``remote``.
        engine: ``ctranslate2`` or ``fake``.
    """

    name: str
    text: str
    data: dict[str, Any]
    slo: Slo
    target_rps: float | None
    lag_threshold_s: float = DEFAULT_LAG_THRESHOLD_S
    min_samples: int = DEFAULT_MIN_SAMPLES
    duration_s: float | None = None
    warmup_s: float = 0.0
    max_requests: int | None = None
    request_timeout_s: float = 120.0
    balance: str = "least_outstanding"
    target_kind: str = "local"
    engine: str = "ctranslate2"


@dataclass
class Run:
    """Everything one run directory holds.

    Attributes:
        path: The run directory.
        spec: Its spec.
        environment: ``environment.json`` (empty when absent).
        points: ``points.csv`` plus :attr:`Rpt.CONFIG` and :attr:`Rpt.BASE_CONFIG`.
        requests: Raw request rows of every point.
        server: Server metric deltas of every point.
    """

    path: Path
    spec: RunSpec
    environment: dict[str, Any]
    points: pd.DataFrame
    requests: pd.DataFrame
    server: pd.DataFrame

    @property
    def name(self) -> str:
        """The spec's run name, or the directory name when the spec has none."""
        return self.spec.name or self.path.name


def _opt_float(table: dict[str, Any], key: str) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    out = float(value)
    return out if math.isfinite(out) and out > 0 else None


def parse_spec(text: str) -> RunSpec:
    """Parse the spec format of ``loadgen/examples/sweep.toml``.

    Args:
        text: TOML text.

    Returns:
        The report's view of the spec; absent keys take the harness defaults.

    Raises:
        tomllib.TOMLDecodeError: The text is not TOML.
    """
    data = tomllib.loads(text)
    run = data.get("run", {})
    slo_t = data.get("slo", {})
    rep = data.get("report", {})
    target = data.get("target", {})
    max_error = slo_t.get("max_error_rate")
    max_requests = run.get("max_requests")
    duration = run.get("duration_s")
    return RunSpec(
        name=str(run.get("name", "")),
        text=text,
        data=data,
        slo=Slo(
            ttft_p95_s=_opt_float(slo_t, "ttft_p95_s"),
            tpot_p95_s=_opt_float(slo_t, "tpot_p95_s"),
            e2e_p95_s=_opt_float(slo_t, "e2e_p95_s"),
            max_error_rate=None if max_error is None else float(max_error),
        ),
        target_rps=_opt_float(rep, "target_rps"),
        lag_threshold_s=float(run.get("lag_threshold_s", DEFAULT_LAG_THRESHOLD_S)),
        min_samples=int(run.get("min_samples", DEFAULT_MIN_SAMPLES)),
        duration_s=None if duration is None else float(duration),
        warmup_s=float(run.get("warmup_s", 0.0)),
        max_requests=None if not max_requests else int(max_requests),
        request_timeout_s=float(run.get("request_timeout_s", 120.0)),
        balance=str(target.get("balance", "least_outstanding")),
        target_kind=str(target.get("kind", "local")),
        engine=str(target.get("engine", "ctranslate2")),
    )


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def base_config_label(row: pd.Series | dict[str, Any]) -> str:
    """Label of what one replica runs: quantization, batch size/delay, workers, threads.

    Args:
        row: A points row.

    Returns:
        For example ``int8 b8 d5ms w1 t1``.
    """
    quant = row.get(Point.QUANTIZATION)
    quant_s = "?" if quant is None or (isinstance(quant, float) and math.isnan(quant)) else quant
    parts = [str(quant_s)]
    for prefix, col, suffix in (
        ("b", Point.MAX_BATCH_SIZE, ""),
        ("d", Point.MAX_BATCH_DELAY_MS, "ms"),
        ("w", Point.BATCH_WORKERS, ""),
        ("t", Point.INTRA_THREADS, ""),
    ):
        v = _num(row.get(col))
        if math.isfinite(v):
            parts.append(f"{prefix}{v:g}{suffix}")
    return " ".join(parts)


def config_label(row: pd.Series | dict[str, Any]) -> str:
    """Label of a whole server configuration: :func:`base_config_label` and the replica count.

    Args:
        row: A points row.

    Returns:
        For example ``int8 b8 d5ms w1 t1 ×2``.
    """
    replicas = _num(row.get(Point.REPLICAS))
    n = int(replicas) if math.isfinite(replicas) else 1
    return f"{base_config_label(row)} ×{n}"


def load_run(path: Path | str) -> Run:
    """Read a run directory.

    Args:
        path: A directory written by ``tokenbooth sweep`` (:class:`loadgen.results.RunDir`).

    Returns:
        The run, with configuration labels added to its points.

    Raises:
        FileNotFoundError: ``path`` has no ``points.csv`` or no ``spec.toml``.
    """
    rd = RunDir(path)
    for name in (POINTS_FILE, SPEC_FILE):
        if not (rd.path / name).exists():
            raise FileNotFoundError(f"{rd.path} is not a run directory: {name} is missing")
    return Run(
        path=rd.path,
        spec=parse_spec(rd.spec_text()),
        environment=rd.environment(),
        points=prepare_points(rd.points()),
        requests=rd.requests(),
        server=rd.server(),
    )


def prepare_points(points: pd.DataFrame) -> pd.DataFrame:
    """Normalise ``points.csv`` types and add the :attr:`Rpt.CONFIG`/:attr:`Rpt.BASE_CONFIG` labels.

    Args:
        points: ``RunDir.points()``.

    Returns:
        A new frame.
    """
    points = points.copy()
    for c in POINT_COLUMNS:
        if c not in points.columns:
            points[c] = math.nan
    points[Point.CONFIG_ID] = points[Point.CONFIG_ID].astype(str)
    points[Point.REPLICAS] = pd.to_numeric(points[Point.REPLICAS], errors="coerce").fillna(1)
    points[Point.REPLICAS] = points[Point.REPLICAS].astype(int)
    for c in (Point.QUANTIZATION, Point.LOAD_MODE, Point.ARRIVAL, Point.STATUS):
        points[c] = points[c].fillna("").astype(str)
    points[Rpt.CONFIG] = [config_label(r) for _, r in points.iterrows()]
    if points[Point.LOAD_MODE].nunique() > 1:
        # A configuration swept both ways gives two curves, never one mixed curve.
        points[Rpt.CONFIG] = points[Rpt.CONFIG] + " · " + points[Point.LOAD_MODE]
    points[Rpt.BASE_CONFIG] = [base_config_label(r) for _, r in points.iterrows()]
    return points.reset_index(drop=True)
