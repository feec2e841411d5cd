"""What the self-contained HTML pages share (``leadscore rules preview --html``,
``leadscore model train --report``): matplotlib figures inlined as SVG, tables, and the
pages' look.

A page fetches nothing: no script, font, style sheet or image of its own; the charts are
``<svg>`` elements with their text kept as text (drawn in the page's fonts), and the same
input gives the same bytes (ids salted with a constant, no date in the metadata).
matplotlib is imported only when a chart is drawn: the commands that draw none start
without it.
"""

from __future__ import annotations

import html
import io
import re
from typing import Any

__all__ = ["css", "figure", "finish", "html_table", "svg"]


def figure(size: tuple[float, float] = (6.4, 3.4)) -> Any:
    """A new figure (``size`` in inches) and its one set of axes."""
    from matplotlib.figure import Figure

    drawn = Figure(figsize=size, layout="constrained")
    return drawn, drawn.add_subplot()


def finish(axes: Any, grid: str = "y", legend: bool = True) -> None:
    """The pages' look: no top or right spine, a light grid along ``grid``, a legend
    without a frame (``legend=False`` for a chart whose one series needs none)."""
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis=grid, alpha=0.3)
    if legend:
        axes.legend(frameon=False)


def svg(drawn: Any) -> str:
    """A figure as an SVG element to inline: text kept as text in the page's fonts, ids
    salted with a constant and no date, so that the same figure gives the same bytes;
    the XML prologue and the RDF metadata (with its namespace URLs) are left out."""
    import matplotlib

    out = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "leadscore",
                                "font.family": "DejaVu Sans"}):
        drawn.savefig(out, format="svg", metadata={"Date": None})
    text = out.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    # HTML puts an inline <svg> in the SVG namespace itself: the declarations only
    # name the namespaces by URL, which a page that fetches nothing is better without.
    return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text, count=2)


def html_table(columns: list[str], rows: list[list[str]]) -> str:
    """A plain table, every cell escaped."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def css(box: str = "", extra: str = "") -> str:
    """The pages' style sheet: the page and its headings, then ``box`` (the rules of the
    page's headline box), then figures and tables, then ``extra`` (the page's own). Each
    part is whole lines, each ending in a newline."""
    return "\n" + _PAGE + box + _FIGURES + extra


_PAGE = """\
body{font:14px/1.45 "DejaVu Sans",system-ui,sans-serif;margin:24px auto;max-width:1280px;
color:#202124;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 6px}
"""
_FIGURES = """\
.charts{display:flex;flex-wrap:wrap;gap:16px;margin-top:18px}
figure{margin:0;flex:1 1 560px}figure svg{width:100%;height:auto}
figcaption{text-align:center;color:#5f6368;font-size:13px}
table{border-collapse:collapse;margin:4px 0}
th,td{padding:3px 10px;border-bottom:1px solid #e0e0e0;text-align:right}
th:first-child,td:first-child{text-align:left;white-space:pre}
"""
