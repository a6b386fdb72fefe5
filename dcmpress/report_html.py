"""A self-contained HTML report of one batch: totals and bar charts, viewable offline.

The page (:mod:`dcmpress.page`) has no JavaScript and no external resource; its charts
are inline SVG (:mod:`dcmpress.charts`). The chart data is embedded as well, in
``<script type="application/json" id="chart-data">``, and every bar carries its label and
value, so the page can be checked by machine against the ledger.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from dcmpress.charts import Chart, chart_card, human_bytes
from dcmpress.page import document, escape, table, tiles
from dcmpress.reports import report_rows
from worker.errors import TERMINAL
from worker.runtime.ledger import Ledger
from worker.runtime.records import STATES

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


CHARTS = (
    Chart("by_modality", "Savings by modality", "saved", "bytes", "#2f6db5", True,
          "Bytes saved by objects with an output, per source Modality (0008,0060)."),
    Chart("by_target", "Savings by target", "saved", "bytes", "#1f8a70", True,
          "Bytes saved per target that took the object (skipped copies save nothing)."),
    Chart("by_rule", "Savings by policy rule", "saved", "bytes", "#3d7f9e", True,
          "Bytes saved per rule of the batch's policy (copies and skips save nothing)."),
    Chart("ratio_histogram", "Compression ratio distribution", "count", "count", "#7b4fb3",
          False, "Compressed objects per ratio (bytes in / bytes out).",
          axis="ratio (bytes in / bytes out)"),
    Chart("failures_by_code", "Failures by code", "count", "count", "#c0392b", True,
          "Failed objects per outcome code; copied unchanged unless storage refused them "
          "(or failed_output is none)."),
    Chart("psnr_histogram", "Quality of lossy results", "count", "count", "#8a5a1f", False,
          "Lossy results per PSNR (dB, peak 2^Bits Stored - 1); 'identical' decoded exactly.",
          axis="PSNR (dB)"),
    Chart("throughput", "Throughput over time", "objects", "count", "#d27b1a", False,
          "Objects finished per minute (UTC, by the time of their last update).", wide=True,
          axis="UTC"),
)  # fmt: skip


def _when(epoch: int | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _totals_html(totals: dict[str, Any]) -> str:
    ratio = f"{totals['ratio']:.2f}\u00d7" if totals["ratio"] else "-"
    figures = [
        ("objects", f"{totals['objects']:,}", "", ""),
        ("done", f"{totals['done']:,}", "", ""),
        ("skipped", f"{totals['skipped']:,}", "", ""),
        ("failed", f"{totals['failed']:,}", "", "failed" if totals["failed"] else ""),
        ("saved", human_bytes(totals["saved"]), "", ""),
        ("ratio of written objects", ratio, "", ""),
    ]
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
    rows_html = "".join(
        f'<tr><th scope="row">{escape(name)}</th><td class="num">{escape(value)}</td></tr>'
        for name, value in rows
    )
    return f'{tiles(figures)}<table class="totals-table">{rows_html}</table>'


def _quality_html(rows: list[dict[str, Any]]) -> str:
    """The distribution of lossy results' quality per modality (nothing without any)."""
    if not rows:
        return ""

    def db(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    quality = table(
        ["modality", "objects", "identical", "PSNR min", "PSNR p5", "PSNR median",
         "largest max error"],
        [[item["label"], f"{item['objects']:,}", f"{item['identical']:,}", db(item["psnr_min"]),
          db(item["psnr_p5"]), db(item["psnr_median"]), f"{item['max_error']:,}"]
         for item in rows],
        {1, 2, 3, 4, 5, 6},
    )  # fmt: skip
    return (
        '<section class="card wide" id="quality"><h2>Quality of lossy results by modality</h2>'
        '<p class="note">PSNR in dB against the largest value Bits Stored holds; 5 % of '
        "the results are at or below the p5 column; max error in stored pixel values.</p>"
        f"{quality}</section>"
    )


def _failed_html(failed: list[dict[str, Any]], total: int) -> str:
    if not failed:
        return ""
    rows = "".join(
        f'<tr><td class="key">{escape(item["key"])}</td><td>{escape(item["code"])}</td>'
        f"<td>{'copied' if item.get('copied') else '-'}</td>"
        f"<td>{escape(item['message'])}</td></tr>"
        for item in failed
    )
    more = f" (first {len(failed)} of {total:,}, by key)" if total > len(failed) else ""
    return (
        f'<section class="card wide"><h2>Failed objects{escape(more)}</h2>'
        '<p class="note">Full list: <code>dcmpress report BATCH --format csv</code>.</p>'
        "<table><thead><tr><th>key</th><th>code</th><th>output</th><th>message</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )


def render_html(batch: str, data: dict[str, Any]) -> str:
    """The whole report page for ``batch`` from :func:`chart_data`'s ``data``."""
    charts = "".join(
        chart_card(chart, data[chart.name])
        for chart in CHARTS
        # by rule only with a policy, quality only with lossy results
        if chart.name not in ("by_rule", "psnr_histogram") or data[chart.name]
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = (
        f"Generated {generated} from the ledger. Sizes in decimal units (1 kB = 1000 bytes). "
        "Hover a bar for its exact figures."
    )
    body = (
        f'<section class="card wide" id="totals"><h2>Totals</h2>'
        f"{_totals_html(data['totals'])}</section>"
        f'<div class="grid" style="margin-top:18px">{charts}'
        f"{_quality_html(data['quality_by_modality'])}"
        f"{_failed_html(data['failed_objects'], data['totals']['failed'])}</div>"
    )
    return document("report", batch, meta, body, "The chart data", "chart-data", data)


def write_html(ledger: Ledger, batch: str, path: Path) -> None:
    """Write the HTML report of ``batch`` to ``path`` (UTF-8)."""
    data = chart_data(report_rows(ledger, batch), ledger.counts(batch))
    path.write_text(render_html(batch, data), encoding="utf-8")
