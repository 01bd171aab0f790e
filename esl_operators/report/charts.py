"""Bar and line charts as inline SVG, drawn by matplotlib (object API, no pyplot: no global figure state).

Text stays text (``svg.fonttype: none``): the page is smaller, the browser renders any script the
store codes use, and the numbers can be searched and copied. Each SVG is made safe to inline next to
the others: no XML prolog, ids prefixed per chart (matplotlib numbers them from 1 in every figure).

The result is :class:`~markupsafe.Markup`, inserted into the page unescaped: it is trusted because
matplotlib's SVG writer escapes every text it writes (tick labels are store codes and other server
strings; ``tests/test_report.py`` keeps that so with hostile labels).
"""

from __future__ import annotations

import html
import io
import re
import warnings
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# Colours that stay distinct for the common colour-vision deficiencies and in greyscale print.
BLUE = "#3b6ea8"
RED = "#c0392b"
AMBER = "#d68910"
GREY = "#8c8c8c"

_RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "esl-report",  # stable clip-path ids: the same data gives the same page
    "text.parse_math": False,  # a store called "$5 $ale" must not turn into mathtext
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Noto Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#555555",
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.8,
}
#: A line chart labels each point with its value up to this many dates.
MAX_LABELLED_POINTS = 16
_ID = re.compile(r'\bid="([^"]+)"')


def bar_chart(
    chart_id: str,
    categories: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    colors: Sequence[str] | None = None,
    horizontal: bool = False,
    integer: bool = True,
) -> Markup:
    """One bar per category, each bar labelled with its value; returns ``<svg ...>...</svg>``."""
    count = max(len(categories), 1)
    height = max(2.8, 0.6 + 0.26 * count) if horizontal else 3.2
    figure = Figure(figsize=(6.4, height), layout="constrained")
    with rc_context(_RC):  # type: ignore[arg-type]  # matplotlib's stubs list the rc keys as literals
        axes = figure.add_subplot()
        axes.set_title(title, loc="left")
        positions = list(range(len(categories)))
        fill = list(colors) if colors else BLUE
        if horizontal:
            bars = axes.barh(positions, values, color=fill, height=0.7)
            axes.set_yticks(positions, [_clip(c) for c in categories])
            axes.invert_yaxis()  # first category on top, like a ranked table
            axes.xaxis.set_major_locator(MaxNLocator(integer=integer))
            axes.grid(axis="y", visible=False)
        else:
            bars = axes.bar(positions, values, color=fill, width=0.75)
            axes.set_xticks(positions, [_clip(c) for c in categories])
            axes.yaxis.set_major_locator(MaxNLocator(integer=integer))
            axes.grid(axis="x", visible=False)
            if len(categories) > 8:
                axes.tick_params(axis="x", labelrotation=35)
                for label in axes.get_xticklabels():
                    label.set_horizontalalignment("right")
        texts = axes.bar_label(
            bars, labels=[f"{v:,}" if integer else f"{v:,.1f}" for v in values], padding=2, fontsize=8
        )
        for index, text in enumerate(texts):
            text.set_gid(f"v{index}")  # becomes id="{chart_id}-v{index}": lets tests read the bar values
        axes.margins(x=0.12 if horizontal else 0.02, y=0.02 if horizontal else 0.12)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        if not categories:
            axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", va="center", color=GREY)
        return _to_svg(figure, chart_id, title)


def line_chart(
    chart_id: str,
    dates: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None], str]],
    *,
    title: str,
    ylabel: str,
) -> Markup:
    """One line per ``(name, values, colour)`` over ``dates`` (None: no point that day, the line breaks).

    Each point is labelled with its value in the SVG (``id="{chart_id}-{series}-{date}"``), so tests
    can read what is drawn; the tables beside the chart carry the same numbers.
    """
    figure = Figure(figsize=(6.4, 3.2), layout="constrained")
    with rc_context(_RC):  # type: ignore[arg-type]  # matplotlib's stubs list the rc keys as literals
        axes = figure.add_subplot()
        axes.set_title(title, loc="left")
        positions = list(range(len(dates)))
        for number, (name, values, color) in enumerate(series):
            ys = [float("nan") if v is None else float(v) for v in values]
            axes.plot(positions, ys, color=color, marker="o", markersize=3, linewidth=1.6, label=name)
            for position, value in zip(positions, values, strict=True):
                # Every value is labelled while they fit; beyond that only the latest (the table has all).
                if value is not None and (len(dates) <= MAX_LABELLED_POINTS or position == positions[-1]):
                    mark = axes.annotate(
                        f"{value:,}", (position, value), textcoords="offset points", xytext=(0, 4),
                        ha="center", fontsize=7, color=color,
                    )  # fmt: skip
                    mark.set_gid(f"s{number}-{position}")
        step = max(1, -(-len(dates) // 10))  # at most ~10 date ticks, the latest date always among them
        ticks = positions[::-step][::-1]
        axes.set_xticks(ticks, [dates[i][5:] for i in ticks])  # MM-DD: the table beside has full dates
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylim(bottom=0)
        axes.margins(x=0.04, y=0.15)
        axes.set_ylabel(ylabel)
        axes.grid(axis="x", visible=False)
        if series:
            figure.legend(loc="outside upper right", ncols=len(series), fontsize=8, frameon=False)
        if not dates:
            axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", va="center", color=GREY)
        return _to_svg(figure, chart_id, title)


def _clip(label: str, limit: int = 28) -> str:
    """Tick labels longer than this would squeeze the plot; the tables below carry the full text."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _to_svg(figure: Figure, chart_id: str, title: str) -> Markup:
    buffer = io.StringIO()
    with warnings.catch_warnings():
        # Layout measures text with DejaVu Sans, which lacks CJK glyphs; the browser draws them with
        # its own fonts (fonttype "none"), so the warning would only be noise in the task log.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE: not allowed inside HTML
    # The RDF metadata block only names namespaces; dropping it keeps the page free of any URL.
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.DOTALL)
    svg = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg)
    ids = set(_ID.findall(svg))
    svg = _ID.sub(lambda m: f'id="{chart_id}-{m.group(1)}"', svg)
    for old in sorted(ids, key=len, reverse=True):
        svg = svg.replace(f"url(#{old})", f"url(#{chart_id}-{old})")
        svg = svg.replace(f'href="#{old}"', f'href="#{chart_id}-{old}"')
    # Scale with the page (viewBox kept), and announce the chart to screen readers by its title.
    svg = re.sub(r'<svg ([^>]*?)width="[^"]+" height="[^"]+"', r"<svg \1", svg, count=1)
    label = html.escape(title, quote=True)
    return Markup(svg.replace("<svg ", f'<svg role="img" aria-label="{label}" class="chart" ', 1))
