"""The ``dcmpress`` command line: thin commands over the modules beside it."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from dcmpress.console import (
    EXIT_FAILED,
    explain,
    fail,
    resolve_batch,
    validation_message,
)
from dcmpress.listing import Listing
from dcmpress.local import (
    count_jobs,
    files_under,
    plan_jobs,
    plan_listed,
    run_all,
    skip_written,
)
from dcmpress.options import build_options, compression_flags
from dcmpress.views import (
    RateWindow,
    Tally,
    batches_table,
    doctor_table,
    render,
    rule_names,
    snapshot,
    summary_table,
)
from worker.codec.targets import all_plugin_status
from worker.cores import usable_cores
from worker.errors import CODES, ConfigurationError, DcmpressError
from worker.settings import CompressionOptions, WorkerSettings

if TYPE_CHECKING:
    from producer.enqueue import Enqueuer, EnqueueReport
    from producer.sources import KeyFilter
    from worker.policy import Policy
    from worker.runtime.contract import S3Location
    from worker.runtime.ledger import Ledger

# the key filter's options, the same for enqueue, listen and estimate
Suffix = Annotated[list[str] | None, typer.Option(help="Only keys ending so (repeatable).")]
ExcludeSuffix = Annotated[list[str] | None, typer.Option(help="Skip keys ending so.")]
MinSize = Annotated[int, typer.Option(help="Skip smaller objects (bytes).")]
MaxSize = Annotated[int | None, typer.Option(help="Skip larger objects (bytes).")]

BATCH_HELP = "Batch id, or a unique start of one (see `dcmpress batches`)."

app = typer.Typer(
    help="Compress DICOM archives losslessly (or lossily, if you choose), verified.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold credentials
)
_debug = False


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of any failure.")
    ] = False,
) -> None:
    global _debug
    _debug = debug or os.environ.get("DCMPRESS_DEBUG", "") not in ("", "0")


def main() -> None:
    """Console-script entry point: expected failures are one line, not a traceback."""
    try:
        app()
    except Exception as exc:
        line = None if _debug else explain(exc)
        if line is None:
            raise
        raise SystemExit(fail(line, EXIT_FAILED).exit_code) from None


POLICY_HELP = "A policy file (TOML): its first matching rule decides each object."


@app.command()
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
    rules = _policy_rules(policy, options)
    if files_from is not None and paths:
        raise fail("give PATHS or --files-from, not both")
    if files_from is None and not paths:
        raise fail("no input: give PATHS or --files-from")
    if null and files_from is None:
        raise fail("--null applies to --files-from only")
    with _listing(files_from, b"\0" if null else b"\n") as listing:
        _compress(paths or [], listing, out, processes, jsonl, rules, options, resume)


@contextlib.contextmanager
def _listing(files_from: Path | None, separator: bytes) -> Iterator[Listing | None]:
    """The --files-from list; standard input is copied to a temporary file first, as
    the list is read twice (counted, then run)."""
    if files_from is None:
        yield None
    elif str(files_from) == "-":
        with tempfile.NamedTemporaryFile(prefix="dcmpress-list-") as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool)
            spool.flush()
            yield Listing(Path(spool.name), separator, name="standard input")
    else:
        yield Listing(files_from, separator)


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


def _read_policy(path: Path | None, options: CompressionOptions) -> tuple[str, Policy] | None:
    """The policy file at ``path``, read and parsed once, and checked against
    ``options``: its text (what a batch stores) and its rules; exit 2 naming the line
    and field if it is not valid. None without a policy."""
    if path is None:
        return None
    from worker.policy import read_policy

    try:
        text, rules = read_policy(path)
        rules.check(options)
    except ConfigurationError as exc:
        raise fail(str(exc)) from None
    return text, rules


def _policy_text(path: Path | None, options: CompressionOptions) -> str | None:
    """:func:`_read_policy`'s text."""
    read = _read_policy(path, options)
    return read[0] if read else None


def _policy_rules(path: Path | None, options: CompressionOptions) -> Policy | None:
    """:func:`_read_policy`'s rules."""
    read = _read_policy(path, options)
    return read[1] if read else None


def _key_filter(
    source: S3Location | None,
    dest: S3Location | None,
    suffix: list[str] | None,
    exclude_suffix: list[str] | None,
    min_size: int,
    max_size: int | None,
) -> KeyFilter:
    """The listing's filter from the key-filter options; it never takes our own outputs
    when the destination lies inside the source."""
    from producer.sources import KeyFilter

    excluded: tuple[str, ...] = ()
    if source and dest and dest.bucket == source.bucket and dest.prefix:
        excluded = (dest.prefix,)
    return KeyFilter(
        suffixes=tuple(suffix or ()),
        exclude_suffixes=tuple(exclude_suffix or ()),
        exclude_prefixes=excluded,
        min_size=min_size,
        max_size=max_size,
    )


@app.command()
def samples(
    directory: Annotated[Path, typer.Argument(help="Where to write the sample files.")],
) -> None:
    """Write sample DICOM files (pydicom's bundled examples and synthetic images)."""
    from dcmpress.stack.samples import demo_files

    count = 0
    for name, data in demo_files():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        count += 1
    Console(stderr=True).print(f"wrote {count} sample files to {directory}")


policy_app = typer.Typer(help="Policies: which rule decides each object.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@policy_app.command("check")
def policy_check(
    policy: Annotated[Path, typer.Argument(help="The policy file (TOML).")],
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Sample files or directories to decide.")
    ] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per file.")] = False,
) -> None:
    """Check a policy file; with sample files, show the rule each would take."""
    from pydicom import dcmread

    from worker.policy import load_policy

    try:
        rules = load_policy(policy)
    except ConfigurationError as exc:
        raise fail(str(exc)) from None
    console = Console()
    if not paths:
        console.print(
            f"{policy}: {len(rules.rule)} rules, valid; the default: {rules.rule[-1].name!r}",
            soft_wrap=True,
        )
        return
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise fail(f"no such file or directory: {', '.join(missing)}")
    try:
        files = [file for path in paths for file in files_under(path)]
    except ConfigurationError as exc:  # a directory that cannot be listed
        raise fail(str(exc)) from None
    table = Table(title=f"{policy}: the rule each file takes")
    for column in ("file", "rule", "action", "targets"):
        table.add_column(column)
    for file in files:
        row: dict[str, Any]
        try:
            ds = dcmread(file, stop_before_pixels=True)
        except Exception as exc:  # not DICOM, or unreadable: said per file
            row = {"path": str(file), "rule": None, "error": f"cannot read a DICOM header: {exc}"}
        else:
            rule = rules.decide(ds, str(file), file.stat().st_size)
            row = {"path": str(file), "rule": rule.name, "action": rule.action,
                   "target": rule.target or rule.options.get("target", [])}  # fmt: skip
        if jsonl:
            sys.stdout.write(json.dumps(row) + "\n")
        else:
            table.add_row(
                str(file), row["rule"] or "-", str(row.get("action", row.get("error", ""))),
                ", ".join(row.get("target", [])),
            )  # fmt: skip
    if not jsonl:
        console.print(table)


@app.command()
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
    console.print(f"{len(CODES)} outcome codes; see README 'Outcome codes'.")
    missing = [f"{s.target.name}/{s.plugin.name}" for s in statuses if not s.available]
    if strict and missing:
        raise fail(f"missing plugins: {', '.join(missing)}", EXIT_FAILED)


def _enqueue_progress(console: Console) -> Progress:
    """A spinner with a live detail line, for enqueue runs of unknown length."""
    return Progress(
        SpinnerColumn(), TextColumn("[bold]enqueue"), TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(), console=console,
    )  # fmt: skip


def _connect() -> tuple[WorkerSettings, Ledger]:
    from worker.runtime.ledger import Ledger

    try:
        settings = WorkerSettings()
    except ValidationError as exc:
        raise fail(validation_message(exc)) from None
    return settings, Ledger.from_url(settings.redis_url, settings.retention_seconds)


@app.command()
@compression_flags
def enqueue(
    source: Annotated[
        str | None, typer.Argument(help="s3://bucket/prefix to compress (or --manifest).")
    ] = None,
    dest: Annotated[
        str | None, typer.Option(help="s3://bucket/prefix for outputs (keys are mirrored).")
    ] = None,
    manifest: Annotated[
        str | None,
        typer.Option(
            help="Manifest instead of a listing: S3 Batch Operations CSV, s3:// URL lines, "
            "or an S3 Inventory manifest.json (local path or s3://)."
        ),
    ] = None,
    in_place: Annotated[
        bool,
        typer.Option(
            "--in-place",
            help="Replace each source object (conditional on its ETag). Irreversible "
            "for lossy targets.",
        ),
    ] = False,
    batch: Annotated[
        str | None,
        typer.Option(help="Batch name (default: derived from source, dest and options)."),
    ] = None,
    suffix: Suffix = None,
    exclude_suffix: ExcludeSuffix = None,
    min_size: MinSize = 1,
    max_size: MaxSize = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Process again objects already done, and write their outputs again.",
        ),
    ] = False,
    policy: Annotated[
        Path | None, typer.Option(help=f"{POLICY_HELP} Stored with the batch.")
    ] = None,
    *,
    options: CompressionOptions,
) -> None:
    """List s3://bucket/prefix (or read a manifest) and enqueue one job per object."""
    from producer.enqueue import Enqueuer, EnqueueReport, enqueue_pages
    from producer.sources import listing_pages
    from worker.runtime.contract import BatchSpec, S3Location, default_batch_id
    from worker.runtime.storage import Storage

    if (source is None) == (manifest is None):
        raise fail("give either s3://bucket/prefix or --manifest FILE")
    try:
        dest_location = S3Location.parse(dest) if dest else None
        source_location = S3Location.parse(source) if source else None
    except ConfigurationError as exc:
        raise fail(str(exc)) from None
    if (dest_location is None) == (not in_place):
        raise fail("give exactly one of --dest s3://bucket/prefix and --in-place")
    policy_text = _policy_text(policy, options)
    settings, ledger = _connect()
    if manifest is not None:
        _enqueue_manifest(
            manifest, dest_location, in_place, options, policy_text, batch, force, settings,
            ledger,
        )  # fmt: skip
        return
    assert source_location is not None
    batch_id = batch or default_batch_id(source_location, dest_location, options, policy_text)
    existing = ledger.get_batch(batch_id)
    spec = existing or BatchSpec(
        batch=batch_id,
        source=source_location,
        dest=dest_location,
        in_place=in_place,
        options=options,
        created=time.time(),
        policy=policy_text,
    )
    if existing and (existing.source, existing.dest, existing.options, existing.policy) != (
        source_location,
        dest_location,
        options,
        policy_text,
    ):
        raise fail(
            f"batch {batch_id!r} exists with other source/dest/options/policy; pick a new --batch"
        )
    ledger.save_batch(spec)
    info = ledger.batch_info(batch_id)
    resuming = existing is not None and "listing_done" not in info
    start_after = info.get("checkpoint", "") if resuming else ""
    key_filter = _key_filter(
        source_location, dest_location, suffix, exclude_suffix, min_size, max_size
    )
    console = Console(stderr=True)
    console.print(
        f"batch [bold]{batch_id}[/]" + (f" (resuming after {start_after!r})" if start_after else "")
    )
    report = EnqueueReport(batch=batch_id, resumed_from=start_after)
    from worker import app as celery_app

    enqueuer = Enqueuer(celery_app, ledger, spec, settings.queue, force=force, rewrite=force)
    storage = Storage(settings)
    with _enqueue_progress(console) as progress:
        task = progress.add_task("enqueue", detail="")

        def on_page(current: EnqueueReport) -> None:
            progress.update(
                task,
                detail=f"{current.listed:,} listed, {current.enqueued:,} enqueued, "
                f"{current.already_done:,} already done",
            )

        try:
            pages = listing_pages(
                storage, source_location.bucket, source_location.prefix, start_after, key_filter
            )
            enqueue_pages(enqueuer, pages, report, resuming, on_page)
        except DcmpressError as exc:
            raise fail(_resumable(exc), EXIT_FAILED) from None
    report.filtered = dict(key_filter.rejected)
    print(json.dumps(report.__dict__))


@app.command()
def status(
    batch: Annotated[str, typer.Argument(help=BATCH_HELP)],
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh until the batch is done.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
) -> None:
    """Counts, bytes saved, rate, ETA and the most common failures of a batch."""
    settings, ledger = _connect()
    batch = resolve_batch(ledger, batch)
    names = rule_names(ledger, batch)  # a batch's spec does not change: read once
    current = snapshot(ledger, batch, names)
    checks = _StallCheck(ledger, batch, settings.queue, settings.reconcile_after)
    if not watch:
        Console().print(render(current, note=checks.note(current)))
        return
    window = RateWindow(60.0)
    with Live(render(current), console=Console(), auto_refresh=False) as live:
        while True:
            live.update(render(current, window.add(current), checks.note(current)), refresh=True)
            if current.complete:
                break
            time.sleep(interval)
            current = snapshot(ledger, batch, names)


class _StallCheck:
    """Run reconcile's check (read only) when a batch stalls; at most once a minute."""

    def __init__(self, ledger: Ledger, batch: str, queue: str, reconcile_after: int) -> None:
        self.ledger, self.batch, self.queue = ledger, batch, queue
        self.reconcile_after = reconcile_after
        self.checked_at = 0.0
        self.text = ""

    def note(self, current: Any) -> str:
        if not current.stalled or current.pending > 10_000:
            return ""
        if time.monotonic() - self.checked_at > 60:
            from producer.reconcile import broker_redis, find_orphans
            from worker import app as celery_app

            spec = self.ledger.get_batch(self.batch)
            assert spec is not None
            with broker_redis(celery_app) as broker:
                found = find_orphans(self.ledger, spec, self.queue, broker)
            self.checked_at = time.monotonic()
            if found.orphans:
                automatic = (
                    f"the workers send them again after {self.reconcile_after} s with no "
                    "activity, or "
                    if self.reconcile_after
                    else ""
                )
                self.text = (
                    f"{found.orphans:,} pending object(s) have no live message or worker: "
                    f"{automatic}run `dcmpress reconcile {self.batch}`"
                )
            else:
                self.text = (
                    "every pending object has a live message or worker (a long object, or "
                    "no worker consuming the queue)"
                )
        return self.text


@app.command()
def batches() -> None:
    """List known batches with their progress."""
    _, ledger = _connect()
    rows = []
    for batch_id in ledger.batch_ids():
        spec = ledger.get_batch(batch_id)
        if spec is None:
            continue  # expired
        current = snapshot(ledger, batch_id)
        targets = "policy" if spec.policy is not None else ", ".join(spec.options.target)
        rows.append({
            "batch": batch_id, "state": current.state, "source": str(spec.source),
            "dest": str(spec.dest or "in place"), "targets": targets,
            **{state: int(current.counts.get(state, 0)) for state in ("done", "skipped", "failed")},
            "pending": current.pending,
        })  # fmt: skip
    console = Console()
    console.print(batches_table(rows, console.width))


@app.command()
def report(
    batch: Annotated[str, typer.Argument(help=BATCH_HELP)],
    format: Annotated[str, typer.Option("--format", help="csv or ndjson.")] = "csv",
    output: Annotated[Path | None, typer.Option(help="File to write (default: stdout).")] = None,
    out: Annotated[
        str | None,
        typer.Option(
            help="Directory or s3://bucket/prefix for the report set: completion.csv (S3 "
            "Batch Operations shape), success.ndjson, failure.ndjson."
        ),
    ] = None,
    html: Annotated[
        bool, typer.Option("--html", help="With --out: also report.html, with charts.")
    ] = False,
) -> None:
    """One row per object of the batch, or a report set with --out."""
    from dcmpress.reports import report_rows, write_report

    if format not in ("csv", "ndjson"):
        raise fail("--format must be csv or ndjson")
    if html and not out:
        raise fail("--html writes into --out DIR or s3://...")
    settings, ledger = _connect()
    batch = resolve_batch(ledger, batch)
    if out:
        _report_set(ledger, settings, batch, out, html)
        return
    rows = report_rows(ledger, batch)
    if output is None:
        count = write_report(rows, sys.stdout, format)
    else:
        with output.open("w", newline="") as handle:
            count = write_report(rows, handle, format)
    where = f" to {output}" if output else ""
    Console(stderr=True).print(f"{count:,} object(s) of {batch} written{where} as {format}")


def _report_set(ledger: Ledger, settings: WorkerSettings, batch: str, out: str, html: bool) -> None:
    import tempfile

    from dcmpress.reports import write_bundle
    from worker.runtime.contract import S3Location
    from worker.runtime.storage import Storage

    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="dcmpress-report-") as scratch:
        local = Path(scratch) if out.startswith("s3://") else Path(out)
        written = write_bundle(ledger, batch, local)
        if html:
            from dcmpress.report_html import write_html

            write_html(ledger, batch, local / "report.html")
            written["report.html"] = 1
        if out.startswith("s3://"):
            where = S3Location.parse(out)
            storage = Storage(settings)
            for name in written:
                data = (local / name).read_bytes()
                if data:  # SeaweedFS hangs after empty PUTs; an empty file says nothing
                    kind = "text/html" if name.endswith(".html") else "text/plain"
                    storage.put(where.bucket, where.prefix + name, data, {}, content_type=kind)
        console.print(f"report set of {batch} written to {out.rstrip('/')}/:")
        for name, rows in written.items():
            console.print(f"  {name}: {_report_contents(name, rows)}", highlight=False)


def _report_contents(name: str, rows: int) -> str:
    if name == "report.html":
        return "charts and tables, self-contained"
    if name == "completion.csv":
        return f"{rows:,} row(s), one per object (S3 Batch Operations shape)"
    what = "done or skipped" if name.startswith("success") else "failed"
    return f"{rows:,} {what} object(s)"


@app.command()
def demo(
    target: Annotated[str, typer.Option(help="Target(s), comma-separated.")] = "jpeg-ls",
    workers: Annotated[int, typer.Option(help="Celery worker processes.")] = 2,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the stack up (until Ctrl-C) and print its env.")
    ] = False,
    workdir: Annotated[
        Path | None, typer.Option(help="Where the servers keep data (default: a temp dir).")
    ] = None,
) -> None:
    """Run everything locally: Redis, an S3 server, workers, sample data, one batch."""
    from dcmpress.stack.demo import run_demo  # the stack module is only needed here

    options = build_options({"target": target})
    try:
        run_demo(options, workers, keep, workdir, Console())
    except RuntimeError as exc:  # a service would not start: say which and why
        raise fail(str(exc)) from None


@app.command()
@compression_flags
def listen(
    dest: Annotated[
        str | None, typer.Option(help="s3://bucket/prefix for outputs (keys are mirrored).")
    ] = None,
    in_place: Annotated[
        bool, typer.Option("--in-place", help="Replace each source object (conditional).")
    ] = False,
    sqs: Annotated[str | None, typer.Option(help="SQS queue URL to long-poll.")] = None,
    http: Annotated[
        str | None, typer.Option(help="HOST:PORT for the webhook (MinIO, Ceph, SeaweedFS).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="DCMPRESS_WEBHOOK_TOKEN", help="Bearer token the webhook requires."),
    ] = None,
    batch: Annotated[
        str | None, typer.Option(help="Batch name (default: one batch per bucket and day).")
    ] = None,
    prefix: Annotated[list[str] | None, typer.Option(help="Only keys under this.")] = None,
    exclude_prefix: Annotated[list[str] | None, typer.Option(help="Skip keys under this.")] = None,
    suffix: Suffix = None,
    exclude_suffix: ExcludeSuffix = None,
    min_size: MinSize = 1,
    sqs_endpoint_url: Annotated[
        str | None,
        typer.Option(envvar="DCMPRESS_SQS_ENDPOINT_URL", help="SQS endpoint (emulators)."),
    ] = None,
    wait_seconds: Annotated[int, typer.Option(help="SQS long-poll seconds.")] = 20,
    max_body_kb: Annotated[
        int, typer.Option(help="Webhook: largest request body accepted (KiB); larger is 413.")
    ] = 4096,
    policy: Annotated[
        Path | None, typer.Option(help=f"{POLICY_HELP} Stored with each batch.")
    ] = None,
    spool_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="DCMPRESS_LISTEN_SPOOL_DIR",
            help="Webhook: where events wait while Redis is away (default: "
            "$XDG_STATE_HOME/dcmpress/spool, else ~/.local/state/dcmpress/spool).",
        ),
    ] = None,
    spool_max_mb: Annotated[
        int,
        typer.Option(
            envvar="DCMPRESS_LISTEN_SPOOL_MAX_MB",
            help="Webhook: the spool's bound (MiB); past it, 503. 0: no spool.",
        ),
    ] = 1024,
    *,
    options: CompressionOptions,
) -> None:
    """Turn object-storage events (SQS, or a webhook) into jobs, until interrupted."""
    import signal as signals
    import threading

    import boto3

    from producer.listen import EVENT_REDIS_TIMEOUT, EventFilter, EventIntake, SqsListener
    from producer.spool import Spool, SpoolInUse
    from producer.webhook import WebhookLimits, serve_http
    from worker.runtime.app import create_app
    from worker.runtime.contract import S3Location
    from worker.runtime.ledger import Ledger
    from worker.runtime.storage import Storage

    if not sqs and not http:
        raise fail("give --sqs QUEUE_URL and/or --http HOST:PORT")
    host, _, port = (http or "").rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if http and not token and not _is_loopback(host):
        raise fail(
            f"--http {http} listens beyond this machine: give --token (or "
            "DCMPRESS_WEBHOOK_TOKEN) so only your storage can post events"
        )
    if (dest is None) == (not in_place):
        raise fail("give exactly one of --dest s3://bucket/prefix and --in-place")
    try:
        dest_location = S3Location.parse(dest) if dest else None
    except ConfigurationError as exc:
        raise fail(str(exc)) from None
    policy_text = _policy_text(policy, options)
    settings, _ = _connect()
    # a sender waits on every Redis call here: each gives up within seconds (the event
    # is then spooled), where other commands wait up to 30 s
    ledger = Ledger.for_events(settings.redis_url, settings.retention_seconds, EVENT_REDIS_TIMEOUT)
    celery_app = create_app(settings)
    celery_app.conf.broker_transport_options = {
        **celery_app.conf.broker_transport_options,
        "socket_timeout": EVENT_REDIS_TIMEOUT,
        "socket_connect_timeout": EVENT_REDIS_TIMEOUT,
    }
    spool = None
    if http and spool_max_mb > 0:
        where = spool_dir or _state_dir() / "spool"
        try:
            spool = Spool(where, spool_max_mb * 1024 * 1024)
        except SpoolInUse as exc:
            raise fail(str(exc)) from None
        except OSError as exc:
            raise fail(f"cannot use the spool directory {where}: {exc} (--spool-dir)") from None
    storage = Storage(settings)
    intake = EventIntake(
        celery_app, ledger, storage, settings.queue, dest_location, in_place, options,
        EventFilter(
            prefixes=tuple(prefix or ()), exclude_prefixes=tuple(exclude_prefix or ()),
            suffixes=tuple(suffix or ()), exclude_suffixes=tuple(exclude_suffix or ()),
            min_size=min_size,
        ),
        batch_name=batch,
        policy=policy_text,
        spool=spool,
    )  # fmt: skip
    console = Console(stderr=True)
    stop = threading.Event()
    signals.signal(signals.SIGTERM, lambda *_: stop.set())
    threads: list[threading.Thread] = []
    listener: SqsListener | None = None
    server = None
    if sqs:
        client = boto3.session.Session().client(
            "sqs", endpoint_url=sqs_endpoint_url, region_name=settings.s3_region
        )
        listener = SqsListener(client, sqs, intake, wait_seconds=wait_seconds)
        threads.append(threading.Thread(target=listener.run, name="sqs", daemon=True))
        console.print(f"listening on SQS {sqs}")
    if http:

        def healthy() -> bool:
            # ready while events can be taken: Redis answers, or the spool has room
            if spool is not None and spool.size < spool.max_bytes // 2:
                return True
            try:
                return bool(ledger.redis.ping())
            except Exception:
                return False

        if spool is not None:
            pending = len(spool)
            threads.append(
                threading.Thread(target=intake.drain_spool, args=(stop,), name="spool", daemon=True)
            )
            console.print(
                f"spool {spool.directory}: {pending:,} event message(s) waiting"
                if pending else f"spool {spool.directory}",
                highlight=False,
            )  # fmt: skip
        limits = WebhookLimits(max_body_bytes=max_body_kb * 1024)
        server = serve_http(intake, host, int(port), token, healthy, limits)
        shown = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
        console.print(f"listening on http://{shown}:{server.server_port}/", highlight=False)
    for thread in threads:
        thread.start()
    console.print("ready", highlight=False)
    try:
        while not stop.wait(1):
            alive = [thread.is_alive() for thread in threads] + ([server.alive()] if server else [])
            if not all(alive):
                raise fail("a listener thread died; see the log", EXIT_FAILED)
    except KeyboardInterrupt:
        pass
    finally:
        if listener:
            listener.stop()
        if server:
            server.shutdown()
        stop.set()  # the spool's drain stops between two messages
        if spool is not None:
            spool.close()
        console.print("stopped")


def _state_dir() -> Path:
    """Where this user's dcmpress keeps state (XDG_STATE_HOME, else ~/.local/state)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dcmpress"


def _enqueue_manifest(
    manifest: str,
    dest: S3Location | None,
    in_place: bool,
    options: CompressionOptions,
    policy: str | None,
    batch: str | None,
    force: bool,
    settings: WorkerSettings,
    ledger: Ledger,
) -> None:
    """Enqueue the objects a manifest names, one batch per source bucket, resumably."""
    from itertools import chain

    from producer.enqueue import Enqueuer, ManifestRun
    from producer.manifests import ManifestError, open_local, read_manifest
    from worker import app as celery_app
    from worker.runtime.contract import BatchSpec, S3Location, default_batch_id
    from worker.runtime.storage import Storage

    storage = Storage(settings)

    def open_location(location: str) -> Any:
        if location.startswith("s3://"):
            where = S3Location.parse(location)
            return storage.open_stream(where.bucket, where.prefix)
        return open_local(location)

    def make_enqueuer(bucket: str) -> Enqueuer:
        source = S3Location(bucket=bucket)
        batch_id = default_batch_id(source, dest, options, policy)
        if batch:
            batch_id = batch if not run.enqueuers else f"{batch}-{bucket}"
        spec = ledger.get_batch(batch_id) or BatchSpec(
            batch=batch_id, source=source, dest=dest, in_place=in_place, options=options,
            created=time.time(), policy=policy,
        )  # fmt: skip
        ledger.save_batch(spec)
        return Enqueuer(celery_app, ledger, spec, settings.queue, force=force, rewrite=force)

    run = ManifestRun(make_enqueuer)
    console = Console(stderr=True)
    try:
        pages = read_manifest(manifest, open_location)
        first = next(pages, [])
        skip = 0
        if first:
            info = ledger.batch_info(run.enqueuer(first[0].bucket).spec.batch)
            checkpoint = info.get("checkpoint", "")
            if checkpoint.startswith("manifest:") and "listing_done" not in info:
                skip = int(checkpoint.removeprefix("manifest:"))
                console.print(f"resuming after manifest entry {skip:,}")
        with _enqueue_progress(console) as progress:
            task = progress.add_task("enqueue", detail="")
            total = run.run(
                chain([first], pages), skip,
                lambda position: progress.update(task, detail=f"{position:,} entries"),
            )  # fmt: skip
    except (ManifestError, DcmpressError) as exc:
        raise fail(_resumable(exc), EXIT_FAILED) from None
    for report in run.reports.values():
        print(json.dumps(report.__dict__))
    console.print(f"{total:,} manifest entries, {len(run.reports)} batch(es)")


def _is_loopback(host: str) -> bool:
    """True for an address (or name) only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _resumable(exc: Exception) -> str:
    """An enqueue failure, explained, and that nothing is lost by stopping here."""
    return f"{explain(exc) or exc} (run the same command again to resume)"


def _batch_enqueuer(batch: str, force: bool) -> Enqueuer:
    from producer.enqueue import Enqueuer

    settings, ledger = _connect()
    spec = ledger.get_batch(resolve_batch(ledger, batch))
    assert spec is not None  # resolve_batch found it
    from worker import app as celery_app

    return Enqueuer(celery_app, ledger, spec, settings.queue, force=force)


@app.command()
def retry(
    batch: Annotated[str, typer.Argument(help=BATCH_HELP)],
    code: Annotated[
        list[str] | None, typer.Option(help="Only objects that failed with this code.")
    ] = None,
) -> None:
    """Queue the failed objects of a batch again (all, or those with --code)."""
    from producer.enqueue import requeue

    enqueuer = _batch_enqueuer(batch, force=True)
    batch = enqueuer.spec.batch
    codes = set(code or ())
    sent = requeue(enqueuer, lambda r: r.state == "failed" and (not codes or r.code in codes))
    Console().print(f"{sent} failed object(s) of {batch} queued again")


@app.command()
def reconcile(
    batch: Annotated[str, typer.Argument(help=BATCH_HELP)],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report; send nothing.")] = False,
) -> None:
    """Send a message for every queued or running object that no live message will finish."""
    from producer.reconcile import broker_redis, find_orphans
    from producer.reconcile import reconcile as send_orphans

    enqueuer = _batch_enqueuer(batch, force=False)
    queue = enqueuer.queue
    if dry_run:
        with broker_redis(enqueuer.publisher.app) as broker:
            found = find_orphans(enqueuer.ledger, enqueuer.spec, queue, broker)
    else:
        found = send_orphans(enqueuer, queue)
    Console().print(_reconcile_text(found, dry_run), highlight=False)
    print(json.dumps({**found.__dict__, "orphans": found.orphans}))


def _reconcile_text(found: Any, dry_run: bool) -> str:
    lines = [
        f"batch {found.batch}: {found.checked:,} objects, {found.pending:,} queued or running, "
        f"{found.with_message:,} of them with a live message or worker",
        f"  queued, with no message: {len(found.queued_orphans):,}",
        f"  running, with no message and no live worker: {len(found.running_orphans):,}",
    ]
    for key in (found.queued_orphans + found.running_orphans)[:10]:
        lines.append(f"    e.g. {key}")
    if found.orphans:
        lines.append(
            "  nothing sent (--dry-run)" if dry_run else f"  sent {found.sent:,} message(s)"
        )
    return "\n".join(lines)


@app.command()
def cancel(batch: Annotated[str, typer.Argument(help=BATCH_HELP)]) -> None:
    """Stop a batch: its queued objects are acknowledged and recorded `cancelled`."""
    enqueuer = _batch_enqueuer(batch, force=False)
    batch = enqueuer.spec.batch
    enqueuer.ledger.set_cancelled(batch, True)
    pending = snapshot(enqueuer.ledger, batch).pending
    Console().print(f"batch {batch} cancelled; {pending} queued/running object(s) will stop")


@app.command()
def resume(batch: Annotated[str, typer.Argument(help=BATCH_HELP)]) -> None:
    """Continue a cancelled batch: its cancelled objects are queued again."""
    from producer.enqueue import requeue

    enqueuer = _batch_enqueuer(batch, force=True)
    batch = enqueuer.spec.batch
    enqueuer.ledger.set_cancelled(batch, False)
    sent = requeue(enqueuer, lambda r: r.code == "cancelled")
    Console().print(f"batch {batch} resumed; {sent} cancelled object(s) queued again")


@app.command()
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
    from dcmpress.estimate import LocalSource, Plan, S3Source, build_report, run_estimate
    from dcmpress.estimate import price_per_gb_month as pick_price
    from worker.runtime.contract import S3Location

    rules = _policy_rules(policy, options)
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
    key_filter = _key_filter(where, dest_location, suffix, exclude_suffix, min_size, max_size)
    if where is not None:
        try:
            settings = WorkerSettings()
        except ValidationError as exc:
            raise fail(validation_message(exc)) from None
        source = S3Source(where.bucket, where.prefix, settings, key_filter)
    else:
        source = LocalSource([Path(s) for s in sources], key_filter)
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
        price_source, storage_class.upper(), seed, dict(key_filter.rejected),
    )  # fmt: skip
    if html is not None:
        from dcmpress.estimate_html import write_estimate_html

        write_estimate_html(report, html)
        console.print(f"estimate page written to {html}")
    if json_output:
        print(json.dumps(report))
        return
    from dcmpress.views import estimate_tables

    out = Console()
    for table in estimate_tables(report):
        out.print(table)
    for note in report["notes"]:
        out.print(note, highlight=False, markup=False)
