"""``dcmpress compress`` (files on local disk) and ``dcmpress doctor`` (what this
installation can encode)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dcmpress.commands.common import POLICY_HELP, policy_rules
from dcmpress.console import EXIT_FAILED, fail
from dcmpress.listing import Listing, open_listing
from dcmpress.local import count_jobs, plan_jobs, plan_listed, run_all, skip_written
from dcmpress.options import compression_flags
from dcmpress.views import Tally, doctor_table, summary_table
from worker.codec.options import CompressionOptions
from worker.codec.targets import all_plugin_status
from worker.cores import usable_cores
from worker.errors import CODES, ConfigurationError
from worker.policy import Policy


@compression_flags
def compress(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Files or directory trees (or --files-from).")
    ] = None,
    *,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    processes: Annotated[
        int, typer.Option("--processes", "-j", help="Worker processes (default: the usable cores).")
    ] = 0,
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="One JSON record per input file on stdout.")
    ] = False,
    policy: Annotated[
        Path | None,
        typer.Option(help=POLICY_HELP),
    ] = None,
    files_from: Annotated[
        Path | None,
        typer.Option(
            "--files-from",
            help="Take the inputs from this list, one path per line (`-`: standard input), "
            "instead of PATHS: one run for any number of files. Each output is its path "
            "as listed, under OUT.",
        ),
    ] = None,
    null: Annotated[
        bool,
        typer.Option("--null", "-0", help="--files-from entries end in NUL (find -print0)."),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Skip the inputs whose output is there already and newer than the input "
            "(run again after an interruption, with the same options): recorded "
            "skipped/output_exists.",
        ),
    ] = False,
    options: CompressionOptions,
) -> None:
    """Compress DICOM files on local disk into OUT, verifying every result."""
    rules = policy_rules(policy, options)
    if files_from is not None and paths:
        raise fail("give PATHS or --files-from, not both")
    if files_from is None and not paths:
        raise fail("no input: give PATHS or --files-from")
    if null and files_from is None:
        raise fail("--null applies to --files-from only")
    with open_listing(files_from, b"\0" if null else b"\n") as listing:
        _compress(paths or [], listing, out, processes, jsonl, rules, options, resume)


def _compress(
    paths: list[Path],
    listing: Listing | None,
    out: Path,
    processes: int,
    jsonl: bool,
    rules: Policy | None,
    options: CompressionOptions,
    resume: bool,
) -> None:
    try:
        # every input checked before any file is written
        total = count_jobs(paths, out, listing)
    except ConfigurationError as exc:
        raise fail(str(exc)) from None
    workers = processes or usable_cores()
    console = Console(stderr=True)
    tally = Tally()
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
        task = progress.add_task("compress", total=total, saved="")

        def on_record(item: dict[str, Any]) -> None:
            tally.add(item)
            if jsonl:
                sys.stdout.write(json.dumps(item) + "\n")
                sys.stdout.flush()
            progress.update(task, advance=1, saved=tally.saved_text())

        try:
            # the trees are walked again as the run goes, not held in memory
            jobs = plan_listed(listing, out) if listing else plan_jobs(paths, out)
            if resume:
                jobs = skip_written(jobs, on_record)
            run_all(jobs, options, workers, on_record, rules)
        except ConfigurationError as exc:  # a tree changed since it was counted
            raise fail(str(exc)) from None
    (console if jsonl else Console()).print(summary_table(tally))
    if tally.failed:
        raise typer.Exit(1)


def doctor(
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit 1 if any plugin is missing (an image build's check)."),
    ] = False,
) -> None:
    """List targets, their plugins, and which are installed."""
    console = Console()
    statuses = all_plugin_status()
    console.print(doctor_table(statuses, console.width))
    console.print(f"{len(CODES)} outcome codes; see docs/reference/outcome-codes.md.")
    missing = [f"{s.target.name}/{s.plugin.name}" for s in statuses if not s.available]
    if strict and missing:
        raise fail(f"missing plugins: {', '.join(missing)}", EXIT_FAILED)
