"""The self-contained HTML page the batch report and the estimate are drawn on.

No JavaScript, no external URL and no web font: the page opens from a file (or an
e-mail attachment) in any browser. Its data is embedded as JSON in a
``<script type="application/json">`` element so it can be checked by machine. Keys,
codes, messages, modalities and target names come from the archive and the workers,
so every text is escaped here.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any

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


def escape(text: object) -> str:
    """``text`` safe as HTML content and as an attribute value."""
    return html.escape(str(text), quote=True)


def json_for_script(data: dict[str, Any]) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>``, no ``<!--``)."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def table(head: list[str], rows: Iterable[list[object]], numeric: set[int]) -> str:
    """A table of escaped cells; the columns numbered in ``numeric`` right-aligned."""
    header = "".join(f"<th>{escape(cell)}</th>" for cell in head)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(cell)}</td>'
            if index in numeric
            else f"<td>{escape(cell)}</td>"
            for index, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def tiles(items: Iterable[tuple[str, str, str, str]]) -> str:
    """The row of big figures: ``(name, value, detail, css class)`` each, the detail
    (if any) on a second line under the name."""
    return '<div class="totals">' + "".join(
        f'<div class="tile{" " + css if css else ""}"><b>{escape(value)}</b>'
        f"<span>{escape(name)}" + (f"<br>{escape(detail)}" if detail else "") + "</span></div>"
        for name, value, detail, css in items
    ) + "</div>"  # fmt: skip


def document(
    command: str, subject: str, meta: str, body: str, embedded: str, data_id: str,
    data: dict[str, Any],
) -> str:  # fmt: skip
    """The whole page of ``dcmpress {command} {subject}``: ``meta`` (text) under the
    heading, ``body`` (HTML), and ``data`` (what ``embedded`` names) as JSON in
    ``script#{data_id}``."""
    title = f"dcmpress {command} \u2014 {subject}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>dcmpress {command} <code>{escape(subject)}</code></h1>"
        f'<p class="meta">{escape(meta)}</p></header>'
        f"{body}"
        "<footer>Self-contained page: no JavaScript, no external resources. "
        f"{embedded} is embedded as JSON in <code>script#{data_id}</code>.</footer>"
        f'<script type="application/json" id="{data_id}">{json_for_script(data)}</script>'
        "</body></html>\n"
    )
