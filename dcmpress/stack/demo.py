"""``dcmpress demo``: the whole main job on one machine, no cloud account.

Starts a local Redis and a local S3-compatible server (SeaweedFS) on 127.0.0.1, uploads
sample DICOM files, starts real Celery worker processes, enqueues the bucket, shows
progress and the summary, and shuts everything down (or keeps it up with ``--keep``).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from redis.exceptions import LockError
from rich.console import Console
from rich.live import Live

from dcmpress.reports import report_rows
from dcmpress.stack.samples import demo_files
from dcmpress.stack.services import CeleryWorker, RedisServer, SeaweedS3, dcmpress_env
from dcmpress.views import RateWindow, outcomes_table, render, snapshot
from producer.batches import OnConflict, OpenedBatch, open_batch
from producer.feeder import LOCK_SECONDS, FeedPlan, Step, make_feeder, save_plan
from worker.codec.options import CompressionOptions
from worker.runtime.app import create_app
from worker.runtime.contract import BatchSpec, S3Location
from worker.runtime.ledger import Ledger
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

SOURCE_BUCKET = "dicom-archive"
DEST_BUCKET = "dicom-compressed"
DEMO_BATCH = "demo"


def run_demo(
    options: CompressionOptions, workers: int, keep: bool, workdir: Path | None, console: Console
) -> int:
    """Run the demo; return the number of objects processed.

    SIGTERM and SIGHUP stop it like Ctrl-C: every service it started is stopped, and
    the temporary directory is removed unless ``keep`` or ``workdir`` was given.
    """
    root = workdir or Path(tempfile.mkdtemp(prefix="dcmpress-demo-"))
    try:
        with _signals_interrupt():
            return _run(options, workers, keep, root, console)
    finally:
        if workdir is None and not keep:
            shutil.rmtree(root, ignore_errors=True)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, so the stack unwinds as on Ctrl-C."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(
    options: CompressionOptions, workers: int, keep: bool, root: Path, console: Console
) -> int:
    with ExitStack() as stack:
        console.print(f"[bold]dcmpress demo[/] in {root}")
        redis_server = stack.enter_context(RedisServer(root / "redis"))
        console.print(f"  redis      {redis_server.url}")
        s3 = stack.enter_context(SeaweedS3(root / "s3"))
        console.print(f"  s3         {s3.endpoint_url} (SeaweedFS)")
        env = dcmpress_env(redis_server, s3)
        os.environ.update(env)  # this process's producer uses the same settings
        count = _upload_samples(s3)
        console.print(f"  uploaded   {count} objects to s3://{SOURCE_BUCKET}/")
        worker = stack.enter_context(CeleryWorker(env, root / "celery", concurrency=workers))
        console.print(
            f"  workers    {workers} processes ({worker.hostname}), log {worker.log_path}"
        )
        settings = WorkerSettings()
        ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds)
        opened = open_demo_batch(ledger, options)
        spec = opened.spec
        save_plan(ledger, spec.batch, FeedPlan(pass_started=time.time(), queue=settings.queue))
        lock = ledger.feed_lock(spec.batch, LOCK_SECONDS)
        lock.acquire()  # (else a worker feeds it: the same objects, never twice)
        feeder = make_feeder(
            create_app(settings), ledger, Storage(settings), spec, settings.queue,
            settings.feed_high_water, lambda location: iter(()),
        )  # fmt: skip
        assert feeder is not None
        feeder.run(lambda step: step is not Step.FED)
        with suppress(LockError):
            lock.release()
        report = feeder.report
        console.print(f"  enqueued   {report.enqueued} jobs in batch '{spec.batch}'")
        _watch(ledger, spec.batch, console)
        console.print()
        console.print(outcomes_table(list(report_rows(ledger, spec.batch)), console.width))
        if keep:
            _keep_running(env, console)
        return report.enqueued


def open_demo_batch(ledger: Ledger, options: CompressionOptions) -> OpenedBatch:
    """The demo's batch: created in the demo's own empty Redis; one that exists with
    another job is refused (a ledger that is not the demo's)."""
    wanted = BatchSpec(
        batch=DEMO_BATCH, source=S3Location(bucket=SOURCE_BUCKET),
        dest=S3Location(bucket=DEST_BUCKET), options=options,
    )  # fmt: skip
    return open_batch(ledger, wanted, OnConflict.REFUSE)


def _upload_samples(s3: SeaweedS3) -> int:
    client = s3.client()
    client.create_bucket(Bucket=SOURCE_BUCKET)
    client.create_bucket(Bucket=DEST_BUCKET)
    count = 0
    for name, data in demo_files():
        client.put_object(Bucket=SOURCE_BUCKET, Key=name, Body=data)
        count += 1
    # real buckets hold more than images: show how the rest is recorded
    client.put_object(Bucket=SOURCE_BUCKET, Key="notes/README.txt", Body=b"not DICOM\n" * 4)
    client.close()
    return count + 1


def _watch(ledger: Ledger, batch: str, console: Console) -> None:
    current = snapshot(ledger, batch)
    window = RateWindow(60.0)
    with Live(render(current), console=console, auto_refresh=False) as live:
        while not current.complete:
            time.sleep(0.5)
            current = snapshot(ledger, batch)
            live.update(render(current, window.add(current)), refresh=True)


def _keep_running(env: dict[str, str], console: Console) -> None:
    console.print(
        "\nThe stack stays up until Ctrl-C. Point dcmpress, celery, Flower or boto3 at it:"
    )
    for name, value in sorted(env.items()):
        console.print(f"  export {name}={value}", highlight=False, soft_wrap=True)
    console.print("  dcmpress status demo; dcmpress report demo --format ndjson")
    console.print("stack ready", highlight=False)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP
        console.print("stopping")
