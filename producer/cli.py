"""The ``dcmpress`` command line: thin commands over the modules beside it."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from producer.local import plan_jobs, run_all
from producer.samples import demo_files
from worker.codecs import TARGETS, all_plugin_status, resolve_plugin
from worker.errors import CODES, ConfigurationError
from worker.settings import CompressionOptions, EngineSettings

app = typer.Typer(
    help="Compress DICOM archives losslessly (or lossily, if you choose), verified.",
    no_args_is_help=True,
    add_completion=False,
)


def main() -> None:
    """Console-script entry point."""
    app()


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] {message}")
    return typer.Exit(2)


def build_options(overrides: dict[str, Any]) -> CompressionOptions:
    """Environment settings (``DCMPRESS_*``) overlaid with the flags actually given."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        base = EngineSettings().compression_options()
        options = CompressionOptions.model_validate({**base.model_dump(), **given})
        for target in options.targets():  # a missing plugin fails here, before any work
            resolve_plugin(target, options.plugin_for(target))
    except ValidationError as exc:
        raise _fail(_validation_message(exc)) from None
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None
    return options


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "options"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


@app.command()
def compress(
    paths: Annotated[list[Path], typer.Argument(help="Files or directory trees.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    target: Annotated[
        str | None,
        typer.Option(
            help="Target, or comma-separated fallbacks (e.g. j2k,rle). Names: " + ", ".join(TARGETS)
        ),
    ] = None,
    plugin: Annotated[
        str | None,
        typer.Option(help="Encoding plugin: NAME, or TARGET=NAME pairs, comma-separated."),
    ] = None,
    jls_error: Annotated[int | None, typer.Option(help="jpeg-ls-near: max pixel error.")] = None,
    j2k_cr: Annotated[
        str | None, typer.Option(help="j2k-lossy: compression ratios per layer, e.g. 20,5.")
    ] = None,
    j2k_psnr: Annotated[
        str | None, typer.Option(help="j2k-lossy: PSNR (dB) per layer, e.g. 80,300.")
    ] = None,
    encapsulate_ext: Annotated[
        bool | None,
        typer.Option("--encapsulate-ext/--no-encapsulate-ext", help="Extended Offset Table."),
    ] = None,
    new_uid: Annotated[
        bool | None,
        typer.Option(
            "--new-uid/--keep-uid",
            help="Generate a new SOP Instance UID (default: only for lossy targets).",
        ),
    ] = None,
    plugin_option: Annotated[
        list[str] | None,
        typer.Option(help="Plugin keyword option KEY=JSON_VALUE (repeatable)."),
    ] = None,
    verify: Annotated[
        bool | None, typer.Option("--verify/--no-verify", help="Decode and compare results.")
    ] = None,
    unsupported: Annotated[
        str | None, typer.Option(help="Images no target can take: skip (copy) or fail.")
    ] = None,
    transcode: Annotated[
        bool | None,
        typer.Option("--transcode/--no-transcode", help="Re-encode lossless compressed input."),
    ] = None,
    no_pixel_data: Annotated[
        str | None, typer.Option(help="Objects without pixel data: copy or skip.")
    ] = None,
    min_ratio: Annotated[
        float | None, typer.Option(help="Keep results at least this many times smaller.")
    ] = None,
    processes: Annotated[
        int, typer.Option("--processes", "-j", help="Worker processes (default: all cores).")
    ] = 0,
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="One JSON record per input file on stdout.")
    ] = False,
) -> None:
    """Compress DICOM files on local disk into OUT, verifying every result."""
    options = build_options(
        {
            "target": target,
            "encoding_plugin": plugin,
            "jls_error": jls_error,
            "j2k_cr": j2k_cr,
            "j2k_psnr": j2k_psnr,
            "encapsulate_ext": encapsulate_ext,
            "generate_instance_uid": new_uid,
            "plugin_options": _parse_plugin_options(plugin_option),
            "verify": verify,
            "unsupported": unsupported,
            "transcode": transcode,
            "no_pixel_data": no_pixel_data,
            "min_ratio": min_ratio,
        }
    )
    try:
        jobs = list(plan_jobs(paths, out))
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None
    workers = processes or os.cpu_count() or 1
    console = Console(stderr=True)
    records: list[dict[str, Any]] = []
    progress = Progress(
        TextColumn("[bold]compress"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[saved]}"),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task("compress", total=len(jobs), saved="")

        def on_record(item: dict[str, Any]) -> None:
            records.append(item)
            if jsonl:
                sys.stdout.write(json.dumps(item) + "\n")
                sys.stdout.flush()
            progress.update(task, advance=1, saved=_saved_text(records))

        run_all(jobs, options, workers, on_record)
    (console if jsonl else Console()).print(summary_table(records))
    if any(item["outcome"] == "failed" for item in records):
        raise typer.Exit(1)


def _parse_plugin_options(items: list[str] | None) -> dict[str, Any] | None:
    if not items:
        return None
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise _fail(f"--plugin-option {item!r}: expected KEY=VALUE")
        try:
            parsed[key] = json.loads(raw)
        except json.JSONDecodeError:
            parsed[key] = raw
    return parsed


def _saved_text(records: list[dict[str, Any]]) -> str:
    bytes_in = sum(r["bytes_in"] for r in records if r["output"])
    bytes_out = sum(r["bytes_out"] for r in records if r["output"])
    if not bytes_out:
        return ""
    return f"{(bytes_in - bytes_out) / 1e6:,.1f} MB saved ({bytes_in / bytes_out:.2f}x)"


def summary_table(records: list[dict[str, Any]]) -> Table:
    """Counts, bytes and ratio by outcome and code."""
    table = Table(title="dcmpress summary")
    for column in ("outcome", "code", "files", "MB in", "MB out", "ratio"):
        table.add_column(column, justify="left" if column in ("outcome", "code") else "right")
    groups: Counter[tuple[str, str]] = Counter()
    sizes: dict[tuple[str, str], list[int]] = {}
    for item in records:
        key = (item["outcome"], item["code"])
        groups[key] += 1
        totals = sizes.setdefault(key, [0, 0])
        totals[0] += item["bytes_in"]
        totals[1] += item["bytes_out"]
    order = {"done": 0, "skipped": 1, "failed": 2}
    for key in sorted(groups, key=lambda k: (order.get(k[0], 3), k[1])):
        bytes_in, bytes_out = sizes[key]
        ratio = f"{bytes_in / bytes_out:.2f}" if bytes_out else "-"
        style = {"done": "green", "skipped": "yellow", "failed": "red"}.get(key[0], "")
        table.add_row(
            f"[{style}]{key[0]}[/]",
            key[1],
            str(groups[key]),
            f"{bytes_in / 1e6:,.2f}",
            f"{bytes_out / 1e6:,.2f}",
            ratio,
        )
    total_in = sum(r["bytes_in"] for r in records)
    total_out = sum(r["bytes_out"] for r in records)
    table.add_section()
    table.add_row(
        "all",
        "",
        str(len(records)),
        f"{total_in / 1e6:,.2f}",
        f"{total_out / 1e6:,.2f}",
        f"{total_in / total_out:.2f}" if total_out else "-",
    )
    return table


@app.command()
def samples(
    directory: Annotated[Path, typer.Argument(help="Where to write the sample files.")],
) -> None:
    """Write sample DICOM files (pydicom's bundled examples and synthetic images)."""
    count = 0
    for name, data in demo_files():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        count += 1
    Console(stderr=True).print(f"wrote {count} sample files to {directory}")


@app.command()
def doctor() -> None:
    """List targets, their plugins, and which are installed."""
    console = Console()
    table = Table(title="dcmpress targets and plugins")
    for column in ("target", "transfer syntax", "lossy", "plugin", "status", "to install"):
        table.add_column(column)
    for status in all_plugin_status():
        target = status.target
        table.add_row(
            target.name,
            target.uid,
            "yes" if target.lossy else "no",
            status.plugin.name,
            "[green]available[/]" if status.available else f"[red]missing[/] ({status.missing})",
            "" if status.available else status.install_hint,
        )
    console.print(table)
    console.print(f"{len(CODES)} outcome codes; see README 'Outcome codes'.")
