"""Turning object references into job messages: de-duplication, batching, sending.

Order matters for "nothing lost, nothing twice": records are marked ``queued`` first,
then the messages are sent, then the listing checkpoint moves past the page. A crash
anywhere re-lists at most one page; objects found ``queued`` there are sent again and
the duplicates are absorbed by the worker (claim + terminal-record check).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from celery import Celery

from producer.sources import ObjectRef
from worker.contract import TASK_COMPRESS, BatchSpec, JobMessage
from worker.ledger import Ledger, Record, short_etag


@dataclass
class EnqueueReport:
    """What one enqueue run did."""

    batch: str
    listed: int = 0
    enqueued: int = 0
    already_done: int = 0
    already_queued: int = 0
    resumed_from: str = ""
    filtered: dict[str, int] = field(default_factory=dict)


class Enqueuer:
    """Sends job messages for one batch."""

    def __init__(
        self, app: Celery, ledger: Ledger, spec: BatchSpec, queue: str, force: bool = False
    ) -> None:
        self.app = app
        self.ledger = ledger
        self.spec = spec
        self.queue = queue
        self.force = force

    def select(
        self, refs: list[ObjectRef], resend_queued: bool
    ) -> tuple[list[tuple[ObjectRef, Record | None]], int, int]:
        """The refs to send (with their current record), and how many were already
        done / already queued."""
        records = self.ledger.get_records(self.spec.batch, [ref.key for ref in refs])
        chosen: list[tuple[ObjectRef, Record | None]] = []
        done = queued = 0
        for ref, record in zip(refs, records, strict=True):
            same = record is not None and (not ref.etag or record.etag == short_etag(ref.etag))
            if record is not None and same and not self.force:
                if record.terminal:
                    done += 1
                    continue
                if not resend_queued:
                    queued += 1
                    continue
            if record is not None and record.state == "running" and self.force:
                queued += 1  # being processed right now: --force does not interrupt it
                continue
            chosen.append((ref, record))
        return chosen, done, queued

    def send(self, chosen: list[tuple[ObjectRef, Record | None]]) -> None:
        """Mark the refs queued, then publish one message each over one connection."""
        if not chosen:
            return
        queued = [
            (
                ref.key,
                # attempts are the object's history: kept when it is queued again
                Record(
                    state="queued",
                    etag=short_etag(ref.etag),
                    attempts=previous.attempts if previous else 0,
                ).stamped(),
                "",
            )
            for ref, previous in chosen
        ]
        self.ledger.transition_many(self.spec.batch, queued)
        target = ",".join(self.spec.options.target)
        with self.app.producer_or_acquire() as producer:
            for ref, _ in chosen:
                message = JobMessage(
                    batch=self.spec.batch,
                    bucket=ref.bucket,
                    key=ref.key,
                    etag=ref.etag or None,
                    size=ref.size,
                    version_id=ref.version_id,
                    target=target,
                )
                self.app.send_task(
                    TASK_COMPRESS,
                    args=[message.model_dump(exclude_none=True)],
                    queue=self.queue,
                    producer=producer,
                )


def enqueue_pages(
    enqueuer: Enqueuer,
    pages: Iterable[tuple[list[ObjectRef], str]],
    report: EnqueueReport,
    resuming: bool,
    on_page: Callable[[EnqueueReport], None] = lambda report: None,
) -> EnqueueReport:
    """Enqueue page after page, checkpointing after each one."""
    batch = enqueuer.spec.batch
    first = True
    for refs, last_key in pages:
        # only the first page after a checkpoint may hold queued-but-unsent objects
        chosen, done, queued = enqueuer.select(refs, resend_queued=resuming and first)
        first = False
        enqueuer.send(chosen)
        report.listed += len(refs)
        report.enqueued += len(chosen)
        report.already_done += done
        report.already_queued += queued
        enqueuer.ledger.set_checkpoint(batch, last_key, report.enqueued)
        on_page(report)
    enqueuer.ledger.mark_listing_done(batch, report.enqueued)
    return report
