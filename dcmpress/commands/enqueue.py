"""``dcmpress enqueue``: a listing or a manifest into batches of jobs.

The batch rule (create, resume, refuse) is :mod:`producer.batches`'; here the options
become a job, and the progress is shown.
"""

from __future__ import annotations

import json
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    from producer.enqueue import EnqueueReport
    from producer.feeder import FeedPlan
    from worker.runtime.contract import BatchSpec, S3Location
    from worker.runtime.ledger import Ledger
    from worker.runtime.storage import Storage


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
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="Keep feeding until the whole listing or manifest is queued, as the "
            "queue drains (default: feed up to the queue's mark and leave the rest to the "
            "workers).",
        ),
    ] = False,
    max_rate: Annotated[
        list[str] | None,
        typer.Option(
            help="Most objects per second (50) or bytes per second (200MB/s) the batch "
            "is fed at, across all workers; repeat for both.",
        ),
    ] = None,
    window: Annotated[
        str | None,
        typer.Option(help="Feed only inside this daily window, HH:MM-HH:MM (e.g. 20:00-06:00)."),
    ] = None,
    timezone: Annotated[
        str, typer.Option(help="The window's time zone (IANA name, e.g. Europe/Berlin).")
    ] = "UTC",
    *,
    options: CompressionOptions,
) -> None:
    """List s3://bucket/prefix (or read a manifest) and feed its objects to the queue.

    The listing or manifest is the backlog: the queue is kept topped up to
    DCMPRESS_FEED_HIGH_WATER messages, by this command while it runs and then by the
    workers, from the batch's checkpoint. Run it again to resume, or, once the batch
    was fed in full, to send objects added or changed since.
    """
    from producer.feeder import FeedPlan
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
    pacing = _pacing(max_rate or [], window, timezone)
    job = _Job(dest_location, in_place, options, policy_text(policy, options), force)
    settings, ledger = connect()
    if manifest is not None:
        plan = FeedPlan(kind="manifest", manifest=manifest, batch_name=batch or "",
                        force=force, **pacing)  # fmt: skip
        _enqueue_manifest(manifest, batch, job, plan, follow, settings, ledger)
        return
    assert source_location is not None
    filtered = key_filter(
        source_location, dest_location, suffix, exclude_suffix, min_size, max_size
    )
    plan = FeedPlan(
        suffixes=filtered.suffixes, exclude_suffixes=filtered.exclude_suffixes,
        exclude_prefixes=filtered.exclude_prefixes, min_size=filtered.min_size,
        max_size=filtered.max_size, force=force, **pacing,
    )  # fmt: skip
    _enqueue_listing(source_location, batch, job, plan, follow, settings, ledger)


def _pacing(rates: list[str], window: str | None, timezone: str) -> dict[str, Any]:
    """The plan's pacing fields from the options; exit 2 naming a bad one."""
    from producer.pacing import Window, parse_rate

    fields: dict[str, Any] = {"window": window or "", "timezone": timezone}
    try:
        for rate in rates:
            objects, bytes_ = parse_rate(rate)
            fields["max_rate"] = objects or fields.get("max_rate", 0.0)
            fields["max_bytes_rate"] = bytes_ or fields.get("max_bytes_rate", 0.0)
        if window:
            Window.parse(window, timezone)
    except ConfigurationError as exc:
        raise fail(str(exc)) from None
    return fields


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
    ) -> OpenedBatch:
        """The batch of this job on ``source`` (named ``batch``, else the id derived from
        the job, so the same command again resumes it); exit 2 if the id holds another
        job."""
        from producer.batches import BatchConflict, OnConflict, open_batch
        from worker.runtime.contract import BatchSpec, default_batch_id

        wanted = BatchSpec(
            batch=batch or default_batch_id(source, self.dest, self.options, self.policy),
            source=source, dest=self.dest, in_place=self.in_place, options=self.options,
            policy=self.policy,
        )  # fmt: skip
        try:
            return open_batch(ledger, wanted, OnConflict.REFUSE)
        except BatchConflict as exc:
            raise fail(f"{exc}; pick a new --batch") from None


def _enqueue_listing(
    source: S3Location,
    batch: str | None,
    job: _Job,
    plan: FeedPlan,
    follow: bool,
    settings: WorkerSettings,
    ledger: Ledger,
) -> None:
    """Feed the listing of ``source`` into one batch, resumably."""
    from producer.feeder import load_plan, new_pass
    from worker.runtime.storage import Storage

    opened = job.open(source, batch, settings, ledger)
    storage = Storage(settings)
    console = Console(stderr=True)
    stored = load_plan(ledger, opened.spec.batch)
    try:
        if opened.created or stored is None:
            plan = plan.model_copy(update={"pass_started": storage.clock(source.bucket)})
        elif not opened.resume.interrupted:  # fed in full before: a later pass
            changed = stored.model_copy(update=_pace_of(plan) | {"force": job.force})
            plan = new_pass(ledger, storage, opened.spec, changed)
        else:  # a pass under way goes on as it began; pacing is what changes
            plan = stored.model_copy(update=_pace_of(plan) | {"force": job.force})
    except DcmpressError as exc:
        raise fail(_resumable(exc), EXIT_FAILED) from None
    start_after = ledger.batch_info(opened.spec.batch).get("checkpoint", "")
    note = f" (resuming after {start_after!r})" if start_after else ""
    if plan.changed_since and not start_after:
        note = " (a later pass: objects modified since the last one began)"
    console.print(f"batch [bold]{opened.spec.batch}[/]{note}")
    report = _feed(opened.spec, plan, follow, settings, ledger, storage, console)
    report.resumed_from = start_after
    print(json.dumps(report.__dict__))


def _pace_of(plan: FeedPlan) -> dict[str, Any]:
    return {name: getattr(plan, name) for name in
            ("max_rate", "max_bytes_rate", "window", "timezone")}  # fmt: skip


def _enqueue_manifest(
    manifest: str,
    batch: str | None,
    job: _Job,
    plan: FeedPlan,
    follow: bool,
    settings: WorkerSettings,
    ledger: Ledger,
) -> None:
    """Feed the objects a manifest names, one batch per source bucket, resumably: with
    ``batch``, the first bucket's batch is that name and the others' name-bucket."""
    from producer.batches import ResumePoint, save_restart
    from producer.enqueue import EnqueueReport
    from producer.feeder import load_plan
    from producer.manifests import ManifestError, read_manifest, storage_opener
    from worker.runtime.contract import S3Location
    from worker.runtime.storage import Storage

    storage = Storage(settings)
    console = Console(stderr=True)
    try:
        first = next(read_manifest(manifest, storage_opener(storage)), [])
    except (ManifestError, DcmpressError) as exc:
        raise fail(_resumable(exc), EXIT_FAILED) from None
    if not first:
        console.print("0 manifest entries, 0 batch(es)")
        return
    opened = job.open(S3Location(bucket=first[0].bucket), batch, settings, ledger)
    stored = load_plan(ledger, opened.spec.batch)
    if not opened.created and not opened.resume.interrupted and not job.force:
        console.print(f"batch [bold]{opened.spec.batch}[/]: this manifest was fed in full "
                      "already (--force to process its objects again)")  # fmt: skip
        print(json.dumps(EnqueueReport(batch=opened.spec.batch).__dict__))
        return
    if stored is not None and opened.resume.interrupted:
        plan = stored.model_copy(update=_pace_of(plan) | {"force": job.force})
    elif not opened.created:
        save_restart(ledger, opened.spec.batch)
    skip = ResumePoint.read(ledger, opened.spec.batch).after_entries
    if skip:
        console.print(f"resuming after manifest entry {skip:,}")
    if not plan.workers_can_feed and not follow:
        console.print("the manifest is a local file the workers cannot read: this "
                      "command feeds it to the end (--follow)")  # fmt: skip
        follow = True
    report = _feed(opened.spec, plan, follow, settings, ledger, storage, console)
    print(json.dumps(report.__dict__))


def _feed(
    spec: BatchSpec,
    plan: FeedPlan,
    follow: bool,
    settings: WorkerSettings,
    ledger: Ledger,
    storage: Storage,
    console: Console,
) -> EnqueueReport:
    """Store ``plan`` and feed the batch under its lock: up to the queue's mark and
    leave the rest to the workers, or to the end with ``follow``."""
    from redis.exceptions import LockError

    from producer.enqueue import EnqueueReport
    from producer.feeder import (
        LOCK_SECONDS,
        ListingCursor,
        Step,
        make_feeder,
        save_plan,
        still_held,
    )
    from producer.manifests import ManifestError, read_manifest, storage_opener
    from worker import app as celery_app

    plan = plan.model_copy(update={"queue": settings.queue})
    save_plan(ledger, spec.batch, plan)
    lock = ledger.feed_lock(spec.batch, LOCK_SECONDS)
    while not lock.acquire():
        if not follow:
            console.print(f"a worker is feeding batch {spec.batch} (`dcmpress status "
                          f"{spec.batch}`); its new pacing applies at once")  # fmt: skip
            return EnqueueReport(batch=spec.batch)
        time.sleep(1)
    try:
        feeder = make_feeder(
            celery_app, ledger, storage, spec, settings.queue, settings.feed_high_water,
            lambda location: read_manifest(location, storage_opener(storage)),
        )  # fmt: skip
        assert feeder is not None  # the plan was just stored
        with _enqueue_progress(console) as progress:
            task = progress.add_task("enqueue", detail="")

            def until(step: Step) -> bool:
                report = feeder.report
                progress.update(task, detail=f"{feeder.cursor.seen:,} read, "
                                f"{report.enqueued:,} enqueued, {report.already_done:,} "
                                f"already done; {feeder.state}")  # fmt: skip
                return not follow and step is not Step.FED

            last = feeder.run(until, keep=lambda: still_held(lock))
    except (ManifestError, DcmpressError) as exc:
        raise fail(_resumable(exc), EXIT_FAILED) from None
    finally:
        with suppress(LockError):
            lock.release()
    report = feeder.report
    if isinstance(feeder.cursor, ListingCursor):
        report.filtered = dict(feeder.cursor.keys.rejected)
    if last is not Step.FINISHED:
        console.print(f"{feeder.state}; the workers feed the rest as the queue drains "
                      f"(`dcmpress status {spec.batch}`)")  # fmt: skip
    elif len(feeder.batches) > 1:
        console.print(f"{len(feeder.batches)} batch(es): {', '.join(feeder.batches)}")
    return report


def _enqueue_progress(console: Console) -> Progress:
    """A spinner with a live detail line, for enqueue runs of unknown length."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]enqueue"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _resumable(exc: Exception) -> str:
    """An enqueue failure, explained, and that nothing is lost by stopping here."""
    return f"{explain(exc) or exc} (run the same command again to resume)"
