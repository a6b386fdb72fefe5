"""Batch progress and per-object reports, read from the ledger."""

from __future__ import annotations

import csv
import datetime as dt
import json
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from rich.progress_bar import ProgressBar
from rich.table import Table

from worker.errors import CODES
from worker.ledger import TERMINAL, Ledger

REPORT_FIELDS = (
    "key", "state", "code", "message", "bytes_in", "bytes_out", "ratio", "target",
    "plugin", "attempts", "seconds", "worker", "etag", "updated", "modality",
)  # fmt: skip


@dataclass
class BatchStatus:
    """A snapshot of one batch."""

    batch: str
    counts: dict[str, float]
    info: dict[str, str]
    taken_at: float

    @property
    def finished(self) -> int:
        """Objects in a terminal state."""
        return int(sum(self.counts.get(state, 0) for state in TERMINAL))

    @property
    def pending(self) -> int:
        """Objects queued or running."""
        return int(self.counts.get("queued", 0) + self.counts.get("running", 0))

    @property
    def total(self) -> int:
        """Objects known to the batch."""
        return self.finished + self.pending

    @property
    def state(self) -> str:
        """cancelled, complete, running (objects pending) or listing (being enqueued)."""
        if "cancelled" in self.info:
            return "cancelled"
        if self.complete:
            return "complete"
        return "running" if self.pending else "listing"

    @property
    def complete(self) -> bool:
        """Listing finished and nothing left to do."""
        return "listing_done" in self.info and self.pending == 0

    def rates(self, previous: BatchStatus | None = None) -> tuple[float, float]:
        """(objects/s, source MB/s): since ``previous``, else over the batch's life."""
        if previous is not None and self.taken_at > previous.taken_at:
            seconds = self.taken_at - previous.taken_at
            objects = self.finished - previous.finished
            megabytes = (self.counts.get("bytes_in", 0) - previous.counts.get("bytes_in", 0)) / 1e6
            return objects / seconds, megabytes / seconds
        started = self.counts.get("started_at")
        last = self.counts.get("finished_at")
        if not started or not last or last <= started:
            return 0.0, 0.0
        seconds = last - started
        return self.finished / seconds, self.counts.get("bytes_in", 0) / 1e6 / seconds

    def example(self, code: str) -> str:
        """The latest key that failed with ``code`` ('' if none is known)."""
        return self.info.get(f"example:{code}", "")

    def failures(self, limit: int = 5) -> list[tuple[str, int]]:
        """The most common failure codes.

        A code is a failure where the batch recorded a failed example of it: options
        such as ``unsupported=fail`` turn codes that are normally skips into failures.
        """
        codes = [
            (code, int(value))
            for code, value in (
                (name.removeprefix("code:"), value)
                for name, value in self.counts.items()
                if name.startswith("code:") and value > 0
            )
            if self.example(code) or CODES.get(code, CODES["internal_error"]).state == "failed"
        ]
        return sorted(codes, key=lambda item: -item[1])[:limit]


def snapshot(ledger: Ledger, batch: str) -> BatchStatus:
    """Read the batch's counters now."""
    return BatchStatus(batch, ledger.counts(batch), ledger.batch_info(batch), time.time())


def render(status: BatchStatus, previous: BatchStatus | None = None) -> Table:
    """A table for humans: counts, bytes saved, rates, ETA, failures with an example.

    ``previous`` is the snapshot the rates are measured from (``--watch`` passes the
    one taken about a minute earlier).
    """
    counts = status.counts
    bytes_in, bytes_out = counts.get("bytes_in", 0.0), counts.get("bytes_out", 0.0)
    rate, megabytes = status.rates(previous)
    eta = (
        str(dt.timedelta(seconds=round(status.pending / rate)))
        if rate > 0 and status.pending
        else "-"
    )
    table = Table(title=f"batch {status.batch}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    listing = "complete" if "listing_done" in status.info else "in progress"
    table.add_row("listing", f"{listing}, {status.info.get('enqueued', '0')} enqueued")
    for state in ("queued", "running", "done", "skipped", "failed"):
        table.add_row(state, f"{int(counts.get(state, 0)):,}")
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(status.total, 1), completed=status.finished, width=30),
        f"{status.finished:,} / {status.total:,}",
    )
    table.add_row("progress", bar)
    table.add_row("bytes in", f"{bytes_in / 1e6:,.1f} MB")
    table.add_row("bytes out", f"{bytes_out / 1e6:,.1f} MB")
    written_in = counts.get("written_in", 0.0)  # failed inputs were never written: no saving
    saved = written_in - bytes_out if bytes_out else 0.0
    ratio = f" ({written_in / bytes_out:.2f}x)" if bytes_out else ""
    table.add_row("saved", f"{saved / 1e6:,.1f} MB{ratio}")
    window = "last minute" if previous is not None else "average"
    table.add_row(f"rate ({window})", f"{rate:,.1f} objects/s, {megabytes:,.2f} MB/s")
    table.add_row("ETA", eta)
    for code, count in status.failures():
        example = status.example(code)
        table.add_row(f"failed: {code}", f"{count:,}" + (f"  e.g. {example}" if example else ""))
    return table


class RateWindow:
    """Snapshots of the last ``seconds``, so rates are measured over that window."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds
        self.snapshots: deque[BatchStatus] = deque()

    def add(self, status: BatchStatus) -> BatchStatus | None:
        """Remember ``status``; return the oldest snapshot still inside the window."""
        self.snapshots.append(status)
        while self.snapshots and status.taken_at - self.snapshots[0].taken_at > self.seconds:
            self.snapshots.popleft()
        oldest = self.snapshots[0]
        return oldest if oldest is not status else None


def report_rows(ledger: Ledger, batch: str) -> Iterator[dict[str, Any]]:
    """One dict per object of the batch, in ledger order."""
    workers = ledger.worker_names()
    for key, record, message in ledger.iter_records(batch):
        ratio = round(record.bytes_in / record.bytes_out, 4) if record.bytes_out else None
        yield {
            "key": key,
            "state": record.state,
            "code": record.code,
            "message": message or (f"{record.target}/{record.plugin}" if record.target else ""),
            "bytes_in": record.bytes_in,
            "bytes_out": record.bytes_out,
            "ratio": ratio,
            "target": record.target,
            "plugin": record.plugin,
            "attempts": record.attempts,
            "seconds": record.millis / 1000,
            "worker": workers.get(record.worker, record.worker),
            "etag": record.etag,
            "updated": record.updated,
            "modality": record.modality,
        }


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


def write_bundle(ledger: Ledger, batch: str, directory: Path) -> dict[str, int]:
    """Write completion.csv, success.ndjson and failure.ndjson into ``directory``."""
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
        for row in report_rows(ledger, batch):
            writer.writerow(completion_row(bucket, row))
            written["completion.csv"] += 1
            target, name = (failure, "failure.ndjson") if row["state"] == "failed" else (
                success, "success.ndjson")  # fmt: skip
            target.write(json.dumps({"batch": batch, **row}) + "\n")
            written[name] += 1
    return written
