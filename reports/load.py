"""Read one run directory (through :mod:`loadgen.results`) and its spec into plain objects.

``reports`` never talks to a live service: everything a report says comes from the files a sweep
left behind. Columns are the :mod:`loadgen.results` constants; the few columns the report
derives itself are named once here, in :class:`Rpt`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
from loadgen.spec import SweepSpec, parse_spec
from loadgen.summary import Stat
from service.errors import TokenboothError
from service.settings import BATCH_POLICIES, TRITON_POLICY

__all__ = [
    "Rpt",
    "Run",
    "RunDirError",
    "base_config_id",
    "base_config_label",
    "batch_policy",
    "config_label",
    "load_run",
    "prepare_points",
    "spare_workers",
]


class Rpt(Stat):
    """Columns the report derives (never written back into a run directory).

    It extends :class:`loadgen.summary.Stat`, the statistics both harness and report compute.
    """

    # Keys: what the report groups, matches and looks up by; built from typed columns only.
    CONFIG_KEY: Final = "config_key"  # config_id, plus the load mode when a run swept both
    BASE_CONFIG_ID: Final = "base_config_id"  # what one replica runs (base_config_id())
    # Labels: for display only, one per key.
    CONFIG: Final = "config"  # human label of the server configuration incl. replicas
    BASE_CONFIG: Final = "base_config"  # the same without replicas: what a replica runs
    SLO_PASS: Final = "slo_pass"
    SLO_FAIL: Final = "slo_fail"  # which SLO terms failed, "" when passing
    N_POINTS: Final = "n_points"  # repeats pooled into one load level
    POINT_IDS: Final = "point_ids"
    CPU_THREADS: Final = "cpu_threads"  # replicas x batch workers x intra threads
    OPEN_LOOP: Final = "open_loop"  # the point followed an arrival schedule (else closed loop)
    SYNCHRONISED: Final = "synchronised"  # closed loop whose users sent in lockstep

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


@dataclass
class Run:
    """Everything one run directory holds.

    Attributes:
        path: The run directory.
        spec: Its spec, parsed by the harness's own parser (the same defaults the sweep ran with).
        environment: ``environment.json`` (empty when absent).
        points: ``points.csv`` plus the configuration keys and labels (:func:`prepare_points`).
        requests: Raw request rows of every point.
        server: Server metric deltas of every point.
        timeslices: Per-interval figures of every point (``timeslices.parquet``; empty when
            the run has none).
        search: ``search.json`` of an SLO-edge search, per configuration id (empty: none).
    """

    path: Path
    spec: SweepSpec
    environment: dict[str, Any]
    points: pd.DataFrame
    requests: pd.DataFrame
    server: pd.DataFrame
    timeslices: pd.DataFrame = field(default_factory=pd.DataFrame)
    search: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The spec's run name, or the directory name when the spec has none."""
        return self.spec.run.name or self.path.name


class RunDirError(TokenboothError):
    """A run directory holds a value the report cannot interpret (named in the message)."""


def spare_workers(row: pd.Series | dict[str, Any]) -> int:
    """Spare batch workers a point's replicas ran (0 for runs from before they existed)."""
    v = _num(row.get(Point.SPARE_WORKERS))
    return int(v) if math.isfinite(v) else 0


def batch_policy(row: pd.Series | dict[str, Any]) -> str:
    """The batch formation policy a point's replicas ran (``service.settings.BATCH_POLICIES``).

    Runs from before the service had policies have no value: they ran the Triton policy, the
    only one there was (and still the default).

    Args:
        row: A points row.

    Returns:
        The policy.

    Raises:
        RunDirError: The row names a policy the service does not have.
    """
    value = row.get(Point.BATCH_POLICY)
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return TRITON_POLICY
    if value not in BATCH_POLICIES:
        raise RunDirError(
            f"unknown batch_policy {value!r} in points.csv (config "
            f"{row.get(Point.CONFIG_ID)!r}); the service's policies are {', '.join(BATCH_POLICIES)}"
        )
    return str(value)


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _exact(value: Any) -> str:
    v = _num(value)
    if not math.isfinite(v):
        return "?"
    return str(int(v)) if v.is_integer() else repr(v)


def base_config_id(row: pd.Series | dict[str, Any]) -> str:
    """Key of what one replica runs: every server setting of a point except the replica count.

    Spelled like :attr:`loadgen.spec.ServerConfig.config_id` without its replica part, from the
    typed columns, with numbers written exactly: settings that a label rounds together stay
    apart.

    Args:
        row: A points row.

    Returns:
        For example ``b8-d5-w1-t1-int8``, or ``b8-d5-w1-t1-int8-adaptive`` (the default
        policy adds nothing, as in the config id).

    Raises:
        RunDirError: The row names an unknown batch policy.
    """
    quant = row.get(Point.QUANTIZATION)
    missing = quant is None or (isinstance(quant, float) and math.isnan(quant))
    parts = [
        f"{prefix}{_exact(row.get(col))}"
        for prefix, col in (
            ("b", Point.MAX_BATCH_SIZE),
            ("d", Point.MAX_BATCH_DELAY_MS),
            ("w", Point.BATCH_WORKERS),
            ("t", Point.INTRA_THREADS),
        )
    ]
    spare = spare_workers(row)
    if spare:  # after the workers, as in the config id; none adds nothing
        parts.insert(3, f"s{spare}")
    policy = batch_policy(row)
    suffix = [] if policy == TRITON_POLICY else [policy]
    return "-".join([*parts, "?" if missing else str(quant), *suffix])


def base_config_label(row: pd.Series | dict[str, Any]) -> str:
    """Label of what one replica runs: quantization, batch size/delay, workers, threads.

    Args:
        row: A points row.

    Returns:
        For example ``int8 b8 d5ms w1 t1``, or ``int8 b8 d5ms w1 t1 adaptive`` (the default
        batch policy is not named).

    Raises:
        RunDirError: The row names an unknown batch policy.
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
            if col == Point.BATCH_WORKERS and spare_workers(row):
                parts.append(f"+{spare_workers(row)} spare")
    policy = batch_policy(row)
    if policy != TRITON_POLICY:
        parts.append(policy)
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
        spec=parse_spec(rd.spec_text(), str(rd.path / SPEC_FILE), check_files=False),
        environment=rd.environment(),
        points=prepare_points(rd.points()),
        requests=rd.requests(),
        server=rd.server(),
        timeslices=rd.timeslices(),
        search=rd.search(),
    )


def _one_label_per_key(points: pd.DataFrame, label: str, key: str) -> None:
    """A label several keys share (a label rounds, a key does not) gets its key appended."""
    shared = points.groupby(label)[key].transform("nunique") > 1
    points.loc[shared, label] = points.loc[shared, label] + " [" + points.loc[shared, key] + "]"


def prepare_points(points: pd.DataFrame) -> pd.DataFrame:
    """Normalise ``points.csv`` types and add the configuration keys and their labels.

    :attr:`Rpt.CONFIG_KEY` is the harness's ``config_id`` (exact: the sweep keys its points by
    it too) and :attr:`Rpt.BASE_CONFIG_ID` comes from the typed server columns;
    :attr:`Rpt.CONFIG` and :attr:`Rpt.BASE_CONFIG` are their display labels, unique per key.

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
    points[Rpt.CONFIG_KEY] = points[Point.CONFIG_ID]
    points[Rpt.CONFIG] = [config_label(r) for _, r in points.iterrows()]
    if points[Point.LOAD_MODE].nunique() > 1:
        # A configuration swept both ways gives two curves, never one mixed curve.
        points[Rpt.CONFIG_KEY] = points[Rpt.CONFIG_KEY] + " · " + points[Point.LOAD_MODE]
        points[Rpt.CONFIG] = points[Rpt.CONFIG] + " · " + points[Point.LOAD_MODE]
    points[Rpt.BASE_CONFIG_ID] = [base_config_id(r) for _, r in points.iterrows()]
    points[Rpt.BASE_CONFIG] = [base_config_label(r) for _, r in points.iterrows()]
    if len(points):
        _one_label_per_key(points, Rpt.CONFIG, Rpt.CONFIG_KEY)
        _one_label_per_key(points, Rpt.BASE_CONFIG, Rpt.BASE_CONFIG_ID)
    return points.reset_index(drop=True)
