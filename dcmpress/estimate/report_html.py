"""The ``dcmpress estimate --html`` page: self-contained, like the batch report.

The page is :mod:`dcmpress.page`'s and its charts are :mod:`dcmpress.charts`'; the whole
estimate is embedded as JSON in ``<script type="application/json" id="estimate-data">``.
Keys, modalities, rule names, codes and messages come from the archive, so every text
is escaped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dcmpress.charts import Chart, chart_card, human_bytes
from dcmpress.page import document, escape, table, tiles

CHARTS = (
    Chart("by_modality", "Projected savings by modality", "saved", "bytes", "#2f6db5", True,
          "Bytes saved per source Modality, projected over every object listed."),
    Chart("by_target", "Projected savings by target", "saved", "bytes", "#1f8a70", True,
          "Bytes saved per target the sampled objects took (copy/skip saves nothing)."),
    Chart("cpu_by_target", "Projected CPU seconds by target", "cpu_seconds", "seconds",
          "#d27b1a", True, "Worker CPU seconds for the whole prefix, per target."),
)  # fmt: skip


def _ratio(value: float | None) -> str:
    return f"{value:.2f}\u00d7" if value else "-"


def _tiles(report: dict[str, Any]) -> str:
    saving, cpu, money = report["saving"], report["cpu"], report["money"]
    level = f"{saving['confidence']:.0%}"
    return tiles([
        ("bytes saved", human_bytes(saving["bytes"]),
         f"{human_bytes(saving['low'])} \u2013 {human_bytes(saving['high'])} ({level})", ""),
        ("ratio of written objects", _ratio(saving["ratio"]), "", ""),
        ("CPU core-hours", f"{cpu['core_hours']:,.4g}",
         f"{cpu['low']:,.4g} \u2013 {cpu['high']:,.4g} ({level})", ""),
        ("saving per month", f"${money['monthly']:,.2f}",
         f"${money['monthly_low']:,.2f} \u2013 ${money['monthly_high']:,.2f}", ""),
        ("saving per year", f"${money['yearly']:,.2f}", "", ""),
        ("objects listed", f"{report['population']['objects']:,}",
         human_bytes(report["population"]["bytes"]), ""),
    ])  # fmt: skip


def render_estimate_html(report: dict[str, Any]) -> str:
    """The whole page for :func:`dcmpress.estimate.report.build_report`'s ``report``."""
    data = {**report, "cpu_by_target": sorted(
        report["by_target"], key=lambda row: (-row["cpu_seconds"], row["label"])
    )}  # fmt: skip
    charts = "".join(chart_card(chart, data[chart.name]) for chart in CHARTS)
    strata = table(
        ["size", "kind", "rule", "objects", "bytes", "headers", "samples", "ratio", "saved",
         "rates from"],
        [[s["size_class"], s["kind"], s["rule"] or "", f"{s['objects']:,}",
          human_bytes(s["bytes"]), s["headers"], s["samples"], _ratio(s["ratio"]),
          human_bytes(s["saved"]) if s["saved"] is not None else "-", s["rates_from"]]
         for s in report["strata"]],
        {3, 4, 5, 6, 7, 8},
    )  # fmt: skip
    domains = "".join(
        f'<section class="card"><h2>Per {escape(title)}</h2>'
        + table(
            [title, "objects", "bytes in", "saved", "ratio", "core-hours", "samples"],
            [
                [
                    row["label"],
                    f"{row['objects']:,}",
                    human_bytes(row["bytes_in"]),
                    human_bytes(row["saved"]),
                    _ratio(row["ratio"]),
                    f"{row['core_hours']:,.4g}",
                    row["samples"],
                ]
                for row in report[name]
            ],
            {1, 2, 3, 4, 5, 6},
        )
        + "</section>"
        for name, title in (("by_modality", "modality"), ("by_target", "target"))
    )
    outcomes = table(
        ["outcome", "code", "objects"],
        [[row["outcome"], row["code"], row["count"]] for row in report["outcomes"]],
        {2},
    )
    failed = ""
    if report["failed_samples"]:
        failed = (
            '<section class="card wide"><h2>Failed samples</h2>'
            + table(
                ["key", "code", "message"],
                [[row["key"], row["code"], row["message"]] for row in report["failed_samples"]],
                set(),
            )
            + "</section>"
        )
    notes = "".join(f"<li>{escape(note)}</li>" for note in report["notes"])
    sample, money = report["sample"], report["money"]
    meta = (
        f"{sample['headers']:,} headers read ({human_bytes(sample['header_bytes_read'])}), "
        f"{sample['compressed']:,} objects compressed ({human_bytes(sample['compressed_bytes'])})"
        f", seed {sample['seed']}; target {','.join(report['target'])}"
        + (f", policy {report['policy']}" if report["policy"] else "")
        + f"; {money['storage_class']} at ${money['price_per_gb_month']:g} per GB-month "
        f"({money['price_source']}). Generated {datetime.now(UTC):%Y-%m-%d %H:%M UTC}."
    )
    body = (
        f'<section class="card wide" id="totals"><h2>Projection</h2>{_tiles(report)}'
        f'<ul class="note">{notes}</ul></section>'
        f'<div class="grid" style="margin-top:18px">{charts}{domains}'
        f'<section class="card wide"><h2>Strata</h2>{strata}</section>'
        f'<section class="card"><h2>Outcomes of the compressed sample</h2>{outcomes}</section>'
        f"{failed}</div>"
    )
    return document("estimate", report["source"], meta, body, "The estimate", "estimate-data", data)


def write_estimate_html(report: dict[str, Any], path: Path) -> None:
    """Write the estimate page to ``path`` (UTF-8)."""
    path.write_text(render_estimate_html(report), encoding="utf-8")
