"""The reconcile check: find the objects of a batch that no message will ever finish.

An object the ledger says is ``queued`` or ``running`` should have a live message: one
waiting in the queue, or one delivered and not yet acknowledged (a task running, or a
retry waiting for its countdown) in kombu's ``unacked`` hash - and a ``running`` one a
live claim too. Whatever lost all of these (a broker restarted without persistence, a
message dropped by a bug of an older release, a producer killed between marking and
sending) waits for ever. Reconcile compares the ledger with the queue, the unacknowledged
messages and the claims, and sends one message for each orphan. Sending one too many is
harmless: a second delivery of an object waits for its claim, or finds it finished.

``dcmpress reconcile`` runs it for one batch; the workers run it by themselves
(:func:`reconcile_stalled`, from ``worker/runtime/watchdog.py``) for a batch with
pending objects none of which finished for ``DCMPRESS_RECONCILE_AFTER`` seconds, once
the queue is short enough to read.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from redis import RedisError

from worker.runtime.contract import BatchSpec, ObjectRef
from worker.runtime.ledger import Ledger
from worker.runtime.publish import JobSender

log = logging.getLogger(__name__)

UNACKED_KEY = "unacked"  # kombu's Redis transport default (unacked_key)
SCAN_PAGE = 1000
# A longer queue is not read by the automatic check: work is moving, and an orphan
# is found once the queue drains (reading a million messages each time would cost more)
AUTOMATIC_QUEUE_LIMIT = 10_000


@dataclass
class ReconcileReport:
    """What a check found (and, unless it was a dry run, sent)."""

    batch: str
    checked: int = 0  # objects of the batch the ledger knows
    pending: int = 0  # queued or running in the ledger
    with_message: int = 0
    queued_orphans: list[str] = field(default_factory=list)
    running_orphans: list[str] = field(default_factory=list)  # no message, no live claim
    sent: int = 0

    @property
    def orphans(self) -> int:
        """Objects with no live message."""
        return len(self.queued_orphans) + len(self.running_orphans)


def _job_of(envelope: Any) -> dict[str, Any] | None:
    """The job message (batch, key, ...) inside one kombu envelope, if it is ours."""
    try:
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        job = args[0] if args else None
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return job if isinstance(job, dict) else None


@contextmanager
def broker_redis(app: Celery) -> Iterator[Any]:
    """A Redis client of the broker (which need not be the ledger's Redis)."""
    with app.connection_for_read() as connection:
        channel: Any = connection.default_channel  # kombu's Redis channel
        if not hasattr(channel, "conn_or_acquire"):
            raise RuntimeError("reconcile needs a Redis broker (redis:// URL)")
        with channel.conn_or_acquire() as client:
            yield client


def _envelopes(redis: Any, queue: str) -> Iterator[Any]:
    """Every message waiting in ``queue`` and every delivered, unacknowledged one."""
    length = int(redis.llen(queue))
    for start in range(0, length, SCAN_PAGE):
        for raw in redis.lrange(queue, start, start + SCAN_PAGE - 1):
            try:
                yield json.loads(raw)
            except ValueError:
                continue
    for _, raw in redis.hscan_iter(UNACKED_KEY, count=SCAN_PAGE):
        try:
            yield json.loads(raw)[0]  # [message, exchange, routing key]
        except (ValueError, IndexError, TypeError):
            continue


def live_keys(broker: Any, queue: str, batch: str) -> set[str]:
    """Object keys of ``batch`` that have a message waiting or in flight."""
    keys = set()
    for envelope in _envelopes(broker, queue):
        job = _job_of(envelope)
        if job is not None and job.get("batch") == batch and isinstance(job.get("key"), str):
            keys.add(job["key"])
    return keys


def find_orphans(ledger: Ledger, spec: BatchSpec, queue: str, broker: Any) -> ReconcileReport:
    """The batch's queued or running objects that no live message will finish.

    ``broker`` is a Redis client of the broker (:func:`broker_redis`).
    """
    report = ReconcileReport(spec.batch)
    live = live_keys(broker, queue, spec.batch)
    for key, record, _ in ledger.iter_records(spec.batch):
        report.checked += 1
        if record.state not in ("queued", "running"):
            continue
        report.pending += 1
        if key in live:
            report.with_message += 1
        elif record.state == "queued":
            report.queued_orphans.append(key)
        elif ledger.claim_owner(spec.source.bucket, key) is not None:
            report.with_message += 1  # a worker holds it right now
        else:
            report.running_orphans.append(key)
    return report


def reconcile(sender: JobSender, queue: str) -> ReconcileReport:
    """Find the batch's orphans and send one message for each.

    A ``running`` orphan keeps its record: the next delivery counts the death and may
    record ``worker_lost`` after ``max_attempts``, as for any worker that died.
    """
    ledger, spec = sender.ledger, sender.spec
    with broker_redis(sender.publisher.app) as broker:
        report = find_orphans(ledger, spec, queue, broker)
    records = ledger.get_records(spec.batch, report.queued_orphans + report.running_orphans)
    keys = report.queued_orphans + report.running_orphans
    refs = [
        ObjectRef(spec.source.bucket, key, record.etag if record else "",
                  (record.bytes_in or None) if record else None)
        for key, record in zip(keys, records, strict=True)
    ]  # fmt: skip
    report.sent = sender.send(refs) if refs else 0
    return report


def stalled_batches(ledger: Ledger, queue: str, idle_after: float, now: float) -> list[str]:
    """Batches sent to ``queue`` with pending objects and no activity (an object started
    or finished, objects queued, a check) for ``idle_after`` seconds.

    Batches of other queues are left to their own workers: their live messages are not
    in this queue, so all their objects would look orphaned here.
    """
    ids = ledger.batch_ids()
    return [
        batch
        for batch, (pending, last, sent_to) in zip(ids, ledger.activity(ids), strict=True)
        if pending and now - last > idle_after and sent_to in (queue, "")
    ]


def reconcile_stalled(
    app: Celery, ledger: Ledger, queue: str, idle_after: float, now: float | None = None
) -> int:
    """Reconcile every stalled batch (the workers' automatic check); return messages sent.

    One worker at a time runs it (a Redis lock); each batch is checked at most once per
    ``idle_after`` seconds while it stays stalled.
    """
    lock = ledger.reconcile_lock(timeout=max(60.0, idle_after))
    if not lock.acquire(blocking=False):
        return 0
    sent = 0
    try:
        now = time.time() if now is None else now
        stalled = stalled_batches(ledger, queue, idle_after, now)
        if not stalled:
            return 0
        with broker_redis(app) as broker:
            if int(broker.llen(queue)) > AUTOMATIC_QUEUE_LIMIT:
                return 0
        for batch in stalled:
            spec = ledger.get_batch(batch)
            if spec is None:
                continue
            report = reconcile(JobSender(app, ledger, spec, queue), queue)
            ledger.note_reconciled(batch, report.sent, now)
            sent += report.sent
            if report.sent:
                log.warning(
                    "batch %s: nothing finished for over %d s; %d object(s) had no live "
                    "message or worker and were sent again", batch, idle_after, report.sent,
                    extra={"dcmpress": {"batch": batch, "sent": report.sent,
                                        "queued_orphans": len(report.queued_orphans),
                                        "running_orphans": len(report.running_orphans)}},
                )  # fmt: skip
    finally:
        with suppress(RedisError):  # expired meanwhile, or Redis away: it lapses by itself
            lock.release()
    return sent
