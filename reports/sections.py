"""The report's sections, one function each: what the report says, in tables, text and figures.

Every function takes the pipeline's results (:class:`reports.analysis.Analysis`, the fitted
:class:`reports.capacity.CapacityModel`, the :class:`reports.recommend.Recommendation`, the
:class:`reports.compare.Comparison`) and returns a :class:`reports.document.Section`; nothing
here knows whether it ends up in HTML or Markdown. :func:`report_sections` puts them in order.
The module is a little over 600 lines on purpose: every section is here, in reading order, so
the report's wording can be read and changed in one place (cells, figures and the server view
are modules of their own).
"""

from __future__ import annotations

import json
import math

import pandas as pd

from loadgen.results import Col, Env, Gpu, Point, Tokenizer, TokensSource
from loadgen.summary import SYNC_RATIO_WARN, SYNC_SHARE_WARN, SYNC_WINDOW_S
from reports.analysis import CAPACITY_INTERPOLATION, KNEE_METHOD, Analysis, is_stage
from reports.autoscaling import autoscaling_section
from reports.capacity import CapacityModel, Holdout
from reports.cells import ci, num, pct
from reports.compare import Comparison
from reports.document import Section, Table
from reports.figures import (
    MAX_MODEL_CONFIGS,
    MAX_MODEL_REPLICAS,
    measured_figures,
    model_figures,
    quality_figures,
)
from reports.load import Rpt
from reports.quality import (
    LOWER_BOUND,
    QUALITY_BASIS,
    QUALITY_HOWTO,
    Q,
    QualityInput,
    cost_sentence,
    load_quality,
    quality_table,
)
from reports.recommend import Recommendation
from reports.search import saturation_notes, search_paragraphs
from reports.server_view import server_rows, server_unavailable, server_view_table
from reports.sessions import offered_rate, sessions_section
from service.settings import BATCH_POLICIES

__all__ = [
    "capacity_section",
    "comparison_section",
    "environment_section",
    "figures_section",
    "methods_section",
    "model_section",
    "points_section",
    "quality_section",
    "recommendation_section",
    "report_sections",
]

# ------------------------------------------------------------------------------ measured


def _knee_cell(r: pd.Series) -> str:
    if not r[Rpt.KNEE_FOUND]:
        return f"none: {r[Rpt.KNEE_NOTE]}"
    return (
        f"{num(r[Rpt.KNEE_RPS])} req/s ({num(r[Rpt.KNEE_OUTPUT_TOKENS_PER_S])} tok/s) at load "
        f"{num(r[Rpt.KNEE_LOAD_LEVEL])}, TTFT p95 {num(r[Rpt.KNEE_TTFT_P95_S])} s"
    )


def capacity_section(analysis: Analysis) -> Section:
    """Knee and SLO capacity per configuration: the measured answer to "how much load".

    Args:
        analysis: The run's analysis.

    Returns:
        The section with one row per configuration.
    """
    rows = []
    for _, r in analysis.capacity_table().iterrows():
        cap = analysis.capacity[str(r[Rpt.CONFIG_KEY])]
        conc_kind = "users" if r[Point.LOAD_MODE] == "concurrency" else "in flight (Little)"
        concurrency = float(r[Rpt.CAPACITY_CONCURRENCY])
        rows.append(
            [
                str(r[Rpt.CONFIG]),
                f"{r[Rpt.N_VALID]}/{r[Rpt.N_POINTS_TOTAL]}",
                _knee_cell(r),
                cap.describe(),
                num(r[Rpt.CAPACITY_OUTPUT_TOKENS_PER_S]),
                num(r[Rpt.CAPACITY_LOAD_LEVEL]),
                f"{num(concurrency)} {conc_kind}" if math.isfinite(concurrency) else "–",
                pct(r[Point.ERROR_RATE]),
                num(r[Rpt.PEAK_RPS]),
                cap.note or "",
            ]
        )
    headers = [
        "configuration",
        "valid points",
        "knee",
        "max sustainable rate under SLO",
        "tok/s at that rate",
        "load level",
        "concurrency",
        "error rate (all points)",
        "peak req/s",
        "note",
    ]
    note = (
        f"SLO: {analysis.slo.describe()}. Knee: {KNEE_METHOD} "
        f"Capacity: {CAPACITY_INTERPOLATION} Invalid points are excluded."
    )
    table = Table("Capacity per configuration", headers, rows, note=note, key="capacity-table")
    return Section("capacity", "Capacity", paragraphs=search_paragraphs(analysis), tables=[table])


def quality_section(analysis: Analysis, quality: QualityInput) -> Section:
    """Speed against quality per swept quantization, from the run's ``quality.json``.

    Args:
        analysis: The run's analysis (SLO capacity per configuration).
        quality: The run's quality report, or why it has none.

    Returns:
        The section; one sentence saying how to get a quality report when the run has none.
    """
    report = quality.report
    if report is None:
        return Section(
            "quality",
            "Speed vs quality",
            paragraphs=[p for p in (quality.error, QUALITY_HOWTO) if p],
        )
    table = quality_table(analysis, report)
    sm = report.sample
    about = (
        f"Quality of {report.model} ({report.source}) per quantization against the "
        f"{report.reference} build, measured by `tokenbooth model eval` on {report.device}: "
        f"perplexity on {sm.perplexity_tokens} tokens of {sm.perplexity_source}; greedy "
        f"agreement = share of {sm.agreement_prompts} prompts whose first "
        f"{sm.agreement_tokens} generated tokens equal the reference's; task accuracy on "
        f"{sm.tasks} known-answer questions. {QUALITY_BASIS}"
    )
    rows = [
        [
            str(r[Q.QUANTIZATION]),
            str(r[Q.CONFIG]),
            ("≥ " if r[Q.CAPACITY_STATUS] == LOWER_BOUND else "")
            + f"{num(r[Q.CAPACITY_RPS])} ({r[Q.CAPACITY_STATUS]})",
            num(r[Q.CAPACITY_RATIO], 3, "x"),
            num(r[Q.PERPLEXITY], 4),
            pct(r[Q.PERPLEXITY_INCREASE], signed=True),
            pct(r[Q.GREEDY_AGREEMENT]),
            num(r[Q.MEAN_FIRST_DIVERGENCE]),
            pct(r[Q.TASK_ACCURACY]),
            num(r[Q.SIZE_BYTES] / 2**20, 3, " MiB"),
            "yes" if r[Q.FRONTIER] else "",
        ]
        for _, r in table.iterrows()
    ]
    headers = [
        "quantization",
        "configuration",
        "SLO capacity req/s",
        "capacity ratio",
        "perplexity",
        "perplexity increase",
        f"greedy agreement ({sm.agreement_tokens} tokens)",
        "mean first divergence (token)",
        "task accuracy",
        "size on disk",
        "on the frontier",
    ]
    note = (
        "Frontier: no other quantization has at least this capacity at no more perplexity "
        "increase. Capacity ratio: against the reference build when swept, else against the "
        "swept quantization closest to it in perplexity; ≥: the SLO held at every level "
        "measured (a lower bound). – : not measured."
    )
    bullets = [cost_sentence(table, report, str(q)) for q in table[Q.QUANTIZATION]]
    return Section(
        "quality",
        "Speed vs quality",
        paragraphs=[about],
        bullets=[b for b in bullets if b],
        tables=[
            Table("Capacity and quality per quantization", headers, rows, note, "quality-table")
        ],
        figures=quality_figures(table, sm.agreement_tokens),
    )


def _load_cell(r: pd.Series) -> str:
    """The point's load, saying plainly whether it was closed or open loop (and which stage)."""
    level = num(r[Point.LOAD_LEVEL])
    stage = pd.to_numeric(pd.Series([r.get(Point.STAGE)]), errors="coerce").iloc[0]
    if pd.notna(stage):
        a, b = num(r[Point.STAGE_LEVEL_FROM]), num(r[Point.STAGE_LEVEL_TO])
        level = f"{a}→{b}" if a != b else a
    if r[Rpt.OPEN_LOOP]:
        rate = offered_rate(r) if pd.isna(stage) else f"{level} req/s"
        text = f"open loop, {r[Point.ARRIVAL] or 'scheduled'} {rate}"
    else:
        text = f"closed loop, {level} users"
        reached = pd.to_numeric(pd.Series([r.get(Point.STAGE_USERS_MAX)]), errors="coerce").iloc[0]
        if pd.notna(stage) and pd.notna(reached):
            wanted = max(float(r[Point.STAGE_LEVEL_FROM]), float(r[Point.STAGE_LEVEL_TO]))
            if reached < round(wanted):
                text += f" (reached {int(reached)})"
    return f"stage {int(stage)}: {text}" if pd.notna(stage) else text


def _sync_cell(r: pd.Series) -> str:
    """Sync share against the Poisson share at the same rate, flagged when synchronised."""
    share = num(r[Point.SYNC_SHARE])
    if share == "–":
        return share
    flag = " SYNCHRONISED" if r[Rpt.SYNCHRONISED] else ""
    return f"{pct(r[Point.SYNC_SHARE])} ({pct(r[Point.SYNC_SHARE_POISSON])}){flag}"


def _point_row(r: pd.Series) -> list[str]:
    validity = "valid" if r[Point.VALID] else f"INVALID: {r[Point.INVALID_REASON]}"
    if r[Rpt.SLO_PASS]:
        slo = "meets"
    else:
        slo = f"fails: {r[Rpt.SLO_FAIL]}" if r[Point.VALID] else "(excluded)"
    return [
        str(int(r[Point.POINT_ID])),
        str(r[Rpt.CONFIG]),
        _load_cell(r),
        validity,
        f"{num(r[Point.N_OK], 6)}/{num(r[Point.N_REQUESTS], 6)}",
        pct(r[Point.ERROR_RATE]),
        num(r[Point.ACHIEVED_RPS]),
        num(r[Point.GOODPUT_RPS]),
        num(r[Point.OUTPUT_TOKENS_PER_S]),
        num(r[Point.TTFT_P50_S]),
        ci(r, Point.TTFT_P95_S, Rpt.TTFT_P95_LO, Rpt.TTFT_P95_HI, Rpt.N_TTFT),
        num(r[Point.TTFT_P99_S]),
        ci(r, Point.ITL_P95_S, Rpt.ITL_P95_LO, Rpt.ITL_P95_HI, Rpt.N_ITL),
        ci(r, Point.TPOT_P95_S, Rpt.TPOT_P95_LO, Rpt.TPOT_P95_HI, Rpt.N_TPOT),
        ci(r, Point.E2E_P95_S, Rpt.E2E_P95_LO, Rpt.E2E_P95_HI, Rpt.N_E2E),
        num(r[Point.LAG_P95_S]),
        _sync_cell(r),
        slo,
    ]


def points_section(analysis: Analysis) -> Section:
    """Every point with its statistics, validity and SLO verdict, invalid ones included.

    Args:
        analysis: The run's analysis.

    Returns:
        The section with one row per point.
    """
    # A stage profile reads in time order (its stages at one mean level stay apart).
    stages = is_stage(analysis.points).any()
    order = [Rpt.CONFIG, Point.REPEAT, Point.STAGE] if stages else [Rpt.CONFIG, Point.LOAD_LEVEL]
    pts = analysis.points.sort_values([*order, Point.POINT_ID])
    headers = [
        "id",
        "configuration",
        "load",
        "validity",
        "ok/requests",
        "errors",
        "req/s",
        "goodput req/s",
        "out tok/s",
        "TTFT p50 s",
        "TTFT p95 s [95% CI] n",
        "TTFT p99 s",
        "ITL p95 s [95% CI] n",
        "TPOT p95 s [95% CI] n",
        "E2E p95 s [95% CI] n",
        "lag p95 s",
        "sends within 2 ms (Poisson)",
        "SLO",
    ]
    note = (
        "Percentiles are exact over every successful request of the point (numpy linear "
        "interpolation); brackets hold a 95% percentile-bootstrap interval (1000 seeded "
        "resamples) and n the samples behind it. Invalid points stay listed with the reason "
        "and are left out of every capacity figure. Sends within 2 ms: the share of the "
        "point's sends with another send within 2 ms, and in brackets what independent "
        "(Poisson) sends at the same rate would give. Goodput: successful requests/s that "
        "met every per-request SLO latency term (each limit applied to each request)."
    )
    rows = [_point_row(r) for _, r in pts.iterrows()]
    table = Table("Every point", headers, rows, note=note, key="points-table")
    notes = [
        *_loop_notes(pts),
        *_token_count_notes(pts, analysis.run.requests),
        *saturation_notes(pts),
        *_gate_notes(analysis),
    ]
    unavailable = server_unavailable(analysis)
    if unavailable is not None:
        return Section("points", "Points", paragraphs=[unavailable, *notes], tables=[table])
    tables = [table, server_view_table(analysis, pts)]
    return Section("points", "Points", paragraphs=notes, tables=tables)


def _ids(pts: pd.DataFrame) -> str:
    return ", ".join(str(int(i)) for i in sorted(pts[Point.POINT_ID]))


def _loop_notes(pts: pd.DataFrame) -> list[str]:
    """Which points were closed and which open loop, and a warning for lockstep users."""
    if pts.empty:
        return []
    open_pts, closed_pts = pts[pts[Rpt.OPEN_LOOP]], pts[~pts[Rpt.OPEN_LOOP]]
    parts = []
    if len(closed_pts):
        parts.append(
            f"closed loop (each user sends again when its response ends): point(s) "
            f"{_ids(closed_pts)}"
        )
    if len(open_pts):
        parts.append(
            f"open loop (sends on an arrival schedule, whatever the responses): point(s) "
            f"{_ids(open_pts)}"
        )
    notes = ["Load: " + "; ".join(parts) + "."]
    sync = pts[pts[Rpt.SYNCHRONISED]]
    if len(sync):
        worst = sync.loc[pd.to_numeric(sync[Point.SYNC_SHARE]).idxmax()]
        notes.append(
            f"Warning: closed-loop point(s) {_ids(sync)} stayed synchronised: up to "
            f"{pct(worst[Point.SYNC_SHARE])} of sends came within {SYNC_WINDOW_S * 1000:g} ms "
            f"of another, where independent arrivals at the same rate would give "
            f"{pct(worst[Point.SYNC_SHARE_POISSON])}. Users that finish one batch together "
            "send the next together and ride the same batch, so nobody waits for a batch: "
            "their TTFT understates what independent clients see. Prefer open-loop points, "
            "or set [load] think_time_s (a small random pause) and ramp_s."
        )
    return notes


def _gate_notes(analysis: Analysis) -> list[str]:
    """The calibration gate's verdicts (loadgen.calibration): points that asked too much."""
    gate = analysis.run.environment.get(Env.LOADGEN_CEILING)
    if not isinstance(gate, dict):
        return []  # a run from before the gate
    if not gate.get("ceiling"):
        return ["Load generator: no calibrated ceiling (nginx missing): points were not gated."]
    notes = [
        f"Load generator: one process sustains about {gate['ceiling_rps']:.0f} req/s at "
        f"{gate['chunks']:g} chunks per response here ({gate['ceiling']['source']}); points "
        f"may ask up to {gate['safety']:g} of that per process ({gate['processes']} process(es)). "
        "Its own CPU share per point is in the points data (loadgen_cpu_percent)."
    ]
    over = [k for k, v in (gate.get("points") or {}).items() if not v.get("ok", True)]
    if over:
        notes.append(
            "Warning: the calibration gate judged these points beyond the load generator's "
            f"ceiling: {', '.join(over)}; their latencies include the harness's own queueing."
        )
    return notes


def _token_count_notes(pts: pd.DataFrame, requests: pd.DataFrame) -> list[str]:
    """Where the server's usage disagreed with the streamed chunks, or was not sent."""
    rate = pd.to_numeric(pts[Point.USAGE_MISMATCH_RATE], errors="coerce")
    notes = []
    off = pts[rate > 0]
    if len(off):
        shares = ", ".join(
            f"point {int(r[Point.POINT_ID])}: {pct(r[Point.USAGE_MISMATCH_RATE])}"
            for _, r in off.iterrows()
        )
        notes.append(
            "Token counts: the server's usage disagreed with the number of streamed token "
            f"chunks on a share of successful requests ({shares}); token figures use the "
            "usage, and a server that packs several tokens into one chunk looks like this."
        )
    if Col.TOKENS_SOURCE not in requests.columns:  # a run recorded before the column existed
        return notes
    ok = requests[requests[Col.OK].eq(True)]
    chunked = ok.loc[ok[Col.TOKENS_SOURCE] == TokensSource.CHUNKS, Col.POINT_ID]
    if len(chunked):
        ids = ", ".join(str(i) for i in sorted({int(i) for i in chunked}))
        notes.append(
            f"Token counts: no usage was sent at point(s) {ids}; completion tokens there are "
            "the streamed token chunks and prompt tokens the workload's own count."
        )
    return notes


# ------------------------------------------------------------------------------ recommendation


def _options_table(rec: Recommendation) -> Table:
    headers = [
        "configuration",
        "replicas",
        "capacity req/s",
        "headroom",
        "evidence",
        "CPU threads",
        "note",
    ]
    rows = [
        [
            o.base_config,
            str(o.replicas),
            num(o.capacity_rps),
            pct(o.headroom, signed=True),
            o.source,
            str(o.cpu_threads),
            o.note,
        ]
        for o in rec.options
    ]
    note = (
        "Ranked by replicas, then CPU threads (replicas × batch workers × intra threads), then "
        "measured before modelled evidence, then headroom. Headroom = capacity / target − 1."
    )
    return Table("Smallest deployment per configuration", headers, rows, note, "options-table")


def _evidence(rec: Recommendation, holdout: Holdout | None) -> str:
    """How far the recommended replica count can be trusted, or ``""`` without one."""
    best = rec.best
    if best is not None and best.source == "model":
        if holdout is not None and holdout.by_kind:
            return (
                f"This replica count was not measured: it rests on the capacity model, whose "
                f"throughput error on held-out measured points is "
                f"{pct(holdout.throughput_mape)} and TTFT p95 error "
                f"{pct(holdout.ttft_p95_mape)} (see Capacity model)."
            )
        return (
            "This replica count was not measured and the model could not be checked on "
            "held-out points: treat it as an estimate and measure it."
        )
    if best is not None and best.source.startswith("measured"):
        return (
            "Measured: the capacity is interpolated between sweep points (95% CI in the "
            "capacity table, from the bootstrap bounds of the percentiles)."
        )
    return ""


def recommendation_section(rec: Recommendation, holdout: Holdout | None) -> Section:
    """The recommended deployment, the alternatives, and how far the answer can be trusted.

    Args:
        rec: The recommendation.
        holdout: The model's hold-out error (quoted when the answer rests on the model).

    Returns:
        The section.
    """
    paragraphs = []
    if rec.target_rps is not None:
        paragraphs.append(f"Target load: {rec.target_rps:g} req/s (from {rec.target_source}).")
    if rec.basis:
        paragraphs.append(rec.basis)
    evidence = _evidence(rec, holdout)
    if evidence:
        paragraphs.append(evidence)
    return Section(
        "recommendation",
        "Recommendation",
        paragraphs=paragraphs,
        bullets=[f"{label}: {why}" for label, why in rec.infeasible_by_label()],
        tables=[_options_table(rec)] if rec.options else [],
    )


# ------------------------------------------------------------------------------ capacity model


def _service_table(model: CapacityModel) -> Table:
    headers = [
        "configuration",
        "batch policy",
        "prefill per batch",
        "decode step (a: active sequences)",
        "client overhead",
        "last request catches next batch",
        "CPU cores per busy worker",
        "batch sizes seen",
        "points (replicas)",
        "rel. RMSE prefill / decode",
        "full-batch req/s per replica",
        "notes",
    ]
    rows = [
        [
            st.label,
            st.batch_policy,
            f"{st.prefill_s[0] * 1e3:.3g} + {st.prefill_s[1] * 1e3:.3g}·b ms",
            f"{st.step_s[0] * 1e3:.3g} + {st.step_s[1] * 1e3:.3g}·a ms",
            f"{st.client_overhead_s * 1e3:.3g} ms",
            f"{st.catch_next_batch_p:.2f}",
            f"{st.cpu_per_worker:.2f}"
            + ("" if math.isfinite(st.worker_cpu_cores) else " (assumed)"),
            f"{st.batch_size_range[0]:.3g}–{st.batch_size_range[1]:.3g}",
            f"{st.fit_points} ({', '.join(str(r) for r in st.fit_replicas)})",
            f"{pct(st.prefill_rel_rmse)} / {pct(st.step_rel_rmse)}",
            f"{num(model.max_throughput(st.base_config_id, 1))}",
            "; ".join(st.notes),
        ]
        for st in (model.services[base] for base in model.configs)
    ]
    return Table("Fitted batch service times", headers, rows, key="model-params")


def _holdout_table(holdout: Holdout) -> Table:
    rows = [
        [kind, str(n), pct(thr), pct(ttft)]
        for kind, (thr, ttft, n) in sorted(holdout.by_kind.items())
    ]
    rows.append(
        [
            "all",
            str(len(holdout.table)),
            pct(holdout.throughput_mape),
            pct(holdout.ttft_p95_mape),
        ]
    )
    note = (
        "leave-one-out: refit without the point, predict it. cross-replica: fit on the smallest "
        "replica count only, predict the larger ones (how unmeasured replica counts are "
        "predicted). MAPE: mean absolute relative error."
    )
    return Table(
        "Prediction error on held-out measured points",
        ["check", "points", "throughput MAPE", "TTFT p95 MAPE"],
        rows,
        note=note,
        key="holdout-table",
    )


def _target_table(model: CapacityModel, rec: Recommendation, target_rps: float) -> Table:
    rows = []
    for base in model.configs[: MAX_MODEL_CONFIGS + 2]:
        label = model.label(base)
        for n in range(1, MAX_MODEL_REPLICAS + 1):
            if model.max_throughput(base, n) < 0.5 * target_rps:
                rows.append([label, str(n), "–", "–", "–", "cannot carry the target"])
                continue
            p = model.predict(base, n, target_rps)
            verdict = "meets SLO" if p.meets(rec.slo) else "misses SLO"
            rows.append(
                [label, str(n), num(p.throughput_rps), num(p.ttft_p95_s), num(p.e2e_p95_s), verdict]
            )
    return Table(
        f"Predictions at the target load ({target_rps:g} req/s, Poisson)",
        ["configuration", "replicas", "req/s", "TTFT p95 s", "E2E p95 s", "verdict"],
        rows,
        key="predictions-table",
    )


def _host_line(model: CapacityModel) -> str:
    cores = f", {model.cpu_cores} cores" if model.cpu_cores else ", core count unknown"
    return (
        f"Host for contention: {model.device}{cores}; balancing {model.balance}; window "
        f"{model.window.warmup_s:g} s warm-up + {model.window.duration_s:g} s."
    )


def model_section(
    analysis: Analysis,
    model: CapacityModel | None,
    holdout: Holdout | None,
    rec: Recommendation,
    error: str,
) -> Section:
    """The capacity model: assumptions, fitted service times, hold-out error, predictions.

    Args:
        analysis: The run's analysis (measured levels drawn beside the predictions).
        model: The fitted model, ``None`` when nothing could be fitted.
        holdout: Its error on held-out measured points.
        rec: The recommendation (its target sets the predictions table).
        error: Why there is no model, shown when ``model`` is ``None``.

    Returns:
        The section.
    """
    if model is None:
        return Section("model", "Capacity model", paragraphs=[f"Not fitted: {error}"])
    tables = [_service_table(model)]
    if holdout is not None and holdout.by_kind:
        tables.append(_holdout_table(holdout))
    if rec.target_rps is not None:
        tables.append(_target_table(model, rec, rec.target_rps))
    bullets = list(model.assumptions)
    unfitted = sorted((model.label(base), why) for base, why in model.unfitted.items())
    bullets += [f"{label}: not fitted ({why})" for label, why in unfitted]
    bullets.append(_host_line(model))
    return Section(
        "model",
        "Capacity model",
        paragraphs=[
            "A batch-service queue per replica, fitted from the server's batch metrics and "
            "replayed in a discrete-event simulation, under each configuration's batch policy "
            f"({' or '.join(BATCH_POLICIES)}), to predict replica counts and rates that were "
            "not measured. Assumptions:",
        ],
        bullets=bullets,
        tables=tables,
        figures=model_figures(analysis, model, holdout, rec),
    )


# ------------------------------------------------------------------------------ comparison


def _comparison_rows(df: pd.DataFrame) -> list[list[str]]:
    return [
        [
            str(r[Rpt.CONFIG]),
            f"{r[Point.LOAD_MODE]} {num(r[Point.LOAD_LEVEL])}",
            str(r[Rpt.METRIC]),
            num(r[Rpt.A], 4),
            num(r[Rpt.B], 4),
            pct(r[Rpt.CHANGE], signed=True),
            str(r[Rpt.EVIDENCE]),
            str(r[Rpt.FLAG]).upper() if r[Rpt.FLAG] else "",
        ]
        for _, r in df.iterrows()
    ]


def _capacity_compare_table(cmp: Comparison) -> Table:
    rows = [
        [
            str(r[Rpt.CONFIG]),
            f"{num(r[Rpt.A_CAPACITY_RPS])} ({r[Rpt.A_STATUS]})",
            f"{num(r[Rpt.B_CAPACITY_RPS])} ({r[Rpt.B_STATUS]})",
            pct(r[Rpt.CHANGE], signed=True),
            str(r[Rpt.FLAG]).upper(),
        ]
        for _, r in cmp.capacity.iterrows()
    ]
    return Table(
        "SLO capacity, side by side",
        ["configuration", cmp.a_name, cmp.b_name, "change", "flag"],
        rows,
        note="Capacity has no noise estimate of its own; it is flagged on size alone.",
        key="capacity-compare",
    )


def comparison_section(cmp: Comparison) -> Section:
    """Run B against run A: regressions beyond noise, capacity side by side, every level.

    Args:
        cmp: The comparison.

    Returns:
        The section.
    """
    reg = cmp.regressions
    headers = ["configuration", "load", "metric", cmp.a_name, cmp.b_name, "change", "noise", "flag"]
    tables = []
    if len(reg):
        tables.append(Table("Regressions", headers, _comparison_rows(reg), key="regressions-table"))
    if len(cmp.capacity):
        tables.append(_capacity_compare_table(cmp))
    if len(cmp.table):
        rows = _comparison_rows(cmp.table)
        tables.append(Table("Every matched level", headers, rows, key="compare-table"))
    n_reg = len(reg)
    n_imp = int((cmp.table[Rpt.FLAG] == "improvement").sum()) if len(cmp.table) else 0
    return Section(
        "comparison",
        f"Comparison: {cmp.b_name} against {cmp.a_name}",
        paragraphs=[
            f"{n_reg} regression{'s' if n_reg != 1 else ''} and {n_imp} improvement"
            f"{'s' if n_imp != 1 else ''} beyond noise. {cmp.method}",
        ],
        bullets=[f"unmatched: {u}" for u in cmp.unmatched],
        tables=tables,
    )


# ------------------------------------------------------------------------------ provenance


def _environment_rows(analysis: Analysis) -> list[list[str]]:
    env = analysis.run.environment
    machine = env.get(Env.MACHINE) or {}
    gpu = env.get(Env.GPU) or {}
    rows = [
        ["run directory", str(analysis.run.path)],
        ["tokenbooth", str(env.get(Env.TOKENBOOTH_VERSION, "unknown"))],
        ["started", str(env.get(Env.STARTED_AT, "unknown"))],
        ["git revision", str(env.get(Env.GIT_REVISION) or "unknown")],
        *server_rows(analysis),
    ]
    if isinstance(machine, dict):
        rows += [[f"machine: {k}", str(v)] for k, v in machine.items()]
    if isinstance(gpu, dict):
        rows.append(["GPU", "available" if gpu.get(Gpu.AVAILABLE) else "none"])
        if gpu.get(Gpu.DETAIL):
            rows.append(["GPU detail", str(gpu[Gpu.DETAIL])])
        for d in gpu.get(Gpu.DEVICES) or []:
            rows.append([f"GPU {d.get(Gpu.INDEX, '?')}", json.dumps(d, default=str)])
    tokenizer = env.get(Env.TOKENIZER) or {}
    if isinstance(tokenizer, dict) and tokenizer:
        rows.append(
            [
                "prompt tokens counted by",
                f"{tokenizer.get(Tokenizer.SOURCE, '?')}: {tokenizer.get(Tokenizer.DETAIL, '?')}",
            ]
        )
    packages = env.get(Env.PACKAGES) or {}
    if isinstance(packages, dict):
        rows += [[f"package: {k}", str(v)] for k, v in sorted(packages.items())]
    if not env:
        rows.append(["environment.json", "missing: the numbers cannot be tied to a machine"])
    return rows


def environment_section(analysis: Analysis) -> Section:
    """What the numbers were measured on: machine, GPU, packages, model manifest, the spec.

    Args:
        analysis: The run's analysis (its run's environment and spec).

    Returns:
        The section.
    """
    manifest = analysis.run.environment.get(Env.MODEL_MANIFEST)
    code = [
        (
            "model manifest",
            json.dumps(manifest, indent=2, default=str)
            if manifest
            else "none recorded (remote target or fake engine)",
        ),
        ("spec.toml", analysis.run.spec.text.strip()),
    ]
    rows = _environment_rows(analysis)
    tokenizer = analysis.run.environment.get(Env.TOKENIZER) or {}
    warning = tokenizer.get(Tokenizer.WARNING) if isinstance(tokenizer, dict) else None
    return Section(
        "environment",
        "Environment",
        paragraphs=["What the numbers were measured on."]
        + ([f"Warning: prompt lengths may not be the server's: {warning}"] if warning else []),
        tables=[Table("Machine and versions", ["item", "value"], rows, key="env-table")],
        code=code,
    )


def methods_section() -> Section:
    """How every number in the report was computed.

    Returns:
        The section.
    """
    return Section(
        "methods",
        "Methods",
        bullets=[
            "Latency percentiles are computed exactly from the raw per-request rows (numpy "
            "linear interpolation), never from rounded summaries; ITL uses every inter-token gap.",
            "Confidence intervals: 95% percentile bootstrap, 1000 resamples, fixed seed; the "
            "resampled order statistics are drawn from their Beta distributions, which is the "
            "same bootstrap distribution as resampling every request.",
            "A point is invalid when its status is not ok, it has fewer successful requests than "
            "the spec's min_samples, its open-loop p95 schedule lag exceeds lag_threshold_s, the "
            "load generator was the bottleneck, or the harness marked it invalid.",
            f"Knee: {KNEE_METHOD}",
            f"SLO capacity: {CAPACITY_INTERPOLATION}",
            "Throughput noise: batch-means standard error over ten equal windows of finish times.",
            "Closed loop: users start spread evenly over [load] ramp_s (default: one "
            "request's duration, probed alone at the point's start), then each sends again "
            "when its response ends, after [load] think_time_s if set. Synchrony: the share "
            f"of sends with another send within {SYNC_WINDOW_S * 1000:g} ms, against "
            "1 − exp(−2 × rate × window) for independent (Poisson) sends at the point's rate; "
            f"a closed-loop point is synchronised above {SYNC_SHARE_WARN:.0%} and "
            f"{SYNC_RATIO_WARN:g}× that. Recommendations rest on open-loop points when the "
            "run has any.",
            "Client TTFT is measured from the actual send; for open-loop points the "
            "schedule-corrected TTFT p95 is in summary.csv (ttft_sched_p95_s).",
        ],
    )


# ------------------------------------------------------------------------------ figures


def figures_section(analysis: Analysis, model: CapacityModel | None) -> Section:
    """The measured figures: latency against throughput, throughput against load, scaling,
    batching, TTFT decomposition and, when the run varies it, quantization.

    Args:
        analysis: The run's analysis.
        model: The fitted model (its full-batch throughput joins the scaling figure), or
            ``None``.

    Returns:
        The section.
    """
    return Section("figures", "Figures", figures=measured_figures(analysis, model))


# ------------------------------------------------------------------------------ the report


def report_sections(
    analysis: Analysis,
    model: CapacityModel | None,
    model_error: str,
    rec: Recommendation,
    comparison: Comparison | None,
    baseline: Analysis | None = None,
    quality: QualityInput | None = None,
) -> list[Section]:
    """Every section, in reading order: the answer first, then the evidence, then provenance.

    Args:
        analysis: The reported run's analysis.
        model: The fitted model, ``None`` when nothing could be fitted.
        model_error: Why there is no model.
        rec: The recommendation.
        comparison: The comparison against a baseline run, if any.
        baseline: That baseline run's analysis (the sessions section compares prefixes to it).
        quality: The run's quality report; ``None`` reads it from the run directory.

    Returns:
        The sections.
    """
    holdout = model.holdout_error() if model is not None else None
    sections = [recommendation_section(rec, holdout)]
    if comparison is not None:
        sections.append(comparison_section(comparison))
    sections.append(capacity_section(analysis))
    autoscaling = autoscaling_section(analysis)
    if autoscaling is not None:
        sections.append(autoscaling)
    sections += [
        quality_section(analysis, quality if quality is not None else load_quality(analysis.run)),
        figures_section(analysis, model),
        points_section(analysis),
    ]
    sessions = sessions_section(analysis, baseline)
    if sessions is not None:
        sections.append(sessions)
    sections += [
        model_section(analysis, model, holdout, rec, model_error),
        environment_section(analysis),
        methods_section(),
    ]
    return sections
