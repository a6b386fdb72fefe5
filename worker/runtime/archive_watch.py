"""The workers' archiver: done records leave Redis for shards on S3 as batches run.

A Celery worker bootstep starts one thread in each worker's main process. Every
``DCMPRESS_ARCHIVE_INTERVAL`` seconds it archives each batch of its queue whose outbox
holds entries (:func:`worker.runtime.archive.archive_locked`: one process per batch at
a time, under the batch's Redis lock). A batch whose shards cannot be written (its
bucket gone, no permission) is tried again after a growing pause, up to an hour; its
records stay in Redis meanwhile.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from worker.retry import Backoff
from worker.runtime.threadstep import ThreadStep
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.runtime.ledger import Ledger
    from worker.runtime.storage import Storage

log = logging.getLogger(__name__)
STOP_WAIT_SECONDS = 15.0  # for a shard in progress at shutdown
# a batch whose shards fail waits after its n-th failure in a row up to 2**n minutes
FAILING = Backoff(attempts=None, base=60.0, cap=3600.0)


def batches_with_outbox(ledger: Ledger, queue: str) -> list[str]:
    """Batches sent to ``queue`` (or to no noted queue) whose outbox holds entries.

    Batches of other queues are left to their own workers, which have their buckets'
    credentials."""
    from worker.runtime.ledger import Keys

    ids = ledger.batch_ids()
    with ledger.redis.pipeline(transaction=False) as pipe:
        for batch in ids:
            pipe.llen(Keys.outbox(batch))
            pipe.hget(Keys.batch(batch), "queue")
        replies = pipe.execute()
    return [
        batch
        for batch, length, sent_to in zip(ids, replies[::2], replies[1::2], strict=True)
        if length and (sent_to or b"").decode() in (queue, "")
    ]


class ArchiveWatch(ThreadStep):
    """Runs the archiver in a daemon thread of the worker.

    At shutdown a shard in progress is let finish: killed between its PUT and its
    commit it is safe (written again next time), but the batch's lock would hold every
    worker off until it lapses (10 minutes)."""

    thread_name = "dcmpress-archive"
    stop_wait = STOP_WAIT_SECONDS

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.failing: dict[str, tuple[int, float]] = {}  # batch -> (failures, next try)

    def wanted(self, settings: WorkerSettings) -> bool:
        if not settings.archive:
            log.info("archive off (DCMPRESS_ARCHIVE=false): done records stay in Redis")
            return False
        log.info(
            "archive: done records older than %d s go to s3://{output bucket}/%s{batch}/ "
            "in shards of %d (every %.0f s)", settings.archive_keep, settings.report_prefix,
            settings.archive_shard_size, settings.archive_interval,
        )  # fmt: skip
        return True

    def run(self, worker: Any, settings: WorkerSettings) -> None:
        from worker.runtime.ledger import Ledger
        from worker.runtime.storage import Storage

        ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds)
        storage = Storage(settings)
        while not self.stopped.wait(settings.archive_interval):
            try:
                batches = batches_with_outbox(ledger, settings.queue)
            except Exception:  # Redis away: the next tick tries again
                log.warning("archive: cannot read the batches", exc_info=True)
                continue
            for batch in batches:
                if self.stopped.is_set():
                    return
                self._archive(ledger, storage, settings, batch)

    def _archive(
        self, ledger: Ledger, storage: Storage, settings: WorkerSettings, batch: str
    ) -> None:
        from worker.runtime.archive import archive_locked

        failures, next_try = self.failing.get(batch, (0, 0.0))
        if time.monotonic() < next_try:
            return
        try:
            run = archive_locked(
                ledger, storage, batch, report_prefix=settings.report_prefix,
                shard_size=settings.archive_shard_size, keep=settings.archive_keep,
            )  # fmt: skip
        except Exception as exc:  # S3 refused, Redis away, a lapsed lock: records stay
            failures += 1
            self.failing[batch] = (failures, time.monotonic() + FAILING.delay(failures))
            log.warning("archive of batch %s failed (%d in a row): %s; its done records "
                        "stay in Redis", batch, failures, exc)  # fmt: skip
            return
        self.failing.pop(batch, None)
        if run is not None and run.shards:
            log.info(
                "batch %s: %d done record(s) archived in %d shard(s)", batch, run.archived,
                run.shards, extra={"dcmpress": {"batch": batch, **run.__dict__}},
            )  # fmt: skip
