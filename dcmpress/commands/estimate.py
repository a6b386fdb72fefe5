"""``dcmpress estimate``: what compressing a prefix (or local files) saves and costs,
from a sample; the estimate itself is :mod:`dcmpress.estimate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dcmpress.commands.common import (
    POLICY_HELP,
    ExcludeSuffix,
    MaxSize,
    MinSize,
    Suffix,
    key_filter,
    policy_rules,
    settings_or_exit,
)
from dcmpress.console import EXIT_FAILED, explain, fail
from dcmpress.options import compression_flags
from dcmpress.views import estimate_tables
from worker.codec.options import CompressionOptions
from worker.cores import usable_cores
from worker.errors import ConfigurationError, DcmpressError

if TYPE_CHECKING:
    from dcmpress.estimate import LocalSource, S3Source
    from worker.runtime.contract import S3Location


@compression_flags
def estimate(
    sources: Annotated[
        list[str], typer.Argument(help="s3://bucket/prefix, or local files and directories.")
    ],
    policy: Annotated[Path | None, typer.Option(help=POLICY_HELP)] = None,
    sample: Annotated[int, typer.Option(help="Objects to compress (not uploaded).")] = 200,
    headers: Annotated[
        int, typer.Option(help="Objects whose header is read (ranged GETs), at least --sample.")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    processes: Annotated[
        int,
        typer.Option(
            "--processes", "-j", help="Compressing processes (default: the usable cores)."
        ),
    ] = 0,
    json_output: Annotated[
        bool, typer.Option("--json", help="The estimate as JSON on stdout.")
    ] = False,
    html: Annotated[Path | None, typer.Option(help="Also write an HTML page here.")] = None,
    price_per_gb_month: Annotated[
        float | None, typer.Option(help="USD per GB-month (default: the class's list price).")
    ] = None,
    storage_class: Annotated[
        str, typer.Option(help="S3 storage class whose list price to use.")
    ] = "STANDARD",
    overhead_ms: Annotated[
        float | None,
        typer.Option(
            help="CPU ms per object besides fetch and engine (default: 7 for S3, as "
            "measured for a worker; 1 for local files)."
        ),
    ] = None,
    dest: Annotated[
        str | None, typer.Option(help="s3://... outputs will go to; not counted if inside.")
    ] = None,
    suffix: Suffix = None,
    exclude_suffix: ExcludeSuffix = None,
    min_size: MinSize = 1,
    max_size: MaxSize = None,
    *,
    options: CompressionOptions,
) -> None:
    """Estimate what compressing a prefix (or local files) saves and costs, from a sample."""
    from dcmpress.estimate import (
        LocalSource,
        Plan,
        S3Source,
        build_report,
        run_estimate,
        write_estimate_html,
    )
    from dcmpress.estimate import price_per_gb_month as pick_price
    from worker.runtime.contract import S3Location

    rules = policy_rules(policy, options)
    try:
        price, price_source = pick_price(storage_class, price_per_gb_month)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if sample < 1 or headers < 1:
        raise fail("--sample and --headers must be at least 1")
    remote = [s for s in sources if s.startswith("s3://")]
    if remote and len(sources) > 1:
        raise fail("give one s3://bucket/prefix, or local paths (not both)")
    source: S3Source | LocalSource
    where: S3Location | None = None
    dest_location: S3Location | None = None
    try:
        if remote:
            where = S3Location.parse(remote[0])
            dest_location = S3Location.parse(dest) if dest else None
        else:
            missing = [s for s in sources if not Path(s).exists()]
            if missing:
                raise fail(f"no such file or directory: {', '.join(missing)}")
    except ConfigurationError as exc:
        raise fail(str(exc)) from None
    filtered = key_filter(where, dest_location, suffix, exclude_suffix, min_size, max_size)
    if where is not None:
        source = S3Source(where.bucket, where.prefix, settings_or_exit(), filtered)
    else:
        source = LocalSource([Path(s) for s in sources], filtered)
    console = Console(stderr=True)
    plan = Plan(sample, headers, seed, processes or usable_cores())
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=False,
    )  # fmt: skip
    with progress:
        tasks: dict[str, Any] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total or None)
            progress.update(tasks[phase], completed=done, total=total or None)

        try:
            population, header_list, samples = run_estimate(
                source, options, rules, plan, on_progress
            )
        except DcmpressError as exc:
            raise fail(explain(exc) or str(exc), EXIT_FAILED) from None
    if not population.objects:
        raise fail(f"no objects under {source.name}", EXIT_FAILED)
    report = build_report(
        source.name, options, str(policy) if policy else None, population, header_list,
        samples, source.overhead_ms if overhead_ms is None else overhead_ms, price,
        price_source, storage_class.upper(), seed, dict(filtered.rejected),
    )  # fmt: skip
    if html is not None:
        write_estimate_html(report, html)
        console.print(f"estimate page written to {html}")
    if json_output:
        print(json.dumps(report))
        return
    out = Console()
    for table in estimate_tables(report):
        out.print(table)
    for note in report["notes"]:
        out.print(note, highlight=False, markup=False)
