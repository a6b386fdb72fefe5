"""Turning object references into job messages: de-duplication, batching, sending.

Order matters for "nothing lost, nothing twice": records are marked ``queued`` and the
messages sent, then the feeder's checkpoint moves past them (``producer/feeder.py``). A
crash anywhere sends at most one chunk again. Where the broker is the ledger's Redis
(the default), a record and its message are written in one atomic step, so nothing
more is needed; with a broker of its own, the objects found ``queued`` in that chunk
are sent again and the duplicates are absorbed by the worker (claim + terminal-record check).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from celery import Celery

from producer.sources import ObjectRef
from worker.runtime.contract import BatchSpec
from worker.runtime.ledger import ALREADY_DONE, ALREADY_QUEUED, QUEUE_CALL, QUEUED, Ledger
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
            verdicts = self._queue_overlapped(refs)
        else:
            verdicts = self.ledger.queue_many(self.spec.batch, items, self.force, resend_queued)
            self.send(ref for ref, verdict in zip(refs, verdicts, strict=True) if verdict == QUEUED)
        return verdicts.count(QUEUED), verdicts.count(ALREADY_DONE), verdicts.count(ALREADY_QUEUED)

    def _queue_overlapped(self, refs: list[ObjectRef]) -> list[int]:
        """Queue ``refs`` with their messages, each part's envelopes built while Redis
        runs the call before (Ledger.queue_streamed)."""

        def parts() -> Iterator[tuple[list[tuple[str, str]], list[str]]]:
            for start in range(0, len(refs), QUEUE_CALL):
                part = refs[start : start + QUEUE_CALL]
                yield [(ref.key, ref.etag) for ref in part], self.envelopes(part)

        return self.ledger.queue_streamed(self.spec.batch, parts(), self.force, self.queue)


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
