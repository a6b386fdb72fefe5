"""``dcmpress enqueue``: a listing or a manifest into batches of jobs.

The batch rule (create, resume, refuse) is :mod:`producer.batches`'; here the options
become a job, and the progress is shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from dcmpress.commands.common import (
    POLICY_HELP,
    Dest,
    ExcludeSuffix,
    MaxSize,
    MinSize,
    Suffix,
    connect,
    key_filter,
    policy_text,
)
from dcmpress.console import EXIT_FAILED, explain, fail
from dcmpress.options import compression_flags
from worker.codec.options import CompressionOptions
from worker.errors import ConfigurationError, DcmpressError
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from producer.batches import OpenedBatch
    from producer.enqueue import Enqueuer
    from producer.sources import KeyFilter
    from worker.runtime.contract import S3Location
    from worker.runtime.ledger import Ledger


@compression_flags
def enqueue(
    source: Annotated[
        str | None, typer.Argument(help="s3://bucket/prefix to compress (or --manifest).")
    ] = None,
    dest: Dest = None,
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
    from worker.runtime.contract import S3Location

    if (source is None) == (manifest is None):
        raise fail("give either s3://bucket/prefix or --manifest FILE")
    try:
        dest_location = S3Location.parse(dest) if dest else None
        source_location = S3Location.parse(source) if source else None
    except ConfigurationError as exc:
        raise fail(str(exc)) from None
    if (dest_location is None) == (not in_place):
        raise fail("give exactly one of --dest s3://bucket/prefix and --in-place")
    job = _Job(dest_location, in_place, options, policy_text(policy, options), force)
    settings, ledger = connect()
    if manifest is not None:
        _enqueue_manifest(manifest, batch, job, settings, ledger)
        return
    assert source_location is not None
    filtered = key_filter(
        source_location, dest_location, suffix, exclude_suffix, min_size, max_size
    )
    _enqueue_listing(source_location, batch, job, filtered, settings, ledger)


@dataclass(frozen=True)
class _Job:
    """What one enqueue asks of every batch it opens: outputs, options and policy."""

    dest: S3Location | None
    in_place: bool
    options: CompressionOptions
    policy: str | None
    force: bool  # queue done objects again, and write their outputs again

    def open(
        self, source: S3Location, batch: str | None, settings: WorkerSettings, ledger: Ledger
    ) -> tuple[OpenedBatch, Enqueuer]:
        """The batch of this job on ``source`` (named ``batch``, else the id derived from
        the job, so the same command again resumes it) and its enqueuer; exit 2 if the
        id holds another job."""
        from producer.batches import BatchConflict, OnConflict, open_batch
        from producer.enqueue import Enqueuer
        from worker import app as celery_app
        from worker.runtime.contract import BatchSpec, default_batch_id

        wanted = BatchSpec(
            batch=batch or default_batch_id(source, self.dest, self.options, self.policy),
            source=source, dest=self.dest, in_place=self.in_place, options=self.options,
            policy=self.policy,
        )  # fmt: skip
        try:
            opened = open_batch(ledger, wanted, OnConflict.REFUSE)
        except BatchConflict as exc:
            raise fail(f"{exc}; pick a new --batch") from None
        enqueuer = Enqueuer(
            celery_app, ledger, opened.spec, settings.queue, force=self.force, rewrite=self.force
        )
        return opened, enqueuer


def _enqueue_listing(
    source: S3Location,
    batch: str | None,
    job: _Job,
    filtered: KeyFilter,
    settings: WorkerSettings,
    ledger: Ledger,
) -> None:
    """Enqueue the listing of ``source`` into one batch, resumably."""
    from producer.enqueue import EnqueueReport, enqueue_pages
    from producer.sources import listing_pages
    from worker.runtime.storage import Storage

    opened, enqueuer = job.open(source, batch, settings, ledger)
    resume = opened.resume
    console = Console(stderr=True)
    start_after = resume.after_key
    console.print(
        f"batch [bold]{opened.spec.batch}[/]"
        + (f" (resuming after {start_after!r})" if start_after else "")
    )
    report = EnqueueReport(batch=opened.spec.batch, resumed_from=start_after)
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
            pages = listing_pages(storage, source.bucket, source.prefix, start_after, filtered)
            enqueue_pages(enqueuer, pages, report, resume.interrupted, on_page)
        except DcmpressError as exc:
            raise fail(_resumable(exc), EXIT_FAILED) from None
    report.filtered = dict(filtered.rejected)
    print(json.dumps(report.__dict__))


def _enqueue_manifest(
    manifest: str, batch: str | None, job: _Job, settings: WorkerSettings, ledger: Ledger
) -> None:
    """Enqueue the objects a manifest names, one batch per source bucket, resumably:
    with ``batch``, the first bucket's batch is that name and the others' name-bucket."""
    from producer.enqueue import ManifestRun
    from producer.manifests import ManifestError, read_manifest, storage_opener
    from worker.runtime.contract import S3Location
    from worker.runtime.storage import Storage

    storage = Storage(settings)
    resume_after: dict[str, int] = {}  # source bucket -> entries its last run handled

    def make_enqueuer(bucket: str) -> Enqueuer:
        name = (batch if not run.enqueuers else f"{batch}-{bucket}") if batch else None
        opened, enqueuer = job.open(S3Location(bucket=bucket), name, settings, ledger)
        resume_after[bucket] = opened.resume.after_entries
        return enqueuer

    run = ManifestRun(make_enqueuer)
    console = Console(stderr=True)
    try:
        pages = read_manifest(manifest, storage_opener(storage))
        first = next(pages, [])
        skip = 0
        if first:
            run.enqueuer(first[0].bucket)  # its batch holds the run's resume point
            skip = resume_after[first[0].bucket]
            if skip:
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


def _enqueue_progress(console: Console) -> Progress:
    """A spinner with a live detail line, for enqueue runs of unknown length."""
    return Progress(
        SpinnerColumn(), TextColumn("[bold]enqueue"), TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(), console=console,
    )  # fmt: skip


def _resumable(exc: Exception) -> str:
    """An enqueue failure, explained, and that nothing is lost by stopping here."""
    return f"{explain(exc) or exc} (run the same command again to resume)"
