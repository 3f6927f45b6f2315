"""Build the capacity report: load, analyse, fit, recommend, lay out the sections, render, write.

:func:`build_report` runs those stages in that order (comparing against a baseline run when
given one) and writes::

    OUTPUT/
      report.html        images embedded as data URIs: one file, readable offline
      report.md          the same content, figures linked from figures/
      summary.csv        every point with its recomputed statistics, validity and SLO verdict
      figures/*.png
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pandas as pd

from loadgen.results import Point
from reports.analysis import Analysis, analyze
from reports.capacity import CapacityModel, fit_analysis
from reports.compare import Comparison, compare
from reports.document import Section
from reports.load import Rpt, Run, load_run
from reports.quality import load_quality
from reports.recommend import Recommendation, recommend
from reports.render import render_html, render_markdown
from reports.sections import report_sections
from service.models.quality import QualityReport

__all__ = [
    "FIGURES_DIR",
    "HTML_FILE",
    "MARKDOWN_FILE",
    "SUMMARY_FILE",
    "ReportFiles",
    "build_report",
]

HTML_FILE: Final = "report.html"
MARKDOWN_FILE: Final = "report.md"
SUMMARY_FILE: Final = "summary.csv"
FIGURES_DIR: Final = "figures"


@dataclass(frozen=True)
class ReportFiles:
    """Where the report went.

    Attributes:
        output: The output directory.
        html: Self-contained HTML report.
        markdown: Markdown report.
        summary_csv: Per-point summary.
        figures: PNG per figure key.
        recommendation: The recommendation shown at the top.
        analysis: The analysis of the (primary) run.
        comparison: The comparison, when a baseline was given.
    """

    output: Path
    html: Path
    markdown: Path
    summary_csv: Path
    figures: dict[str, Path]
    recommendation: Recommendation
    analysis: Analysis
    comparison: Comparison | None = None


def build_report(
    run_dir: Path | str,
    run_dir_b: Path | str | None = None,
    *,
    output: Path | str | None = None,
    target_rps: float | None = None,
    seed: int = 0,
) -> ReportFiles:
    """Analyse a run (optionally against a baseline run) and write the report files.

    With two runs, ``run_dir`` is the baseline (A) and ``run_dir_b`` the candidate (B): the
    report analyses B in full and compares it against A, as ``tokenbooth report A B`` reads.

    Args:
        run_dir: Run directory (A).
        run_dir_b: Second run directory (B), compared against A.
        output: Output directory; default ``RUN_DIR/report`` (``B/report-vs-<A>`` with two).
        target_rps: Load the recommendation must carry; default the spec's
            ``[report] target_rps``.
        seed: Seed of bootstraps and simulations.

    Returns:
        The written files and the analysis behind them.

    Raises:
        FileNotFoundError: A directory is not a run directory.
    """
    run_a = load_run(run_dir)
    run_b = load_run(run_dir_b) if run_dir_b is not None else None
    analysis_a = analyze(run_a, seed=seed)
    analysis = analyze(run_b, seed=seed) if run_b is not None else analysis_a
    comparison = compare(analysis_a, analysis, seed=seed) if run_b is not None else None
    model, model_error = _fit(analysis, seed)
    quality = load_quality(analysis.run)
    rec = _recommend(analysis, model, target_rps, quality.report)
    baseline = analysis_a if run_b is not None else None
    sections = report_sections(analysis, model, model_error, rec, comparison, baseline, quality)
    return _write(_output_dir(output, run_a, run_b), sections, analysis, rec, comparison)


def _output_dir(output: Path | str | None, run_a: Run, run_b: Run | None) -> Path:
    if output is not None:
        return Path(output)
    if run_b is not None:
        return run_b.path / f"report-vs-{_slug(run_a.path.name)}"
    return run_a.path / "report"


def _fit(analysis: Analysis, seed: int) -> tuple[CapacityModel | None, str]:
    """The capacity model, or ``None`` and why: a degenerate run must still give a report."""
    try:
        model = fit_analysis(analysis, seed=seed)
    except (ValueError, KeyError) as exc:
        return None, str(exc)
    if not model.services:
        why = "; ".join(f"{model.label(k)}: {v}" for k, v in model.unfitted.items())
        return None, why or "no valid points"
    return model, ""


def _recommend(
    analysis: Analysis,
    model: CapacityModel | None,
    target_rps: float | None,
    quality: QualityReport | None,
) -> Recommendation:
    """Recommend for ``--target-rps`` when given, else for the spec's ``[report] target_rps``."""
    if target_rps is not None:
        return recommend(analysis, model, target_rps, target_source="--target-rps", quality=quality)
    target = analysis.run.spec.target_rps
    return recommend(
        analysis, model, target, target_source="spec [report] target_rps", quality=quality
    )


def _titles(analysis: Analysis, comparison: Comparison | None) -> tuple[str, str]:
    title = f"tokenbooth capacity report: {analysis.run.name}"
    if comparison is not None:
        title += f" vs {comparison.a_name}"
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    pts = analysis.points
    subtitle = (
        f"{len(pts)} points, {int(pts[Point.VALID].sum())} valid, "
        f"{pts[Rpt.CONFIG].nunique()} configurations · SLO: "
        f"{analysis.slo.describe()} · generated {generated}"
    )
    return title, subtitle


def _summary_frame(analysis: Analysis) -> pd.DataFrame:
    """Every point, without the private working columns (``_``-prefixed)."""
    pts = analysis.points.drop(columns=[c for c in analysis.points if c.startswith("_")])
    return pts.sort_values(Point.POINT_ID).reset_index(drop=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def _write(
    out: Path,
    sections: list[Section],
    analysis: Analysis,
    rec: Recommendation,
    comparison: Comparison | None,
) -> ReportFiles:
    (out / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    figure_paths: dict[str, Path] = {}
    for f in (f for s in sections for f in s.figures):
        path = out / FIGURES_DIR / f"{f.key}.png"
        path.write_bytes(f.png)
        figure_paths[f.key] = path
    title, subtitle = _titles(analysis, comparison)
    headline = rec.headline()
    html = out / HTML_FILE
    html.write_text(
        render_html(title, subtitle, headline, rec.best is not None, sections), encoding="utf-8"
    )
    md = out / MARKDOWN_FILE
    md.write_text(render_markdown(title, subtitle, headline, sections, FIGURES_DIR), "utf-8")
    csv = out / SUMMARY_FILE
    _summary_frame(analysis).to_csv(csv, index=False)
    return ReportFiles(
        output=out,
        html=html,
        markdown=md,
        summary_csv=csv,
        figures=figure_paths,
        recommendation=rec,
        analysis=analysis,
        comparison=comparison,
    )
