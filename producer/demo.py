"""``dcmpress demo``: the whole main job on one machine, no cloud account.

Starts a local Redis and a local S3-compatible server (SeaweedFS) on 127.0.0.1, uploads
sample DICOM files, starts real Celery worker processes, enqueues the bucket, shows
progress and the summary, and shuts everything down (or keeps it up with ``--keep``).
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from producer.enqueue import Enqueuer, EnqueueReport, enqueue_pages
from producer.samples import demo_files
from producer.sources import KeyFilter, listing_pages
from producer.stack import CeleryWorker, RedisServer, SeaweedS3, dcmpress_env
from producer.status import RateWindow, render, report_rows, snapshot
from worker.app import create_app
from worker.contract import BatchSpec, S3Location
from worker.ledger import Ledger
from worker.settings import CompressionOptions, WorkerSettings
from worker.storage import Storage

SOURCE_BUCKET = "dicom-archive"
DEST_BUCKET = "dicom-compressed"


def run_demo(
    options: CompressionOptions, workers: int, keep: bool, workdir: Path | None, console: Console
) -> int:
    """Run the demo; return the number of objects processed."""
    root = workdir or Path(tempfile.mkdtemp(prefix="dcmpress-demo-"))
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
        spec = BatchSpec(
            batch="demo",
            source=S3Location(bucket=SOURCE_BUCKET),
            dest=S3Location(bucket=DEST_BUCKET),
            options=options,
            created=time.time(),
        )
        ledger.save_batch(spec)
        enqueuer = Enqueuer(create_app(settings), ledger, spec, settings.queue)
        pages = listing_pages(Storage(settings), SOURCE_BUCKET, "", "", KeyFilter())
        report = enqueue_pages(enqueuer, pages, EnqueueReport(spec.batch), resuming=False)
        console.print(f"  enqueued   {report.enqueued} jobs in batch 'demo'")
        _watch(ledger, spec.batch, console)
        console.print()
        console.print(_outcomes(ledger, spec.batch))
        if keep:
            _keep_running(env, console)
        return report.enqueued


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


def _outcomes(ledger: Ledger, batch: str) -> Table:
    table = Table(title="outcome per object")
    table.add_column("key", no_wrap=True)
    for column, width in (("state", 7), ("code", 18), ("ratio", 5)):
        table.add_column(column, no_wrap=True, min_width=width)
    table.add_column("message", overflow="ellipsis", no_wrap=True)
    for row in sorted(report_rows(ledger, batch), key=lambda row: str(row["key"])):
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else "-"
        table.add_row(row["key"], row["state"], row["code"], ratio, row["message"][:70])
    return table


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
    except KeyboardInterrupt:
        console.print("stopping")
