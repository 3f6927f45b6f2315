"""The report's content, independent of its output format: sections of tables and figures.

:mod:`reports.sections` fills these in; :mod:`reports.render` draws them as HTML or Markdown.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Final

from matplotlib.figure import Figure

__all__ = ["FIGURE_DPI", "FigureSpec", "Section", "Table", "figure"]

FIGURE_DPI: Final = 100


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report.

    Attributes:
        key: File stem (``figures/<key>.png``) and HTML id.
        title: Heading.
        caption: What the figure shows and how to read it.
        png: The rendered image.
    """

    key: str
    title: str
    caption: str
    png: bytes


def figure(key: str, title: str, caption: str, fig: Figure) -> FigureSpec:
    """Render a matplotlib figure to PNG once, so both renderers share the same image.

    Args:
        key: File stem and HTML id.
        title: Heading.
        caption: What the figure shows and how to read it.
        fig: The figure (a pure :mod:`reports.plots` result).

    Returns:
        The figure with its PNG bytes.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI)
    return FigureSpec(key, title, caption, buf.getvalue())


@dataclass(frozen=True)
class Table:
    """A table both renderers can draw.

    Attributes:
        title: Heading.
        headers: Column headings.
        rows: Cells, already formatted.
        note: Text shown under the table.
        key: HTML id.
    """

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    key: str = ""


@dataclass(frozen=True)
class Section:
    """A titled part of the report: paragraphs, bullet lists, tables, figures, code blocks.

    Attributes:
        key: HTML id (navigation anchor).
        title: Heading.
        paragraphs: Text, in order.
        bullets: One list under the paragraphs.
        tables: Tables, in order.
        figures: Figures, in order.
        code: ``(caption, text)`` blocks shown verbatim.
    """

    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureSpec] = field(default_factory=list)
    code: list[tuple[str, str]] = field(default_factory=list)
