"""Point statistics, validity, knees and SLO capacity, computed from raw request rows.

Percentiles are exact (numpy's linear interpolation between order statistics of every sample),
never re-read from rounded summaries. Each percentile comes with its sample count and a seeded
bootstrap confidence interval. Capacity figures use valid points only; invalid points keep their
row and say why they were excluded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from loadgen.results import Col, Point
from loadgen.spec import SLOSpec, SweepSpec
from loadgen.summary import (
    BOOTSTRAP_RESAMPLES,
    SERVER_VIEW_COLUMNS,
    finite,
    gaps,
    point_reasons,
    server_summary,
    slo_check,
    slo_terms,
    summarize_requests,
    synchronised,
    synchrony,
)
from reports.load import Rpt, Run

__all__ = [
    "CAPACITY_INTERPOLATION",
    "KNEE_METHOD",
    "STAGE_NOTE",
    "Analysis",
    "Capacity",
    "Knee",
    "analyze",
    "find_knee",
    "is_open_loop",
    "is_stage",
    "point_validity",
    "slo_capacity",
    "slo_check",
]

KNEE_MIN_GAIN: Final = 0.2
"""Smallest Kneedle difference (normalised throughput minus normalised latency) called a knee."""

KNEE_METHOD: Final = (
    "Kneedle (Satopää et al., 2011): achieved requests/s and TTFT p95 of the valid points, in "
    "load order, are min-max normalised to [0, 1]; the knee is the point maximising normalised "
    f"throughput minus normalised TTFT p95, reported when that difference is at least "
    f"{KNEE_MIN_GAIN:g} and the point is not the last one measured."
)
CAPACITY_INTERPOLATION: Final = (
    "Linear interpolation between the last passing and the first failing measured load level "
    "(in load order), of each violated SLO metric against achieved requests/s and against the "
    "load level; the binding metric is the one crossing its limit first. Open-loop concurrency "
    "is the mean number of requests in flight by Little's law (achieved requests/s x mean E2E)."
)
FloatArray = npt.NDArray[np.float64]


STAGE_NOTE: Final = "not computed for a stage profile (stages are not steady load levels)"
"""Why a configuration measured only in ``[load] stages`` has no knee or SLO capacity: each
stage meets the queue the one before left; knee, capacity and model use steady points only."""


def is_stage(frame: pd.DataFrame) -> pd.Series:
    """Which rows (points or levels) are stages of a ``[load] stages`` profile."""
    if Point.STAGE not in frame.columns:
        return pd.Series(False, index=frame.index)
    return pd.to_numeric(frame[Point.STAGE], errors="coerce").notna()


# ------------------------------------------------------------------------------ validity


def is_open_loop(row: pd.Series | dict[str, Any]) -> bool:
    """Whether a point (or level) followed an arrival schedule rather than closed-loop users."""
    return str(row.get(Point.LOAD_MODE, "")) == "rate" or str(row.get(Point.ARRIVAL, "")) in (
        "constant",
        "poisson",
        "gamma",
        "trace",
    )


def point_validity(row: pd.Series, *, lag_threshold_s: float, min_samples: int) -> str:
    """Why a point cannot be used for capacity figures; ``""`` when it can.

    Checks the point's status, the number of successful requests, a majority of failed
    requests, open-loop schedule lag (a load generator that fell behind did not offer the
    stated load), a load generator flagged as the bottleneck, and the harness's own verdict.

    Args:
        row: A point row with recomputed statistics.
        lag_threshold_s: Largest acceptable open-loop p95 schedule lag.
        min_samples: Fewest successful requests a point needs.

    Returns:
        The reasons, ``"; "``-joined.
    """
    reasons = point_reasons(
        row,
        open_loop=is_open_loop(row),
        lag_threshold_s=lag_threshold_s,
        min_samples=min_samples,
    )
    return "; ".join(reasons)


# ------------------------------------------------------------------------------ knee / capacity


@dataclass(frozen=True)
class Knee:
    """The knee of one configuration's latency-throughput curve.

    Attributes:
        found: Whether a knee was detected (see :data:`KNEE_METHOD`).
        load_level: Load level of the knee point.
        achieved_rps: Throughput at the knee.
        output_tokens_per_s: Output tokens/s at the knee.
        ttft_p95_s: TTFT p95 at the knee.
        note: Why no knee was reported, or ``""``.
        method: The method, named.
    """

    found: bool
    load_level: float = math.nan
    achieved_rps: float = math.nan
    output_tokens_per_s: float = math.nan
    ttft_p95_s: float = math.nan
    note: str = ""
    method: str = KNEE_METHOD


def find_knee(levels: pd.DataFrame, *, latency: str = Point.TTFT_P95_S) -> Knee:
    """Detect the knee of one configuration (method: :data:`KNEE_METHOD`).

    Args:
        levels: Valid load levels of one configuration.
        latency: Tail latency column to watch.

    Returns:
        The knee, or ``found=False`` with the reason.
    """
    if levels.empty:
        return Knee(False, note="no valid load levels")
    d = levels.sort_values(Point.LOAD_LEVEL)
    rps = pd.to_numeric(d[Point.ACHIEVED_RPS], errors="coerce")
    lat = pd.to_numeric(d[latency], errors="coerce")
    d = d[np.isfinite(rps) & np.isfinite(lat)]
    if len(d) < 3:
        return Knee(False, note=f"needs at least 3 valid load levels, has {len(d)}")
    x = d[Point.ACHIEVED_RPS].to_numpy(dtype=float)
    y = d[latency].to_numpy(dtype=float)
    xr, yr = x.max() - x.min(), y.max() - y.min()
    if xr <= 0:
        return Knee(False, note="throughput did not change across load levels")
    if yr <= 0.05 * max(float(y.min()), 1e-9):
        return Knee(False, note="tail latency flat across the measured range: knee not reached")
    gain = (x - x.min()) / xr - (y - y.min()) / yr
    i = int(np.argmax(gain))
    if i == len(d) - 1 or gain[i] < KNEE_MIN_GAIN:
        return Knee(False, note="no sharp turn in tail latency within the measured range")
    row = d.iloc[i]
    return Knee(
        True,
        load_level=float(row[Point.LOAD_LEVEL]),
        achieved_rps=float(row[Point.ACHIEVED_RPS]),
        output_tokens_per_s=float(row[Point.OUTPUT_TOKENS_PER_S]),
        ttft_p95_s=float(row[latency]),
    )


@dataclass(frozen=True)
class Capacity:
    """Highest load of one configuration that meets the SLO.

    Attributes:
        status: ``interpolated`` (crossing between two measured levels), ``not_reached`` (every
            valid level passed: the figures are a lower bound), ``below_range`` (even the lowest
            level failed) or ``no_data``.
        rate_rps: Sustainable requests/s (achieved), NaN when ``below_range``/``no_data``.
        output_tokens_per_s: Output tokens/s at that rate.
        load_level: Sustainable load level (concurrency or offered requests/s).
        concurrency: Sustainable concurrency (closed loop: users; open loop: Little's law).
        limiting: The SLO term that binds, ``""`` when none did.
        between: Load levels the crossing lies between.
        note: Caveats, e.g. a level passing again above the first failure.
        interpolation: How the value was obtained.
        rate_ci: The same interpolation on the percentiles' 95% bootstrap bounds
            (optimistic, pessimistic), ``None`` without CIs; 0 where a bound fails everywhere.
    """

    status: str
    rate_rps: float = math.nan
    output_tokens_per_s: float = math.nan
    load_level: float = math.nan
    concurrency: float = math.nan
    limiting: str = ""
    between: tuple[float, float] | None = None
    note: str = ""
    interpolation: str = CAPACITY_INTERPOLATION
    rate_ci: tuple[float, float] | None = None

    @property
    def usable(self) -> bool:
        """Whether :attr:`rate_rps` is a number a recommendation can rely on."""
        return self.status in ("interpolated", "not_reached") and math.isfinite(self.rate_rps)

    def describe(self) -> str:
        """A short human reading, e.g. ``5.00 req/s (TTFT p95 binds between 4 and 6)``."""
        if self.status == "no_data":
            return self.note or "no valid points"
        if self.status == "below_range":
            return f"below the lowest level measured ({self.limiting} fails there)"
        if self.status == "not_reached":
            return f"≥ {self.rate_rps:.3g} req/s (SLO met at every level measured)"
        lo, hi = self.between or (math.nan, math.nan)
        ci = f" [95% CI {self.rate_ci[0]:.3g}–{self.rate_ci[1]:.3g}]" if self.rate_ci else ""
        return f"{self.rate_rps:.3g} req/s{ci} ({self.limiting} binds between {lo:g} and {hi:g})"


_CI_BOUNDS: Final[dict[str, tuple[str, str]]] = {
    # metric column: (optimistic bound, pessimistic bound)
    Point.TTFT_P95_S: (Rpt.TTFT_P95_LO, Rpt.TTFT_P95_HI),
    Point.TPOT_P95_S: (Rpt.TPOT_P95_LO, Rpt.TPOT_P95_HI),
    Point.E2E_P95_S: (Rpt.E2E_P95_LO, Rpt.E2E_P95_HI),
}


def slo_capacity(levels: pd.DataFrame, slo: SLOSpec) -> Capacity:
    """Interpolate the highest load meeting the SLO (method: :data:`CAPACITY_INTERPOLATION`).

    The same interpolation on the bootstrap bounds of each percentile (lower bounds: the
    optimistic end, upper bounds: the pessimistic end) gives :attr:`Capacity.rate_ci`.

    Args:
        levels: Valid load levels of one configuration with :attr:`Rpt.SLO_PASS`.
        slo: The objective.

    Returns:
        The capacity.
    """
    d = levels.sort_values(Point.LOAD_LEVEL).reset_index(drop=True)
    if d.empty:
        return Capacity("no_data")
    cap = _crossing(d, slo, {})
    bounds = []
    for side in (0, 1):
        cols = {m: pair[side] for m, pair in _CI_BOUNDS.items() if pair[side] in d.columns}
        if not cols or d[list(cols.values())].isna().all().all():
            return cap
        bound = _crossing(d, slo, cols)
        bounds.append(bound.rate_rps if bound.usable else 0.0)
    lo, hi = min(bounds), max(bounds)
    return replace(cap, rate_ci=(lo, hi))


def _crossing(d: pd.DataFrame, slo: SLOSpec, use: dict[str, str]) -> Capacity:
    """The first SLO crossing, reading each metric from ``use.get(metric, metric)``."""
    closed = not is_open_loop(d.iloc[0])
    terms = [(limit, use.get(col, col), label) for limit, col, label in slo_terms(slo)]
    failed = [
        ", ".join(label for limit, col, label in terms if not (float(row[col]) <= limit))
        for _, row in d.iterrows()
    ]
    passes = np.asarray([not f for f in failed])
    fails = np.flatnonzero(~passes)

    def conc(row: pd.Series) -> float:
        return float(row[Point.LOAD_LEVEL]) if closed else float(row[Rpt.IN_FLIGHT_MEAN])

    if fails.size == 0:
        last = d.iloc[-1]
        return Capacity(
            "not_reached",
            rate_rps=float(last[Point.ACHIEVED_RPS]),
            output_tokens_per_s=float(last[Point.OUTPUT_TOKENS_PER_S]),
            load_level=float(last[Point.LOAD_LEVEL]),
            concurrency=conc(last),
        )
    f = int(fails[0])
    b = d.iloc[f]
    if f == 0:
        return Capacity("below_range", limiting=failed[0])
    a = d.iloc[f - 1]
    best_frac, limiting = 1.0, ""
    for limit, col, label in terms:
        ma, mb = float(a[col]), float(b[col])
        if mb <= limit:
            continue
        frac = (limit - ma) / (mb - ma) if math.isfinite(mb) and mb > ma else 0.0
        frac = min(max(frac, 0.0), 1.0)
        if frac < best_frac or not limiting:
            best_frac, limiting = frac, label

    def lerp(col: str) -> float:
        return float(a[col]) + best_frac * (float(b[col]) - float(a[col]))

    note = ""
    if passes[f + 1 :].any():
        note = "a higher level passed again; the first crossing is used"
    return Capacity(
        "interpolated",
        rate_rps=lerp(Point.ACHIEVED_RPS),
        output_tokens_per_s=lerp(Point.OUTPUT_TOKENS_PER_S),
        load_level=lerp(Point.LOAD_LEVEL),
        concurrency=lerp(Point.LOAD_LEVEL) if closed else lerp(Rpt.IN_FLIGHT_MEAN),
        limiting=limiting,
        between=(float(a[Point.LOAD_LEVEL]), float(b[Point.LOAD_LEVEL])),
        note=note,
    )


# ------------------------------------------------------------------------------ whole run

_CONFIG_COLUMNS: Final[tuple[str, ...]] = (
    Rpt.CONFIG_KEY,
    Rpt.BASE_CONFIG_ID,
    Rpt.CONFIG,
    Rpt.BASE_CONFIG,
    Point.CONFIG_ID,
    Point.REPLICAS,
    Point.MAX_BATCH_SIZE,
    Point.MAX_BATCH_DELAY_MS,
    Point.BATCH_WORKERS,
    Point.INTRA_THREADS,
    Point.QUANTIZATION,
    Point.LOAD_MODE,
    Point.ARRIVAL,
    Point.LOAD_LEVEL,
)


@dataclass
class Analysis:
    """A run's statistics: every point, pooled valid load levels, knees and SLO capacity.

    Attributes:
        run: The run.
        points: One row per point (valid or not) with recomputed statistics, validity and SLO.
        levels: Valid points pooled per configuration and load level (repeats merged).
        knees: Per configuration key (:attr:`Rpt.CONFIG_KEY`), in label order.
        capacity: Per configuration key, in label order.
    """

    run: Run
    points: pd.DataFrame
    levels: pd.DataFrame
    knees: dict[str, Knee]
    capacity: dict[str, Capacity]

    @property
    def slo(self) -> SLOSpec:
        """The run's SLO."""
        return self.run.spec.slo

    @property
    def has_open_loop(self) -> bool:
        """Whether any point of the run was open loop (then capacity answers rest on those)."""
        return bool(len(self.points) and self.points[Rpt.OPEN_LOOP].any())

    def label(self, config_key: str) -> str:
        """The display label of a configuration key (the key itself when the run lacks it)."""
        hit = self.points[self.points[Rpt.CONFIG_KEY] == config_key]
        return str(hit[Rpt.CONFIG].iloc[0]) if len(hit) else config_key

    def samples(self, config_key: str, load_level: float, column: str) -> FloatArray:
        """Raw samples of one request column over the valid points of one load level.

        Args:
            config_key: Configuration key (:attr:`Rpt.CONFIG_KEY`).
            load_level: Load level.
            column: A :class:`loadgen.results.Col` column; :attr:`Col.ITL_S` is flattened into
                every inter-token gap.

        Returns:
            Finite samples of successful requests.
        """
        lv = self.levels
        if lv.empty or self.run.requests.empty:
            return np.empty(0)
        hit = lv[(lv[Rpt.CONFIG_KEY] == config_key) & np.isclose(lv[Point.LOAD_LEVEL], load_level)]
        if hit.empty:
            return np.empty(0)
        ids = [int(i) for i in str(hit.iloc[0][Rpt.POINT_IDS]).split(",") if i]
        reqs = self.run.requests
        sub = reqs[reqs[Col.POINT_ID].isin(ids) & reqs[Col.OK].fillna(False).astype(bool)]
        return gaps(sub[column]) if column == Col.ITL_S else finite(sub[column])

    def capacity_table(self) -> pd.DataFrame:
        """Per configuration: knee, SLO capacity, error rate and point counts.

        Returns:
            One row per configuration key, in label order.
        """
        rows = []
        for (label, key), group in self.points.groupby([Rpt.CONFIG, Rpt.CONFIG_KEY], sort=True):
            lv = self.levels[self.levels[Rpt.CONFIG_KEY] == key]
            knee = self.knees[str(key)]
            cap = self.capacity[str(key)]
            n_req = float(group[Point.N_REQUESTS].sum())
            rows.append(
                {
                    Rpt.CONFIG_KEY: key,
                    Rpt.BASE_CONFIG_ID: group[Rpt.BASE_CONFIG_ID].iloc[0],
                    Rpt.CONFIG: label,
                    Rpt.BASE_CONFIG: group[Rpt.BASE_CONFIG].iloc[0],
                    Point.REPLICAS: int(group[Point.REPLICAS].iloc[0]),
                    Point.QUANTIZATION: group[Point.QUANTIZATION].iloc[0],
                    Point.LOAD_MODE: group[Point.LOAD_MODE].iloc[0],
                    Rpt.N_POINTS_TOTAL: len(group),
                    Rpt.N_VALID: int(group[Point.VALID].sum()),
                    Rpt.KNEE_FOUND: knee.found,
                    Rpt.KNEE_LOAD_LEVEL: knee.load_level,
                    Rpt.KNEE_RPS: knee.achieved_rps,
                    Rpt.KNEE_OUTPUT_TOKENS_PER_S: knee.output_tokens_per_s,
                    Rpt.KNEE_TTFT_P95_S: knee.ttft_p95_s,
                    Rpt.KNEE_NOTE: knee.note,
                    Rpt.CAPACITY_STATUS: cap.status,
                    Rpt.CAPACITY_RPS: cap.rate_rps,
                    Rpt.CAPACITY_RPS_CI_LO: cap.rate_ci[0] if cap.rate_ci else math.nan,
                    Rpt.CAPACITY_RPS_CI_HI: cap.rate_ci[1] if cap.rate_ci else math.nan,
                    Rpt.CAPACITY_OUTPUT_TOKENS_PER_S: cap.output_tokens_per_s,
                    Rpt.CAPACITY_LOAD_LEVEL: cap.load_level,
                    Rpt.CAPACITY_CONCURRENCY: cap.concurrency,
                    Rpt.CAPACITY_LIMITING: cap.limiting,
                    Rpt.CAPACITY_NOTE: cap.note,
                    Rpt.PEAK_RPS: float(lv[Point.ACHIEVED_RPS].max()) if len(lv) else math.nan,
                    Point.ERROR_RATE: float(group[Point.N_ERRORS].sum()) / n_req
                    if n_req
                    else math.nan,
                }
            )
        return pd.DataFrame(rows)


def _with_server(stats: dict[str, Any], run: Run, ids: list[int], rows: pd.DataFrame) -> None:
    means = server_summary(run.server, ids)
    for col in SERVER_VIEW_COLUMNS:
        if col in means:
            stats[col] = means[col]
        else:  # no scraped deltas: the harness's own means, if it wrote any
            vals = pd.to_numeric(rows[col], errors="coerce") if col in rows else pd.Series()
            stats[col] = float(vals.mean()) if vals.notna().any() else math.nan
    stats[Rpt.GPU_MEMORY_USED_BYTES] = means.get(Rpt.GPU_MEMORY_USED_BYTES, math.nan)


_Requests = dict[int, pd.DataFrame]


def _point_rows(run: Run, req_by_point: _Requests, n_resamples: int, seed: int) -> pd.DataFrame:
    """One row per point: the harness's row with every statistic recomputed from raw rows."""
    empty = run.requests.iloc[0:0]
    rows = []
    for _, p in run.points.iterrows():
        pid = int(p[Point.POINT_ID])
        reqs = req_by_point.get(pid, empty)
        base = p.to_dict()
        if len(reqs):
            stats = summarize_requests(
                reqs,
                float(p[Point.DURATION_S]),
                n_resamples=n_resamples,
                seed=seed,
                slo=run.spec.slo,
            )
            base.update(stats)
            base.update(synchrony(finite(reqs[Col.SENT_AT])))
        else:
            # No raw rows: the harness's summary stands, without CIs or sample counts.
            for c in (Rpt.N_TTFT, Rpt.N_ITL, Rpt.N_TPOT, Rpt.N_E2E):
                base[c] = 0
        frame = run.points[run.points[Point.POINT_ID] == pid]
        _with_server(base, run, [pid], frame)
        rows.append(base)
    points = pd.DataFrame(rows)
    return run.points.copy() if points.empty else points


def _judge_points(points: pd.DataFrame, spec: SweepSpec) -> None:
    """Validity, SLO verdict and CPU threads of every point, in place."""
    reasons = [
        point_validity(
            r, lag_threshold_s=spec.run.lag_threshold_s, min_samples=spec.run.min_samples
        )
        for _, r in points.iterrows()
    ]
    points[Point.INVALID_REASON] = reasons
    points[Point.VALID] = [not r for r in reasons]
    points[Rpt.SLO_FAIL] = [slo_check(r, spec.slo) for _, r in points.iterrows()]
    points[Rpt.SLO_PASS] = points[Rpt.SLO_FAIL] == ""
    points[Rpt.OPEN_LOOP] = [is_open_loop(r) for _, r in points.iterrows()]
    share = pd.to_numeric(points[Point.SYNC_SHARE], errors="coerce")
    expected = pd.to_numeric(points[Point.SYNC_SHARE_POISSON], errors="coerce")
    points[Rpt.SYNCHRONISED] = [
        not open_loop and synchronised(float(a), float(b))
        for open_loop, a, b in zip(points[Rpt.OPEN_LOOP], share, expected, strict=True)
    ]
    points[Rpt.CPU_THREADS] = (
        points[Point.REPLICAS]
        * pd.to_numeric(points[Point.BATCH_WORKERS], errors="coerce").fillna(1)
        * pd.to_numeric(points[Point.INTRA_THREADS], errors="coerce").fillna(1)
    )


def _level_row(
    run: Run, group: pd.DataFrame, req_by_point: _Requests, n_resamples: int, seed: int
) -> dict[str, Any]:
    """The valid repeats of one configuration and load level, pooled into one row."""
    ids = [int(i) for i in group[Point.POINT_ID]]
    first = group.iloc[0]
    row: dict[str, Any] = {c: first.get(c) for c in _CONFIG_COLUMNS}
    reqs_list = [req_by_point[i] for i in ids if i in req_by_point]
    if reqs_list:
        duration = float(pd.to_numeric(group[Point.DURATION_S], errors="coerce").sum())
        row.update(
            summarize_requests(
                pd.concat(reqs_list, ignore_index=True),
                duration,
                n_resamples=n_resamples,
                seed=seed,
                slo=run.spec.slo,
            )
        )
    else:
        for c in group.columns:
            if c not in row and pd.api.types.is_numeric_dtype(group[c]):
                row[c] = float(group[c].mean())
    row[Point.OFFERED_RPS] = float(pd.to_numeric(group[Point.OFFERED_RPS]).mean())
    for col in (Point.STAGE, Point.STAGE_LEVEL_FROM, Point.STAGE_LEVEL_TO):  # one stage's repeats
        row[col] = float(pd.to_numeric(group[col], errors="coerce").iloc[0])
    sessions = pd.to_numeric(group[Point.OFFERED_SESSIONS_PER_S], errors="coerce")
    row[Point.OFFERED_SESSIONS_PER_S] = float(sessions.mean())
    _with_server(row, run, ids, group)
    row[Rpt.N_POINTS] = len(ids)
    row[Rpt.POINT_IDS] = ",".join(str(i) for i in ids)
    row[Rpt.CPU_THREADS] = float(first[Rpt.CPU_THREADS])
    return row


def _levels(
    run: Run, points: pd.DataFrame, req_by_point: _Requests, n_resamples: int, seed: int
) -> pd.DataFrame:
    """Valid points pooled per configuration and load level, with their SLO verdict."""
    valid = points[points[Point.VALID]]
    level_rows = [
        _level_row(run, group, req_by_point, n_resamples, seed)
        for _, group in valid.groupby(  # by key; the label first keeps the display order
            # A profile's stages stay apart even at one mean level: only repeats pool.
            [Rpt.CONFIG, Rpt.CONFIG_KEY, Point.LOAD_MODE, Point.LOAD_LEVEL, Point.STAGE],
            sort=True,
            dropna=False,
        )
    ]
    levels = pd.DataFrame(level_rows)
    if levels.empty:
        return pd.DataFrame(columns=[*points.columns, Rpt.N_POINTS, Rpt.POINT_IDS])
    levels[Rpt.SLO_FAIL] = [slo_check(r, run.spec.slo) for _, r in levels.iterrows()]
    levels[Rpt.SLO_PASS] = levels[Rpt.SLO_FAIL] == ""
    return levels


def analyze(run: Run, *, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Analysis:
    """Compute every statistic a report shows.

    Args:
        run: A loaded run.
        n_resamples: Bootstrap resamples per confidence interval.
        seed: Bootstrap seed.

    Returns:
        The analysis.
    """
    req_by_point: _Requests = (
        {int(k): g for k, g in run.requests.groupby(Col.POINT_ID, sort=False)}
        if not run.requests.empty
        else {}
    )
    points = _point_rows(run, req_by_point, n_resamples, seed)
    _judge_points(points, run.spec)
    levels = _levels(run, points, req_by_point, n_resamples, seed)
    knees: dict[str, Knee] = {}
    capacity: dict[str, Capacity] = {}
    steady = levels[~is_stage(levels)] if len(levels) else levels
    for _, key in sorted(set(zip(points[Rpt.CONFIG], points[Rpt.CONFIG_KEY], strict=True))):
        lv = steady[steady[Rpt.CONFIG_KEY] == key] if len(steady) else steady
        mine = levels[levels[Rpt.CONFIG_KEY] == key] if len(levels) else levels
        if lv.empty and len(mine):  # only stage points: transient, no knee or capacity
            knees[str(key)] = Knee(False, note=STAGE_NOTE)
            capacity[str(key)] = Capacity("no_data", note=STAGE_NOTE)
            continue
        knees[str(key)] = find_knee(lv)
        capacity[str(key)] = slo_capacity(lv, run.spec.slo)
    return Analysis(run=run, points=points, levels=levels, knees=knees, capacity=capacity)
