"""The speed-quality section: capacity per quantization beside quality.json, frontier, sentence."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from loadgen.results import QUALITY_DIR
from reports import plots
from reports.analysis import Analysis, analyze
from reports.load import load_run
from reports.pipeline import build_report
from reports.quality import (
    LOWER_BOUND,
    QUALITY_HOWTO,
    Q,
    QualityInput,
    baseline,
    cost_sentence,
    load_quality,
    quality_table,
)
from reports.recommend import recommend
from reports.sections import quality_section
from service.models.quality import (
    QUALITY_FILE,
    EvalSample,
    QualityReport,
    VariantQuality,
    write_quality,
)
from tests.unit.reports import synth

SAMPLE = EvalSample(
    perplexity_tokens=4096,
    perplexity_source="test text",
    agreement_prompts=25,
    agreement_tokens=32,
    tasks=20,
)


def variant(
    quantization: str, increase: float, agreement: float, accuracy: float
) -> VariantQuality:
    return VariantQuality(
        quantization=quantization,
        compute_type=quantization,
        perplexity=10.0 * (1 + increase),
        perplexity_increase=increase,
        greedy_agreement=agreement,
        mean_first_divergence=agreement * 32,
        task_accuracy=accuracy,
        size_bytes=100 * 2**20,
        rss_bytes=200 * 2**20,
        load_s=0.5,
    )


def report(int8_increase: float = 0.019, float16_increase: float = 0.001) -> QualityReport:
    """float32 (not swept) as reference; int8 and float16 as the capacity run sweeps them."""
    return QualityReport(
        model="SmolLM2-135M-Instruct",
        source="smollm2.gguf",
        device="cpu",
        sample=SAMPLE,
        variants=(
            variant("float32", 0.0, 1.0, 0.80),
            variant("float16", float16_increase, 0.96, 0.80),
            variant("int8", int8_increase, 0.92, 0.75),
        ),
    )


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The capacity run (int8 and float16) with a quality.json in its quality/ directory."""
    run = synth.write_capacity_run(tmp_path_factory.mktemp("runs") / "quality")
    write_quality(report(), run / QUALITY_DIR)
    return run


def test_table_takes_capacity_at_the_smallest_replica_count(capacity_analysis: Analysis) -> None:
    table = quality_table(capacity_analysis, report()).set_index(Q.QUANTIZATION)
    assert list(table.index) == ["float16", "int8"]  # float32 was not swept: no row
    assert table.loc["int8", Q.CAPACITY_RPS] == pytest.approx(synth.INT8_X1_CAPACITY_RPS)
    assert table.loc["int8", Q.CONFIG] == synth.INT8_X1  # not the ×2 configuration
    assert table.loc["float16", Q.CAPACITY_RPS] == pytest.approx(synth.FLOAT16_CAPACITY_RPS)
    assert table.loc["int8", Q.PERPLEXITY_INCREASE] == pytest.approx(0.019)
    assert table.loc["int8", Q.GREEDY_AGREEMENT] == pytest.approx(0.92)
    assert table.loc["float16", Q.TASK_ACCURACY] == pytest.approx(0.80)
    # float32 is not swept: capacities are compared with float16, the closest to it.
    assert baseline(table.reset_index(), report()) == "float16"
    assert table.loc["int8", Q.CAPACITY_RATIO] == pytest.approx(
        synth.INT8_X1_CAPACITY_RPS / synth.FLOAT16_CAPACITY_RPS
    )
    assert table.loc["float16", Q.CAPACITY_RATIO] == pytest.approx(1.0)


def test_frontier_flags_only_undominated_variants(capacity_analysis: Analysis) -> None:
    # int8: more capacity, more perplexity; float16: less of both -> both on the frontier.
    both = quality_table(capacity_analysis, report()).set_index(Q.QUANTIZATION)
    assert both[Q.FRONTIER].to_dict() == {"float16": True, "int8": True}
    # float16 worse in perplexity too: int8 dominates it.
    dominated = quality_table(capacity_analysis, report(float16_increase=0.05))
    assert dominated.set_index(Q.QUANTIZATION)[Q.FRONTIER].to_dict() == {
        "float16": False,
        "int8": True,
    }


def test_variant_missing_from_quality_json_is_never_on_the_frontier(
    capacity_analysis: Analysis,
) -> None:
    partial = QualityReport(
        model="m",
        source="s",
        device="cpu",
        sample=SAMPLE,
        variants=(variant("int8", 0.02, 0.9, 0.7),),
    )
    table = quality_table(capacity_analysis, partial).set_index(Q.QUANTIZATION)
    assert not table.loc["float16", Q.MEASURED]
    assert math.isnan(table.loc["float16", Q.PERPLEXITY_INCREASE])
    assert table[Q.FRONTIER].to_dict() == {"float16": False, "int8": True}
    assert cost_sentence(table.reset_index(), partial, "float16") == (
        f"float16: not measured in {QUALITY_FILE}"
    )


def test_cost_sentence(capacity_analysis: Analysis) -> None:
    table = quality_table(capacity_analysis, report())
    ratio = synth.INT8_X1_CAPACITY_RPS / synth.FLOAT16_CAPACITY_RPS
    assert cost_sentence(table, report(), "int8") == (
        "int8: +1.9 % perplexity, 92 % greedy agreement at 32 tokens, 75 % task accuracy, "
        f"{ratio:.3g}x the capacity of float16"
    )
    assert f"{ratio:.3g}" == "1.09"
    # A capacity that is only a lower bound gives both figures, never a ratio.
    bound = table.copy()
    bound.loc[bound[Q.QUANTIZATION] == "float16", Q.CAPACITY_STATUS] = LOWER_BOUND
    assert cost_sentence(bound, report(), "int8").endswith(
        f"capacity ≥ {synth.INT8_X1_CAPACITY_RPS:.3g} req/s against ≥ 5 for float16 (the SLO "
        "held at every level measured: ratio not established)"
    )
    assert cost_sentence(table, report(), "float16") == (
        "float16: +0.1 % perplexity, 96 % greedy agreement at 32 tokens, 80 % task accuracy"
    )


def test_recommendation_states_the_quality_it_costs(capacity_analysis: Analysis) -> None:
    rec = recommend(capacity_analysis, None, 4.0, quality=report())
    assert rec.best is not None and rec.best.base_config.startswith("int8")
    assert rec.quality.startswith("int8: +1.9 % perplexity, 92 % greedy agreement at 32 tokens")
    assert f"Quality it costs: {rec.quality}." in rec.headline()
    plain = recommend(capacity_analysis, None, 4.0)
    assert plain.quality == "" and "Quality" not in plain.headline()


def test_figure_renders_frontier_and_bars(capacity_analysis: Analysis) -> None:
    table = quality_table(capacity_analysis, report(float16_increase=0.05))
    fig = plots.speed_quality(table, SAMPLE.agreement_tokens)
    ax, ax_q = fig.axes
    (front,) = [ln for ln in ax.get_lines() if ln.get_label() == "Pareto frontier"]
    assert list(front.get_ydata()) == pytest.approx([synth.INT8_X1_CAPACITY_RPS])  # int8 only
    assert len(ax.collections) == 2  # one scatter point per quantization
    assert len(ax_q.patches) == 4  # agreement and accuracy per quantization
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    assert buf.getvalue().startswith(b"\x89PNG")
    empty = plots.speed_quality(table.iloc[0:0], 32)
    assert isinstance(empty, Figure)


def test_section_with_and_without_quality(quality_run: Path, capacity_run: Path) -> None:
    with_q = analyze(load_run(quality_run), n_resamples=0)
    loaded = load_quality(with_q.run)
    assert loaded.report == report()
    section = quality_section(with_q, loaded)
    (table,) = section.tables
    assert [r[0] for r in table.rows] == ["float16", "int8"]
    assert [r[-1] for r in table.rows] == ["yes", "yes"]
    assert section.bullets[1].startswith("int8: +1.9 % perplexity")
    assert [f.key for f in section.figures] == ["speed_quality"]
    without = quality_section(with_q, load_quality(analyze(load_run(capacity_run)).run))
    assert without.paragraphs == [QUALITY_HOWTO]
    assert not (without.tables or without.figures or without.bullets)


def test_unreadable_quality_json_is_said(tmp_path: Path) -> None:
    run = synth.write_capacity_run(tmp_path / "broken")
    (run / QUALITY_DIR).mkdir()
    (run / QUALITY_DIR / QUALITY_FILE).write_text('{"model": 1}')
    loaded = load_quality(load_run(run))
    assert loaded.report is None
    assert QUALITY_FILE in loaded.error
    section = quality_section(analyze(load_run(run), n_resamples=0), loaded)
    assert section.paragraphs == [loaded.error, QUALITY_HOWTO]


def test_full_report_carries_the_section(quality_run: Path, tmp_path: Path) -> None:
    files = build_report(quality_run, output=tmp_path / "report", target_rps=4.0)
    md = files.markdown.read_text()
    assert "Speed vs quality" in md
    assert "Quality it costs: int8: +1.9 % perplexity" in md
    assert (files.figures["speed_quality"]).exists()
    assert QualityInput(None).error == ""
