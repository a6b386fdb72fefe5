"""Inline SVG bar charts, drawn here for the self-contained pages.

Every bar is a ``<rect data-label=... data-value=...>`` inside an ``<svg
data-chart=...>``, so a page can be checked by machine against the data it embeds. A
chart is data (:class:`Chart`): which field of the items it shows, in which unit, as
rows (categories with long labels) or columns (ordered bins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dcmpress.page import escape


@dataclass(frozen=True)
class Chart:
    """How one entry of the chart data is drawn."""

    name: str  # key in the chart data, and the svg's data-chart
    title: str
    value: str  # the field each bar shows
    unit: str  # "bytes", "count" or "seconds"
    color: str
    horizontal: bool  # categories as rows (long labels) or columns (ordered bins)
    note: str
    wide: bool = False  # a whole row of the page rather than half
    axis: str = ""  # the caption under a column chart's axis (what its bins are)


NARROW_WIDTH = 560  # natural SVG widths: one chart per half / whole row at 1280 px
WIDE_WIDTH = 1170
ROW_HEIGHT = 26
LABEL_WIDTH = 140
VALUE_WIDTH = 130


def human_bytes(value: float) -> str:
    """``value`` bytes with a decimal unit (kB = 1000 bytes), e.g. ``12.3 MB``."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{sign}{value:,.0f} {unit}" if unit == "B" else f"{sign}{value:,.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _fmt(value: float, unit: str) -> str:
    if unit == "seconds":  # CPU seconds: small ones too
        return f"{value:,.0f} s" if value >= 100 else f"{value:.3g} s"
    return human_bytes(value) if unit == "bytes" else f"{value:,.0f}"


def _tick(value: float, unit: str) -> str:
    """An axis label: like :func:`_fmt`, without a trailing ``.0``."""
    return _fmt(value, unit).replace(".0 ", " ")


def axis_ticks(maximum: float, integer: bool, most: int = 5) -> list[float]:
    """Evenly spaced axis values from 0 to at least ``maximum``: up to ``most`` steps of
    1, 2, 2.5 or 5 x 10^n (whole steps only when ``integer``)."""
    if maximum <= 0:
        return [0.0, 1.0]
    power = 10.0 ** math.floor(math.log10(maximum / most))
    steps = [m * power for m in (1, 2, 2.5, 5, 10, 20)]
    if integer:
        steps = [s for s in steps if s >= 1 and s == int(s)] or [1.0]
    step = next(s for s in steps if maximum / s <= most)
    count = max(1, math.ceil(maximum / step - 1e-9))
    return [step * i for i in range(count + 1)]


def _bar(x: float, y: float, w: float, h: float, color: str, label: str, value: Any,
         tip: str) -> str:  # fmt: skip
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.0):.1f}" height="{max(h, 0.0):.1f}" '
        f'rx="2" fill="{color}" data-label="{escape(label)}" data-value="{escape(value)}">'
        f"<title>{escape(tip)}</title></rect>"
    )


def _tip(chart: Chart, item: dict[str, Any]) -> str:
    value = _fmt(item[chart.value], chart.unit)
    if chart.unit == "bytes":
        ratio = item["bytes_in"] / item["bytes_out"] if item["bytes_out"] else 0.0
        return (
            f"{item['label']}: {value} saved, {item['objects']:,} objects, "
            f"{human_bytes(item['bytes_in'])} -> {human_bytes(item['bytes_out'])} "
            f"({ratio:.2f}x)"
        )
    if chart.name == "throughput":
        return f"{item['label']} UTC: {value} objects, {human_bytes(item['bytes_in'])} read"
    return f"{item['label']}: {value}"


def _svg_open(chart: Chart, width: int, height: float, label: str) -> str:
    return (
        f'<svg data-chart="{chart.name}" width="{width}" '
        f'height="{height:.0f}" viewBox="0 0 {width} {height:.0f}" role="img" '
        f'aria-label="{escape(label)}">'
    )


def _empty_svg(chart: Chart, width: int) -> str:
    return (
        _svg_open(chart, width, 60, f"{chart.title}: no data")
        + f'<text x="{width / 2}" y="34" text-anchor="middle" class="muted">'
        "nothing to show</text></svg>"
    )


def _horizontal_svg(chart: Chart, items: list[dict[str, Any]], width: int) -> str:
    """One row per category: label, bar, value (and object count for byte charts)."""
    top, bottom = 6, 24
    height = top + ROW_HEIGHT * len(items) + bottom
    plot = width - LABEL_WIDTH - VALUE_WIDTH
    peak = max(float(item[chart.value]) for item in items)
    ticks = axis_ticks(peak, chart.unit == "count", most=4)
    scale = ticks[-1]
    parts = [_svg_open(chart, width, height, chart.title)]
    for tick in ticks:
        x = LABEL_WIDTH + plot * tick / scale
        parts.append(
            f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" '
            f'y2="{height - bottom}"/>'
            f'<text x="{x:.1f}" y="{height - 7}" text-anchor="middle" class="muted small">'
            f"{escape(_tick(tick, chart.unit))}</text>"
        )
    for index, item in enumerate(items):
        y = top + ROW_HEIGHT * index
        value = item[chart.value]
        label = str(item["label"])
        shown = label if len(label) <= 20 else label[:19] + "\u2026"
        length = plot * max(float(value), 0.0) / scale
        text = _fmt(value, chart.unit)
        if chart.unit == "bytes":
            text += f" \u00b7 {item['objects']:,} obj"
        baseline = y + ROW_HEIGHT / 2 + 4
        parts.append(
            f'<text x="{LABEL_WIDTH - 8}" y="{baseline:.1f}" text-anchor="end">'
            f"{escape(shown)}</text>"
            + _bar(LABEL_WIDTH, y + 4, length, ROW_HEIGHT - 8, chart.color, label, value,
                   _tip(chart, item))
            + f'<text x="{LABEL_WIDTH + length + 6:.1f}" y="{baseline:.1f}" class="value">'
            f"{escape(text)}</text>"
        )  # fmt: skip
    parts.append(
        f'<line class="axis" x1="{LABEL_WIDTH}" y1="{top}" x2="{LABEL_WIDTH}" '
        f'y2="{height - bottom}"/></svg>'
    )
    return "".join(parts)


def _vertical_svg(chart: Chart, items: list[dict[str, Any]], width: int) -> str:
    """One column per ordered bin (ratio bins, minutes), labels thinned to fit."""
    left, right, top, bottom, plot_height = 48, 12, 20, 42, 190
    height = top + plot_height + bottom
    plot = width - left - right
    slot = min(plot / len(items), 56.0)  # a few minutes do not make a wall of colour
    gap = min(slot * 0.22, 8.0)
    ticks = axis_ticks(max(float(item[chart.value]) for item in items), chart.unit == "count")
    scale = ticks[-1]
    # x labels thinned so they do not overlap (about 6.2 px per character at 11 px)
    widest = max(len(str(item["label"])) for item in items) * 6.2 + 4
    every = max(1, math.ceil(widest / slot))
    parts = [_svg_open(chart, width, height, chart.title)]
    for tick in ticks:
        y = top + plot_height * (1 - tick / scale)
        parts.append(
            f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" '
            f'y2="{y:.1f}"/><text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
            f'class="muted small">{escape(_tick(tick, chart.unit))}</text>'
        )
    axis = top + plot_height
    for index, item in enumerate(items):
        value = item[chart.value]
        bar_height = plot_height * max(float(value), 0.0) / scale
        x = left + slot * index
        parts.append(
            _bar(x + gap / 2, axis - bar_height, slot - gap, bar_height, chart.color,
                 str(item["label"]), value, _tip(chart, item))
        )  # fmt: skip
        center = x + slot / 2
        if value and slot >= 22:
            parts.append(
                f'<text x="{center:.1f}" y="{axis - bar_height - 5:.1f}" '
                f'text-anchor="middle" class="value small">{escape(_fmt(value, chart.unit))}</text>'
            )
        if index % every == 0:
            parts.append(
                f'<text x="{center:.1f}" y="{axis + 16}" text-anchor="middle" class="small">'
                f"{escape(item['label'])}</text>"
            )
    caption = escape(chart.axis)
    parts.append(
        f'<line class="axis" x1="{left}" y1="{axis}" x2="{width - right}" y2="{axis}"/>'
        f'<text x="{left + slot * len(items) / 2:.1f}" y="{height - 6}" text-anchor="middle" '
        f'class="muted small">{caption}</text></svg>'
    )
    return "".join(parts)


def chart_svg(chart: Chart, items: list[dict[str, Any]]) -> str:
    """The inline SVG of one chart (a "nothing to show" note when ``items`` is empty)."""
    width = WIDE_WIDTH if chart.wide else NARROW_WIDTH
    if not items:
        return _empty_svg(chart, width)
    if chart.horizontal:
        return _horizontal_svg(chart, items, width)
    return _vertical_svg(chart, items, width)


def chart_card(chart: Chart, items: list[dict[str, Any]]) -> str:
    """The chart as a card of the page: its title, its note and its SVG."""
    return (
        f'<section class="card{" wide" if chart.wide else ""}">'
        f'<h2>{escape(chart.title)}</h2><p class="note">{escape(chart.note)}</p>'
        f"{chart_svg(chart, items)}</section>"
    )
