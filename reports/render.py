"""Draw the report's sections as one self-contained HTML page or as Markdown.

Only presentation lives here: what the sections say is decided in :mod:`reports.sections`.
The HTML embeds every figure as a data URI, so the page is one file that reads offline; the
Markdown links the same figures from a directory next to it.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Final

import jinja2

from reports.document import Section

__all__ = ["render_html", "render_markdown"]

_CSS: Final = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d1d1f; background: #fafafa; }
main { max-width: 1240px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 1.6em; margin: 0.4em 0 0.1em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.6em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
.meta { color: #555; }
.headline { background: #eef6ee; border-left: 5px solid #2e7d32; padding: 12px 16px;
            font-size: 1.1em; }
.headline.none { background: #fdf0ef; border-left-color: #c62828; }
nav a { margin-right: 12px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12.5px; background: #fff; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; position: sticky; top: 0; }
tr.invalid td { color: #8a8a8a; background: #f6f6f6; }
tr.flag td { background: #fdecea; }
figure { margin: 18px 0; background: #fff; border: 1px solid #e2e2e2; padding: 8px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: #444; font-size: 13px; margin-top: 6px; }
pre { background: #f4f4f4; padding: 10px; overflow-x: auto; font-size: 12px; }
.note { color: #555; font-size: 12.5px; }
"""

_HTML: Final = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ css }}</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
<p class="meta">{{ subtitle }}</p>
<nav>{% for s in sections %}<a href="#{{ s.key }}">{{ s.title }}</a>{% endfor %}</nav>
<p id="headline" class="headline{{ '' if has_best else ' none' }}">{{ headline }}</p>
{% for s in sections %}
<section id="{{ s.key }}">
<h2>{{ s.title }}</h2>
{% for p in s.paragraphs %}<p>{{ p }}</p>{% endfor %}
{% if s.bullets %}<ul>{% for b in s.bullets %}<li>{{ b }}</li>{% endfor %}</ul>{% endif %}
{% for t in s.tables %}
<h3>{{ t.title }}</h3>
<div class="table-wrap"><table id="{{ t.key }}">
<thead><tr>{% for h in t.headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}<tr class="{{ row_class(row) }}">
{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div>
{% if t.note %}<p class="note">{{ t.note }}</p>{% endif %}
{% endfor %}
{% for f in s.figures %}
<figure id="fig-{{ f.key }}">
<img alt="{{ f.title }}" src="data:image/png;base64,{{ b64(f.png) }}">
<figcaption><strong>{{ f.title }}.</strong> {{ f.caption }}</figcaption>
</figure>
{% endfor %}
{% for caption, text in s.code %}<h3>{{ caption }}</h3><pre>{{ text }}</pre>{% endfor %}
</section>
{% endfor %}
</main>
</body>
</html>
"""


def _row_class(row: Sequence[str]) -> str:
    if any(c.startswith("INVALID") for c in row):
        return "invalid"
    if any(c == "REGRESSION" for c in row):
        return "flag"
    return ""


def render_html(
    title: str, subtitle: str, headline: str, has_best: bool, sections: list[Section]
) -> str:
    """Render sections as one self-contained HTML page (figures as data URIs).

    Args:
        title: Page title.
        subtitle: Line under the title.
        headline: The recommendation sentence.
        has_best: Whether a recommendation exists (styles the headline).
        sections: Content.

    Returns:
        The HTML text.
    """
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(_HTML)
    return template.render(
        title=title,
        subtitle=subtitle,
        headline=headline,
        has_best=has_best,
        sections=sections,
        css=_CSS,
        b64=lambda data: base64.b64encode(data).decode("ascii"),
        row_class=_row_class,
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(
    title: str, subtitle: str, headline: str, sections: list[Section], figures_dir: str
) -> str:
    """Render sections as Markdown with figures linked from ``figures_dir``.

    Args:
        title: Document title.
        subtitle: Line under the title.
        headline: The recommendation sentence.
        sections: Content.
        figures_dir: Relative directory of the PNG files.

    Returns:
        The Markdown text.
    """
    out = [f"# {title}", "", f"_{subtitle}_", "", f"**{headline}**", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for p in s.paragraphs:
            out += [p, ""]
        if s.bullets:
            out += [f"- {b}" for b in s.bullets] + [""]
        for t in s.tables:
            out += [f"### {t.title}", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in t.headers) + " |")
            out.append("|" + "---|" * len(t.headers))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            out.append("")
            if t.note:
                out += [f"_{t.note}_", ""]
        for f in s.figures:
            out += [f"![{f.title}]({figures_dir}/{f.key}.png)", "", f"*{f.title}.* {f.caption}", ""]
        for caption, text in s.code:
            lang = "toml" if caption.endswith(".toml") else "json"
            out += [f"### {caption}", "", f"```{lang}", text, "```", ""]
    return "\n".join(out)
