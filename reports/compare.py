"""Two runs side by side: matched load levels, changes, and regressions beyond noise.

A change is flagged only when it is both statistically clear and large enough to matter:

* latency percentiles (TTFT, ITL, E2E p95): the bootstrap distribution of the difference
  B - A (independent resamples of each run's raw samples) has a 99% interval excluding 0;
* throughput: the difference exceeds 2.576 standard errors, each estimated by batch means over
  ten equal windows of the point's finish times;
* error rate: a two-proportion z-test at the same level;

and the relative change is at least ``min_effect`` (5% by default). Levels are matched by
configuration key (:attr:`reports.load.Rpt.CONFIG_KEY`), load mode and load level; two runs of
one configuration each (two servers, or two builds of one, on the same workload) are matched by
load mode and level alone, since their configurations are what is being compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np
import pandas as pd

from loadgen.results import Col, Env, Point, Server
from loadgen.summary import bootstrap_quantile_draws
from reports.analysis import Analysis
from reports.load import Rpt, Run

__all__ = [
    "DEFAULT_MIN_EFFECT",
    "NOISE_METHOD",
    "Comparison",
    "compare",
    "run_label",
    "server_label",
]

DEFAULT_MIN_EFFECT: Final = 0.05
Z_99: Final = 2.576
NOISE_METHOD: Final = (
    "Flagged when the change is beyond noise (latency p95: 99% bootstrap interval of B − A "
    "excludes 0; throughput: |B − A| > 2.576 batch-means standard errors; error rate: "
    "two-proportion z-test at 99%) and at least {min_effect:.0%} relative."
)

# (metric column, raw sample column or None, higher is better, label)
_METRICS: Final[tuple[tuple[str, str | None, bool, str], ...]] = (
    (Point.ACHIEVED_RPS, None, True, "throughput (req/s)"),
    (Point.OUTPUT_TOKENS_PER_S, None, True, "output tokens/s"),
    (Point.TTFT_P95_S, Col.TTFT_S, False, "TTFT p95 (s)"),
    (Point.ITL_P95_S, Col.ITL_S, False, "ITL p95 (s)"),
    (Point.E2E_P95_S, Col.E2E_S, False, "E2E p95 (s)"),
    (Point.ERROR_RATE, None, False, "error rate"),
)


@dataclass
class Comparison:
    """Run B against run A.

    Attributes:
        a_name: Baseline run's label (:func:`run_label`: name, server kind and version).
        b_name: Candidate run's label.
        table: One row per matched load level and metric: values, relative change, whether
            the change is beyond noise, and the flag (``regression``/``improvement``/``""``).
        capacity: Per configuration: SLO capacity of both runs and its change.
        unmatched: Load levels present in only one run.
        min_effect: Smallest relative change that is flagged.
    """

    a_name: str
    b_name: str
    table: pd.DataFrame
    capacity: pd.DataFrame
    unmatched: list[str] = field(default_factory=list)
    min_effect: float = DEFAULT_MIN_EFFECT

    @property
    def regressions(self) -> pd.DataFrame:
        """Rows flagged as regressions."""
        if self.table.empty:
            return self.table
        return self.table[self.table[Rpt.FLAG] == "regression"]

    @property
    def method(self) -> str:
        """How changes are judged, in words."""
        return NOISE_METHOD.format(min_effect=self.min_effect)


_LevelKey = tuple[str, str, float]  # (configuration key, load mode, load level)


def _level_key(row: pd.Series) -> _LevelKey:
    return (str(row[Rpt.CONFIG_KEY]), str(row[Point.LOAD_MODE]), float(row[Point.LOAD_LEVEL]))


def _diff_draws(
    a: Analysis, b: Analysis, key: _LevelKey, col: str, seed: int
) -> tuple[float, float] | None:
    sa = a.samples(key[0], key[2], col)
    sb = b.samples(key[0], key[2], col)
    if sa.size < 2 or sb.size < 2:
        return None
    da = bootstrap_quantile_draws(sa, 0.95, seed=seed)
    db = bootstrap_quantile_draws(sb, 0.95, seed=seed + 1)
    lo, hi = np.quantile(db - da, [0.005, 0.995])
    return float(lo), float(hi)


def _num(row: pd.Series, col: str) -> float:
    try:
        return float(row.get(col, math.nan))
    except (TypeError, ValueError):
        return math.nan


def _judge(
    metric: str,
    sample_col: str | None,
    ra: pd.Series,
    rb: pd.Series,
    a: Analysis,
    b: Analysis,
    key: _LevelKey,
    seed: int,
) -> tuple[bool | None, str]:
    """(beyond noise? None when unknown, the evidence in words)."""
    va, vb = _num(ra, metric), _num(rb, metric)
    if sample_col is not None:
        ci = _diff_draws(a, b, key, sample_col, seed)
        if ci is None:
            return None, "no raw samples"
        lo, hi = ci
        return (lo > 0 or hi < 0), f"99% CI of B−A [{lo:.3g}, {hi:.3g}]"
    if metric == Point.ERROR_RATE:
        na, nb = _num(ra, Point.N_REQUESTS), _num(rb, Point.N_REQUESTS)
        if not (na > 0 and nb > 0):
            return None, "no request counts"
        pooled = (va * na + vb * nb) / (na + nb)
        se = math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
        if se == 0:
            return (va != vb), "no errors in either run" if va == vb == 0 else "z-test"
        z = (vb - va) / se
        return abs(z) > Z_99, f"z = {z:.2f}"
    se_a, se_b = _num(ra, Rpt.ACHIEVED_RPS_SE), _num(rb, Rpt.ACHIEVED_RPS_SE)
    if metric == Point.OUTPUT_TOKENS_PER_S:
        # Same relative noise as the request rate it is made of.
        ra_rps, rb_rps = _num(ra, Point.ACHIEVED_RPS), _num(rb, Point.ACHIEVED_RPS)
        se_a = se_a * va / ra_rps if ra_rps > 0 else math.nan
        se_b = se_b * vb / rb_rps if rb_rps > 0 else math.nan
    se = math.hypot(se_a, se_b)
    if not math.isfinite(se):
        return None, "no noise estimate"
    if se == 0:
        return (va != vb), "no measurable noise"
    z = (vb - va) / se
    return abs(z) > Z_99, f"z = {z:.2f}"


def _find(key: _LevelKey, pool: dict[_LevelKey, pd.Series]) -> pd.Series | None:
    for k, v in pool.items():
        if k[:2] == key[:2] and math.isclose(k[2], key[2], rel_tol=1e-9, abs_tol=1e-9):
            return v
    return None


def _metric_rows(
    key: _LevelKey,
    ra: pd.Series,
    rb: pd.Series,
    a: Analysis,
    b: Analysis,
    min_effect: float,
    seed: int,
) -> list[dict[str, Any]]:
    """One row per metric of a level both runs measured: values, change, noise, flag."""
    rows = []
    for i, (metric, sample_col, higher_better, label) in enumerate(_METRICS):
        va, vb = _num(ra, metric), _num(rb, metric)
        if not (math.isfinite(va) and math.isfinite(vb)):
            continue
        rel = (vb - va) / va if va != 0 else (0.0 if vb == 0 else math.inf)
        beyond, evidence = _judge(metric, sample_col, ra, rb, a, b, key, seed + 17 * i)
        worse = vb < va if higher_better else vb > va
        large = abs(rel) >= min_effect
        if metric == Point.ERROR_RATE:
            large = abs(vb - va) >= 0.01  # error rates compare in points, not ratios
        flagged = large and beyond is not False
        flag = ("regression" if worse else "improvement") if flagged and va != vb else ""
        rows.append(
            {
                Rpt.CONFIG_KEY: key[0],
                Rpt.CONFIG: str(rb[Rpt.CONFIG]),
                Point.LOAD_MODE: key[1],
                Point.LOAD_LEVEL: key[2],
                Rpt.METRIC: label,
                Rpt.COLUMN: metric,
                Rpt.A: va,
                Rpt.B: vb,
                Rpt.CHANGE: rel,
                Rpt.BEYOND_NOISE: beyond,
                Rpt.EVIDENCE: evidence
                if beyond is not None
                else f"{evidence}: judged on size alone",
                Rpt.FLAG: flag,
            }
        )
    return rows


def _capacity_rows(a: Analysis, b: Analysis, min_effect: float) -> list[dict[str, Any]]:
    """Per configuration of either run: both SLO capacities and the change, in label order."""
    keys = set(a.capacity) | set(b.capacity)
    rows = []
    for key in sorted(keys, key=lambda k: (_label(k, a, b), k)):
        ca, cb = a.capacity.get(key), b.capacity.get(key)
        va = ca.rate_rps if ca is not None and ca.usable else math.nan
        vb = cb.rate_rps if cb is not None and cb.usable else math.nan
        rel = (vb - va) / va if va > 0 and math.isfinite(vb) else math.nan
        flag = ""
        if math.isfinite(rel) and abs(rel) >= min_effect:
            flag = "regression" if rel < 0 else "improvement"
        rows.append(
            {
                Rpt.CONFIG_KEY: key,
                Rpt.CONFIG: _label(key, a, b),
                Rpt.A_CAPACITY_RPS: va,
                Rpt.A_STATUS: ca.status if ca is not None else "absent",
                Rpt.B_CAPACITY_RPS: vb,
                Rpt.B_STATUS: cb.status if cb is not None else "absent",
                Rpt.CHANGE: rel,
                Rpt.FLAG: flag,
            }
        )
    return rows


def server_label(run: Run) -> str:
    """The measured server's kind and version (``llamacpp b11434``), ``""`` when not recorded."""
    server = run.environment.get(Env.SERVER)
    if not isinstance(server, dict) or not server.get(Server.KIND):
        return ""
    return f"{server[Server.KIND]} {server.get(Server.VERSION) or ''}".strip()


def run_label(run: Run) -> str:
    """A run as a comparison names it: its name, and the server it measured when recorded.

    Two runs of the same workload against different servers (tokenbooth and llama.cpp) must
    read apart at a glance in every table header.
    """
    server = server_label(run)
    return f"{run.name} ({server})" if server else run.name


def _label(key: str, a: Analysis, b: Analysis) -> str:
    """The candidate's label of a configuration key, the baseline's when only it has the key."""
    return b.label(key) if key in b.capacity else a.label(key)


def _rekeyed(b: Analysis, old: str, new: str) -> Analysis:
    """``b`` with its configuration key ``old`` renamed ``new`` (labels unchanged)."""
    points, levels = b.points.copy(), b.levels.copy()
    for frame in (points, levels):
        if len(frame):
            frame.loc[frame[Rpt.CONFIG_KEY] == old, Rpt.CONFIG_KEY] = new
    return replace(
        b,
        points=points,
        levels=levels,
        knees={new if k == old else k: v for k, v in b.knees.items()},
        capacity={new if k == old else k: v for k, v in b.capacity.items()},
    )


def compare(
    a: Analysis, b: Analysis, *, min_effect: float = DEFAULT_MIN_EFFECT, seed: int = 0
) -> Comparison:
    """Compare run B (candidate) against run A (baseline).

    Args:
        a: Baseline analysis.
        b: Candidate analysis.
        min_effect: Smallest relative change flagged.
        seed: Bootstrap seed.

    Returns:
        The comparison.
    """
    if len(a.capacity) == len(b.capacity) == 1 and set(a.capacity) != set(b.capacity):
        (key_a,), (key_b,) = a.capacity, b.capacity
        b = _rekeyed(b, key_b, key_a)
    la = {_level_key(r): r for _, r in a.levels.iterrows()} if len(a.levels) else {}
    lb = {_level_key(r): r for _, r in b.levels.iterrows()} if len(b.levels) else {}
    rows: list[dict[str, Any]] = []
    unmatched: list[str] = []
    for key, ra in sorted(la.items(), key=lambda kv: (str(kv[1][Rpt.CONFIG]), kv[0])):
        rb = _find(key, lb)
        if rb is None:
            unmatched.append(f"{ra[Rpt.CONFIG]} at {key[2]:g} ({key[1]}): only in {a.run.name}")
            continue
        rows += _metric_rows(key, ra, rb, a, b, min_effect, seed)
    for key, rb in lb.items():
        if _find(key, la) is None:
            unmatched.append(f"{rb[Rpt.CONFIG]} at {key[2]:g} ({key[1]}): only in {b.run.name}")
    return Comparison(
        a_name=run_label(a.run),
        b_name=run_label(b.run),
        table=pd.DataFrame(rows),
        capacity=pd.DataFrame(_capacity_rows(a, b, min_effect)),
        unmatched=unmatched,
        min_effect=min_effect,
    )
