"""A self-contained HTML report of one batch: totals and bar charts, viewable offline.

The page has no JavaScript, no external URL and no web font: every chart is an inline
SVG drawn here, so it opens from a file (or an e-mail attachment) in any browser. The
chart data is embedded as well, in ``<script type="application/json" id="chart-data">``,
and every bar is a ``<rect data-label=... data-value=...>`` inside an
``<svg data-chart=...>``, so the page can be checked by machine against the ledger.

Object keys, codes, messages, modalities and target names come from the archive and
the workers, so all text is escaped.
"""

from __future__ import annotations

import bisect
import html
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from dcmpress.reports import report_rows
from worker.errors import TERMINAL
from worker.runtime.ledger import STATES, Ledger

# Upper edges of the ratio bins (the last bin is open): <1, 1-1.5, ..., 6-10, >=10.
RATIO_EDGES = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0)
# Throughput minutes without a finished object are shown as 0 while the batch spans at
# most this many minutes; a longer batch shows only its busy minutes.
GAP_FILL_MINUTES = 720
FAILED_LISTED = 50  # failed objects listed by key in the page
# Upper edges of the PSNR bins of lossy results, dB (the last bin is open)
PSNR_EDGES = (30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0, 70.0)
PSNR_STEP = 10  # quality quantiles are read from counts per tenth of a dB


class _Quality:
    """The quality of one modality's lossy results, kept as counts per 0.1 dB (a batch
    of millions of lossy objects fits in memory) with the largest pixel error."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.objects = 0
        self.identical = 0  # decoded exactly as the source (no PSNR)
        self.max_error = 0
        self.tenths: Counter[int] = Counter()

    def add(self, psnr: float | None, max_error: int | None) -> None:
        self.objects += 1
        self.max_error = max(self.max_error, int(max_error or 0))
        if psnr is None:
            self.identical += 1
        else:
            self.tenths[round(float(psnr) * PSNR_STEP)] += 1

    def quantile(self, share: float) -> float | None:
        """The PSNR that ``share`` of the results with one stay at or below (nearest
        rank, to 0.1 dB)."""
        total = sum(self.tenths.values())
        if not total:
            return None
        rank, seen = max(1, math.ceil(share * total)), 0
        for tenth in sorted(self.tenths):
            seen += self.tenths[tenth]
            if seen >= rank:
                return tenth / PSNR_STEP
        raise AssertionError("unreachable")

    def row(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "objects": self.objects,
            "identical": self.identical,
            "psnr_min": self.quantile(0.0),
            "psnr_p5": self.quantile(0.05),
            "psnr_median": self.quantile(0.5),
            "max_error": self.max_error,
        }


def psnr_labels() -> list[str]:
    """The fixed labels of the PSNR histogram, lowest bin first."""
    labels = [f"<{PSNR_EDGES[0]:g} dB"]
    labels += [f"{low:g}-{high:g}" for low, high in pairwise(PSNR_EDGES)]
    return [*labels, f">={PSNR_EDGES[-1]:g}", "identical"]


def ratio_labels() -> list[str]:
    """The fixed labels of the ratio histogram, lowest bin first."""
    labels = [f"<{RATIO_EDGES[0]:g}"]
    labels += [f"{low:.1f}-{high:.1f}" for low, high in pairwise(RATIO_EDGES)]
    return [*labels, f">={RATIO_EDGES[-1]:g}"]


def ratio_bin(ratio: float) -> int:
    """Index of the histogram bin of ``ratio`` (bins are closed below, open above)."""
    return _bin(ratio, RATIO_EDGES)


def _bin(value: float, edges: tuple[float, ...]) -> int:
    for index, edge in enumerate(edges):
        if value < edge:
            return index
    return len(edges)


def _add_saving(groups: dict[str, dict[str, Any]], label: str, row: dict[str, Any]) -> None:
    group = groups.setdefault(
        label, {"label": label, "objects": 0, "bytes_in": 0, "bytes_out": 0, "saved": 0}
    )
    group["objects"] += 1
    group["bytes_in"] += int(row["bytes_in"])
    group["bytes_out"] += int(row["bytes_out"])
    group["saved"] = group["bytes_in"] - group["bytes_out"]


def _most_saved(groups: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(groups.values(), key=lambda group: (-group["saved"], group["label"]))


def _throughput(objects: Counter[int], bytes_in: Counter[int]) -> list[dict[str, Any]]:
    """Per-minute entries, in order, idle minutes included for a short enough batch."""
    if not objects:
        return []
    first, last = min(objects), max(objects)
    if (last - first) // 60 < GAP_FILL_MINUTES:
        minutes = list(range(first, last + 60, 60))
    else:
        minutes = sorted(objects)
    days = {datetime.fromtimestamp(m, UTC).date() for m in minutes}
    fmt = "%H:%M" if len(days) == 1 else "%m-%d %H:%M"
    return [
        {
            "label": datetime.fromtimestamp(minute, UTC).strftime(fmt),
            "start": minute,
            "objects": objects[minute],
            "bytes_in": bytes_in[minute],
        }
        for minute in minutes
    ]


def chart_data(rows: Iterable[dict[str, Any]], counts: dict[str, float]) -> dict[str, Any]:
    """The data of every chart and the totals, JSON-serialisable.

    ``rows`` are :func:`dcmpress.views.report_rows` dicts (read once, not kept, so a
    batch of millions of objects fits in memory) and ``counts`` the batch counters
    (:meth:`worker.runtime.ledger.Ledger.counts`). The result has:

    - ``by_modality`` / ``by_target``: ``{label, objects, bytes_in, bytes_out, saved}``
      over objects with an output (``bytes_out > 0``: a failed object wrote nothing,
      so its input saved nothing), most bytes saved first (no modality is
      ``"unknown"``, no target ``"none"``);
    - ``by_rule``: the same per policy rule over every object a rule decided (copies
      and skips too, which save nothing); empty without a policy (and not drawn);
    - ``ratio_histogram``: ``{label, count}`` of done objects' ratios in fixed bins;
    - ``failures_by_code``: ``{label, count}`` of failed objects, most frequent first;
    - ``throughput``: ``{label, start, objects, bytes_in}`` of finished objects per
      UTC minute of their last update (``start`` in epoch seconds), in order, idle
      minutes included unless the batch spans more than ``GAP_FILL_MINUTES``;
    - ``failed_objects``: ``{key, code, message, copied}`` of the first ``FAILED_LISTED``
      failed objects by key;
    - ``psnr_histogram``: ``{label, count}`` of lossy results' PSNR in fixed bins (and
      those decoded identically); ``quality_by_modality``: per source Modality, the
      lossy results' ``objects``, ``identical``, ``psnr_min`` / ``psnr_p5`` /
      ``psnr_median`` (dB, nearest rank) and the largest ``max_error``; both empty
      without lossy results;
    - ``totals``: object counts per state and ``bytes_in``/``bytes_out`` of finished
      objects from ``counts`` (as ``dcmpress status`` shows them), and ``saved`` /
      ``ratio`` over the objects that have an output (``written_bytes_in``), so
      failed inputs are not counted as saved.
    """
    modalities: dict[str, dict[str, Any]] = {}
    targets: dict[str, dict[str, Any]] = {}
    rules: dict[str, dict[str, Any]] = {}
    histogram = [0] * (len(RATIO_EDGES) + 1)
    failures: Counter[str] = Counter()
    failed: list[tuple[str, str, str, bool]] = []  # the FAILED_LISTED smallest keys, sorted
    quality: dict[str, _Quality] = {}
    psnr_counts = [0] * (len(PSNR_EDGES) + 2)
    per_minute: Counter[int] = Counter()
    bytes_per_minute: Counter[int] = Counter()
    for row in rows:
        state = row["state"]
        if row["bytes_out"]:
            _add_saving(modalities, str(row["modality"] or "unknown"), row)
            _add_saving(targets, str(row["target"] or "none"), row)
        if row.get("rule"):  # a policy decided: every finished object counts for its rule
            _add_saving(rules, str(row["rule"]), row)
        if state == "done" and row["ratio"] is not None:
            histogram[ratio_bin(float(row["ratio"]))] += 1
        if state == "done" and row.get("max_error") is not None:  # a lossy result
            label = str(row["modality"] or "unknown")
            quality.setdefault(label, _Quality(label)).add(row["psnr"], row["max_error"])
            psnr = row["psnr"]
            psnr_counts[-1 if psnr is None else _bin(float(psnr), PSNR_EDGES)] += 1
        if state == "failed":
            failures[str(row["code"])] += 1
            if len(failed) < FAILED_LISTED or row["key"] < failed[-1][0]:
                entry = (row["key"], row["code"], row["message"], bool(row.get("copied")))
                bisect.insort(failed, entry)
                del failed[FAILED_LISTED:]
        if state in TERMINAL and row["updated"] > 0:
            minute = int(row["updated"]) // 60 * 60
            per_minute[minute] += 1
            bytes_per_minute[minute] += int(row["bytes_in"])
    written_in = sum(group["bytes_in"] for group in targets.values())
    written_out = sum(group["bytes_out"] for group in targets.values())
    states = {state: int(counts.get(state, 0)) for state in STATES}
    started, finished = counts.get("started_at", 0.0), counts.get("finished_at", 0.0)
    totals: dict[str, Any] = {
        "objects": sum(states.values()),
        **states,
        "bytes_in": int(counts.get("bytes_in", 0)),
        "bytes_out": int(counts.get("bytes_out", 0)),
        "written_bytes_in": written_in,
        "saved": written_in - written_out,
        "ratio": round(written_in / written_out, 4) if written_out else None,
        "started_at": int(started) or None,
        "finished_at": int(finished) or None,
        "seconds": int(finished - started) if started and finished >= started else None,
    }
    return {
        "by_modality": _most_saved(modalities),
        "by_target": _most_saved(targets),
        "by_rule": _most_saved(rules),
        "ratio_histogram": [
            {"label": label, "count": count}
            for label, count in zip(ratio_labels(), histogram, strict=True)
        ],
        "failures_by_code": [
            {"label": code, "count": count}
            for code, count in sorted(failures.items(), key=lambda item: (-item[1], item[0]))
        ],
        "throughput": _throughput(per_minute, bytes_per_minute),
        "failed_objects": [
            {"key": key, "code": code, "message": message, "copied": copied}
            for key, code, message, copied in failed
        ],
        "psnr_histogram": [
            {"label": label, "count": count}
            for label, count in zip(psnr_labels(), psnr_counts, strict=True)
        ]
        if quality
        else [],
        "quality_by_modality": [
            quality[label].row()
            for label in sorted(quality, key=lambda name: (-quality[name].objects, name))
        ],
        "totals": totals,
    }


# -- rendering ---------------------------------------------------------------------------


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


CHARTS = (
    Chart("by_modality", "Savings by modality", "saved", "bytes", "#2f6db5", True,
          "Bytes saved by objects with an output, per source Modality (0008,0060)."),
    Chart("by_target", "Savings by target", "saved", "bytes", "#1f8a70", True,
          "Bytes saved per target that took the object (skipped copies save nothing)."),
    Chart("by_rule", "Savings by policy rule", "saved", "bytes", "#3d7f9e", True,
          "Bytes saved per rule of the batch's policy (copies and skips save nothing)."),
    Chart("ratio_histogram", "Compression ratio distribution", "count", "count", "#7b4fb3",
          False, "Compressed objects per ratio (bytes in / bytes out)."),
    Chart("failures_by_code", "Failures by code", "count", "count", "#c0392b", True,
          "Failed objects per outcome code; copied unchanged unless storage refused them "
          "(or failed_output is none)."),
    Chart("psnr_histogram", "Quality of lossy results", "count", "count", "#8a5a1f", False,
          "Lossy results per PSNR (dB, peak 2^Bits Stored - 1); 'identical' decoded exactly."),
    Chart("throughput", "Throughput over time", "objects", "count", "#d27b1a", False,
          "Objects finished per minute (UTC, by the time of their last update).", wide=True),
)  # fmt: skip

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 40px; background: #f4f5f7; color: #1d2430;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", "Liberation Sans",
  Arial, sans-serif; }
header { margin-bottom: 20px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h1 code { font-size: 20px; background: #e3e7ee; padding: 1px 6px; border-radius: 4px; }
h2 { font-size: 16px; margin: 0 0 2px; }
.meta, .note { color: #5b6575; font-size: 12.5px; margin: 0 0 10px; }
.grid { display: grid; gap: 18px; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); }
.card { background: #fff; border: 1px solid #d9dee6; border-radius: 8px; padding: 16px 18px; }
.card.wide { grid-column: 1 / -1; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #eceff3;
  vertical-align: top; }
td.num { text-align: right; white-space: nowrap; }
th { color: #5b6575; font-weight: 600; font-size: 12.5px; }
.totals { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr));
  gap: 10px; margin-bottom: 14px; }
.tile { background: #f7f8fa; border: 1px solid #e3e7ee; border-radius: 6px; padding: 8px 12px; }
.tile b { display: block; font-size: 20px; font-variant-numeric: tabular-nums; }
.tile span { color: #5b6575; font-size: 12.5px; }
.failed b { color: #c0392b; }
table.totals-table { width: auto; min-width: 520px; }
.key { font-family: "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 12.5px;
  word-break: break-all; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font-family: inherit; fill: #1d2430; font-size: 12px; }
svg text.small { font-size: 11px; }
svg text.value { fill: #3a4350; }
svg .axis { stroke: #b9c0cb; stroke-width: 1; }
svg .grid { stroke: #eceff3; stroke-width: 1; }
svg .muted { fill: #5b6575; }
footer { margin-top: 22px; color: #5b6575; font-size: 12px; }
"""

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


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


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
        f'rx="2" fill="{color}" data-label="{_esc(label)}" data-value="{_esc(value)}">'
        f"<title>{_esc(tip)}</title></rect>"
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
        f'aria-label="{_esc(label)}">'
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
            f"{_esc(_tick(tick, chart.unit))}</text>"
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
            f"{_esc(shown)}</text>"
            + _bar(LABEL_WIDTH, y + 4, length, ROW_HEIGHT - 8, chart.color, label, value,
                   _tip(chart, item))
            + f'<text x="{LABEL_WIDTH + length + 6:.1f}" y="{baseline:.1f}" class="value">'
            f"{_esc(text)}</text>"
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
            f'class="muted small">{_esc(_tick(tick, chart.unit))}</text>'
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
                f'text-anchor="middle" class="value small">{_esc(_fmt(value, chart.unit))}</text>'
            )
        if index % every == 0:
            parts.append(
                f'<text x="{center:.1f}" y="{axis + 16}" text-anchor="middle" class="small">'
                f"{_esc(item['label'])}</text>"
            )
    caption = "ratio (bytes in / bytes out)" if chart.name == "ratio_histogram" else "UTC"
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


def _when(epoch: int | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _totals_html(totals: dict[str, Any]) -> str:
    ratio = f"{totals['ratio']:.2f}\u00d7" if totals["ratio"] else "-"
    tiles = [
        ("objects", f"{totals['objects']:,}", ""),
        ("done", f"{totals['done']:,}", ""),
        ("skipped", f"{totals['skipped']:,}", ""),
        ("failed", f"{totals['failed']:,}", " failed" if totals["failed"] else ""),
        ("saved", human_bytes(totals["saved"]), ""),
        ("ratio of written objects", ratio, ""),
    ]
    tile_html = "".join(
        f'<div class="tile{extra}"><b>{_esc(value)}</b><span>{_esc(name)}</span></div>'
        for name, value, extra in tiles
    )
    seconds = totals["seconds"]
    rows = [
        ("queued / running", f"{totals['queued']:,} / {totals['running']:,}"),
        ("bytes read (finished objects)", human_bytes(totals["bytes_in"])),
        ("bytes in (objects with an output)", human_bytes(totals["written_bytes_in"])),
        ("bytes written", human_bytes(totals["bytes_out"])),
        ("bytes saved", human_bytes(totals["saved"])),
        ("first object started", _when(totals["started_at"])),
        ("last object finished", _when(totals["finished_at"])),
        ("elapsed", f"{seconds:,} s" if seconds is not None else "-"),
    ]
    table = "".join(
        f'<tr><th scope="row">{_esc(name)}</th><td class="num">{_esc(value)}</td></tr>'
        for name, value in rows
    )
    return f'<div class="totals">{tile_html}</div><table class="totals-table">{table}</table>'


def _quality_html(rows: list[dict[str, Any]]) -> str:
    """The distribution of lossy results' quality per modality (nothing without any)."""
    if not rows:
        return ""

    def db(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    body = "".join(
        f'<tr><td>{_esc(item["label"])}</td><td class="num">{item["objects"]:,}</td>'
        f'<td class="num">{item["identical"]:,}</td><td class="num">{db(item["psnr_min"])}</td>'
        f'<td class="num">{db(item["psnr_p5"])}</td><td class="num">{db(item["psnr_median"])}</td>'
        f'<td class="num">{item["max_error"]:,}</td></tr>'
        for item in rows
    )
    return (
        '<section class="card wide" id="quality"><h2>Quality of lossy results by modality</h2>'
        '<p class="note">PSNR in dB against the largest value Bits Stored holds; 5 % of '
        "the results are at or below the p5 column; max error in stored pixel values.</p>"
        "<table><thead><tr><th>modality</th><th>objects</th><th>identical</th>"
        "<th>PSNR min</th><th>PSNR p5</th><th>PSNR median</th><th>largest max error</th>"
        f"</tr></thead><tbody>{body}</tbody></table></section>"
    )


def _failed_html(failed: list[dict[str, Any]], total: int) -> str:
    if not failed:
        return ""
    rows = "".join(
        f'<tr><td class="key">{_esc(item["key"])}</td><td>{_esc(item["code"])}</td>'
        f"<td>{'copied' if item.get('copied') else '-'}</td>"
        f"<td>{_esc(item['message'])}</td></tr>"
        for item in failed
    )
    more = f" (first {len(failed)} of {total:,}, by key)" if total > len(failed) else ""
    return (
        f'<section class="card wide"><h2>Failed objects{_esc(more)}</h2>'
        '<p class="note">Full list: <code>dcmpress report BATCH --format csv</code>.</p>'
        "<table><thead><tr><th>key</th><th>code</th><th>output</th><th>message</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )


def _json_for_script(data: dict[str, Any]) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>``, no ``<!--``)."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render_html(batch: str, data: dict[str, Any]) -> str:
    """The whole report page for ``batch`` from :func:`chart_data`'s ``data``."""
    charts = "".join(
        f'<section class="card{" wide" if chart.wide else ""}">'
        f'<h2>{_esc(chart.title)}</h2><p class="note">{_esc(chart.note)}</p>'
        f"{chart_svg(chart, data[chart.name])}</section>"
        for chart in CHARTS
        # by rule only with a policy, quality only with lossy results
        if chart.name not in ("by_rule", "psnr_histogram") or data[chart.name]
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"dcmpress report \u2014 {batch}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>dcmpress report <code>{_esc(batch)}</code></h1>"
        f'<p class="meta">Generated {_esc(generated)} from the ledger. Sizes in decimal '
        "units (1 kB = 1000 bytes). Hover a bar for its exact figures.</p></header>"
        f'<section class="card wide" id="totals"><h2>Totals</h2>'
        f"{_totals_html(data['totals'])}</section>"
        f'<div class="grid" style="margin-top:18px">{charts}'
        f"{_quality_html(data['quality_by_modality'])}"
        f"{_failed_html(data['failed_objects'], data['totals']['failed'])}</div>"
        "<footer>Self-contained page: no JavaScript, no external resources. The chart "
        "data is embedded as JSON in <code>script#chart-data</code>.</footer>"
        f'<script type="application/json" id="chart-data">{_json_for_script(data)}</script>'
        "</body></html>\n"
    )


def write_html(ledger: Ledger, batch: str, path: Path) -> None:
    """Write the HTML report of ``batch`` to ``path`` (UTF-8)."""
    data = chart_data(report_rows(ledger, batch), ledger.counts(batch))
    path.write_text(render_html(batch, data), encoding="utf-8")
