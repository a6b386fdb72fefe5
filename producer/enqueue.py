"""Turning object references into job messages: de-duplication, batching, sending.

Order matters for "nothing lost, nothing twice": records are marked ``queued`` and the
messages sent, then the listing checkpoint moves past the page. A crash anywhere
re-lists at most one page. Where the broker is the ledger's Redis (the default), a
record and its message are written in one atomic step, so nothing more is needed;
with a broker of its own, the objects found ``queued`` on that page are sent again
and the duplicates are absorbed by the worker (claim + terminal-record check).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from celery import Celery

from producer.batches import save_finished, save_listing_point, save_manifest_point
from producer.sources import ObjectRef
from worker.runtime.contract import BatchSpec
from worker.runtime.ledger import ALREADY_DONE, ALREADY_QUEUED, QUEUED, Ledger
from worker.runtime.publish import JobSender
from worker.runtime.records import Record


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


class Enqueuer(JobSender):
    """Sends job messages for one batch, for the objects the ledger queues."""

    def __init__(
        self,
        app: Celery,
        ledger: Ledger,
        spec: BatchSpec,
        queue: str,
        force: bool = False,
        rewrite: bool = False,
    ) -> None:
        super().__init__(app, ledger, spec, queue, rewrite)
        self.force = force  # queue objects again whatever the ledger says of them

    @property
    def atomic(self) -> bool:
        """True when the broker is the ledger's own Redis: a message is then pushed in
        the same atomic step that marks its object queued."""
        return self.ledger.url is not None and self.ledger.url == self.publisher.app.conf.broker_url

    def enqueue(self, refs: list[ObjectRef], resend_queued: bool) -> tuple[int, int, int]:
        """Queue the refs the ledger does not already have; return (sent, done, queued).

        The ledger decides atomically (one Lua call per 500 keys), so the same object
        is never enqueued twice, not even by two producers at once. Where the broker is
        the ledger's Redis, the messages go in that same call: an object the ledger
        holds queued always has its message, whatever happens to this process or its
        connection meanwhile (a reply lost to a timeout, a crash).
        """
        items = [(ref.key, ref.etag) for ref in refs]
        if self.atomic:
            # (a queued record has its message here: nothing to send again)
            verdicts = self.ledger.queue_many(
                self.spec.batch, items, self.force, False, self.envelopes(refs), self.queue
            )
        else:
            verdicts = self.ledger.queue_many(self.spec.batch, items, self.force, resend_queued)
            self.send(ref for ref, verdict in zip(refs, verdicts, strict=True) if verdict == QUEUED)
        return verdicts.count(QUEUED), verdicts.count(ALREADY_DONE), verdicts.count(ALREADY_QUEUED)


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
        sent, done, queued = enqueuer.enqueue(refs, resend_queued=resuming and first)
        first = False
        report.listed += len(refs)
        report.enqueued += sent
        report.already_done += done
        report.already_queued += queued
        save_listing_point(enqueuer.ledger, batch, last_key, report.enqueued)
        on_page(report)
    save_finished(enqueuer.ledger, batch, report.enqueued)
    return report


@dataclass
class ManifestRun:
    """Enqueues a manifest that may name several buckets: one batch per bucket.

    Progress (manifest entries handled) is checkpointed in every batch the manifest
    touched after each page, so an interrupted run skips what it already enqueued.
    """

    make_enqueuer: Callable[[str], Enqueuer]  # source bucket -> enqueuer of its batch
    enqueuers: dict[str, Enqueuer] = field(default_factory=dict)
    reports: dict[str, EnqueueReport] = field(default_factory=dict)

    def enqueuer(self, bucket: str) -> Enqueuer:
        """The enqueuer (and batch) of ``bucket``."""
        if bucket not in self.enqueuers:
            self.enqueuers[bucket] = self.make_enqueuer(bucket)
            self.reports[bucket] = EnqueueReport(batch=self.enqueuers[bucket].spec.batch)
        return self.enqueuers[bucket]

    def run(
        self,
        pages: Iterable[list[ObjectRef]],
        skip: int,
        on_page: Callable[[int], None] = lambda position: None,
    ) -> int:
        """Enqueue every page after the first ``skip`` entries; return entries seen."""
        position = 0
        resuming = skip > 0
        for page in pages:
            start = position
            position += len(page)
            if position <= skip:
                continue  # enqueued by an earlier, interrupted run
            fresh = page[max(0, skip - start) :]
            by_bucket: dict[str, list[ObjectRef]] = {}
            for ref in fresh:
                by_bucket.setdefault(ref.bucket, []).append(ref)
            for bucket, refs in by_bucket.items():
                sent, done, queued = self.enqueuer(bucket).enqueue(refs, resend_queued=resuming)
                report = self.reports[bucket]
                report.listed += len(refs)
                report.enqueued += sent
                report.already_done += done
                report.already_queued += queued
            resuming = False
            for bucket, enqueuer in self.enqueuers.items():
                save_manifest_point(
                    enqueuer.ledger, enqueuer.spec.batch, position, self.reports[bucket].enqueued
                )
            on_page(position)
        for bucket, enqueuer in self.enqueuers.items():
            save_finished(enqueuer.ledger, enqueuer.spec.batch, self.reports[bucket].enqueued)
        return position


def requeue(enqueuer: Enqueuer, wanted: Callable[[Record], bool], page_size: int = 1000) -> int:
    """Queue again every object of the batch whose record ``wanted`` selects."""
    ledger, spec = enqueuer.ledger, enqueuer.spec
    page: list[ObjectRef] = []
    sent = 0
    for key, record, _ in ledger.iter_records(spec.batch):
        if wanted(record):
            page.append(ObjectRef(spec.source.bucket, key, record.etag, record.bytes_in or None))
        if len(page) == page_size:
            sent += enqueuer.enqueue(page, resend_queued=True)[0]
            page = []
    if page:
        sent += enqueuer.enqueue(page, resend_queued=True)[0]
    return sent
