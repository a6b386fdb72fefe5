"""Per-object reports of a batch: CSV / NDJSON rows and the report set.

The report set (``dcmpress report --out``) is ``completion.csv`` in the shape of an S3
Batch Operations completion report plus ``success.ndjson`` and ``failure.ndjson``. The
rows of done objects the workers archived come from their shards on S3
(:mod:`worker.runtime.archive`), the others from the ledger.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from worker.runtime.rows import REPORT_FIELDS, report_row

if TYPE_CHECKING:
    from worker.runtime.ledger import Ledger
    from worker.runtime.storage import Storage
    from worker.settings import WorkerSettings


def report_rows(
    ledger: Ledger, batch: str, storage: Storage | None = None
) -> Iterator[dict[str, Any]]:
    """One dict per object of the batch: those the workers archived (shards on S3, read
    as a stream; ``storage`` reads them, by default a client from the ``DCMPRESS_*``
    settings), then those still in the ledger, in ledger order. The workers archive
    nothing of the batch meanwhile (its archive lock), so each object comes once."""
    from worker.runtime.archive import archived_rows, paused, progress

    workers = ledger.worker_names()
    spec = ledger.get_batch(batch)
    with paused(ledger, batch) as renew:
        if progress(ledger, batch).shards:
            if storage is None:
                from worker.runtime.storage import Storage  # boto3: for archived batches
                from worker.settings import WorkerSettings

                storage = Storage(WorkerSettings())
            for row in archived_rows(ledger, storage, batch):
                renew()
                yield row
        for key, record, message in ledger.iter_records(batch):
            renew()
            yield report_row(key, record, message, workers, spec)


def write_report(rows: Iterator[dict[str, Any]], out: IO[str], fmt: str) -> int:
    """Write rows as CSV or NDJSON; return how many."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=REPORT_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
    else:
        for row in rows:
            out.write(json.dumps(row) + "\n")
            count += 1
    return count


def completion_row(bucket: str, row: dict[str, Any]) -> list[str]:
    """A row in the shape of an S3 Batch Operations completion report.

    Bucket, Key (URL-encoded), VersionId, TaskStatus, ErrorCode, HTTPStatusCode,
    ResultMessage; done and skipped objects count as succeeded.
    """
    failed = row["state"] == "failed"
    return [
        bucket,
        quote(str(row["key"]), safe="/"),
        "",
        "failed" if failed else "succeeded",
        str(row["code"]) if failed else "",
        "" if failed else "200",
        f"{row['state']}/{row['code']}: {row['message']}",
    ]


def write_bundle(
    ledger: Ledger, batch: str, directory: Path, storage: Storage | None = None
) -> dict[str, int]:
    """Write completion.csv, success.ndjson and failure.ndjson into ``directory``
    (``storage``: see :func:`report_rows`)."""
    spec = ledger.get_batch(batch)
    bucket = spec.source.bucket if spec else ""
    directory.mkdir(parents=True, exist_ok=True)
    written = {"completion.csv": 0, "success.ndjson": 0, "failure.ndjson": 0}
    with (
        (directory / "completion.csv").open("w", newline="") as completion,
        (directory / "success.ndjson").open("w") as success,
        (directory / "failure.ndjson").open("w") as failure,
    ):
        writer = csv.writer(completion)
        for row in report_rows(ledger, batch, storage):
            writer.writerow(completion_row(bucket, row))
            written["completion.csv"] += 1
            target, name = (failure, "failure.ndjson") if row["state"] == "failed" else (
                success, "success.ndjson")  # fmt: skip
            target.write(json.dumps({"batch": batch, **row}) + "\n")
            written[name] += 1
    return written


def upload_report_set(
    directory: Path, names: dict[str, int], out: str, settings: WorkerSettings
) -> None:
    """Put the files ``names`` of ``directory`` under ``out``, an ``s3://bucket/prefix``."""
    from worker.runtime.contract import S3Location
    from worker.runtime.storage import Storage  # boto3: only for a set written to S3

    where = S3Location.parse(out)
    storage = Storage(settings)
    for name in names:
        data = (directory / name).read_bytes()
        if data:  # SeaweedFS hangs after empty PUTs; an empty file says nothing
            kind = "text/html" if name.endswith(".html") else "text/plain"
            storage.put(where.bucket, where.prefix + name, data, {}, content_type=kind)
