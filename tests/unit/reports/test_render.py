"""HTML and Markdown rendering: self-contained HTML with every figure, Markdown linking them."""

from __future__ import annotations

import re

from reports.document import FigureSpec, Section, Table
from reports.render import render_html, render_markdown
from tests.unit.reports.conftest import CliReport

FIGURES = {
    "latency_vs_rps",
    "latency_vs_tokens",
    "throughput_vs_load",
    "pareto",
    "scaling",
    "batching",
    "ttft_decomposition",
    "quantization",  # the run varies int8 / float16
    "model_holdout",
    "model_predictions",
}


def test_html_is_self_contained_with_every_figure(capacity_report: CliReport) -> None:
    html = capacity_report.html.read_text()
    images = re.findall(r'<img alt="[^"]+" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(FIGURES)
    assert all(len(b) > 10_000 for b in images)
    assert set(re.findall(r'<figure id="fig-([a-z_]+)"', html)) == FIGURES
    assert "http://" not in html.replace("http://127.0.0.1", "")  # nothing fetched online
    assert set(capacity_report.figures) == FIGURES
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in capacity_report.figures.values())


def test_markdown_links_existing_figures(capacity_report: CliReport) -> None:
    md = capacity_report.markdown.read_text()
    links = re.findall(r"!\[[^\]]+\]\((figures/[a-z_]+\.png)\)", md)
    assert len(links) == len(FIGURES)
    assert all((capacity_report.output / link).exists() for link in links)
    assert "**Run 2 replicas of int8 b8 d5ms w1 t1" in md
    assert "## Comparison: capacity against faster" in md
    assert "| configuration | valid points | knee |" in md


SECTION = Section(
    "s",
    "Things <b>",
    paragraphs=["a < b"],
    tables=[
        Table(
            "T",
            ["name", "value | unit"],
            [["ok", "1"], ["INVALID: lag", "2"], ["x", "REGRESSION"]],
            note="n",
            key="t",
        )
    ],
    figures=[FigureSpec("f", "F", "cap", b"\x89PNG")],
    code=[("spec.toml", 'a = "1"')],
)


def test_html_escapes_text_and_marks_invalid_and_regressed_rows() -> None:
    html = render_html("Title", "sub", "Run 1 replica", True, [SECTION])
    assert "Things &lt;b&gt;" in html and "a &lt; b" in html
    assert '<p id="headline" class="headline">Run 1 replica</p>' in html
    assert '<tr class="invalid">' in html and '<tr class="flag">' in html
    assert 'src="data:image/png;base64,iVBORw=="' in html
    assert 'class="headline none"' in render_html("T", "s", "none", False, [SECTION])


def test_markdown_escapes_pipes_and_links_figures() -> None:
    md = render_markdown("Title", "sub", "Run 1 replica", [SECTION], "figs")
    assert "| name | value \\| unit |" in md
    assert "![F](figs/f.png)" in md
    assert '```toml\na = "1"\n```' in md
