"""``dcmpress reconcile``: find the objects of a batch that no message will ever finish.

An object the ledger says is ``queued`` or ``running`` should have a live message: one
waiting in the queue, or one delivered and not yet acknowledged (a task running, or a
retry waiting for its countdown) in kombu's ``unacked`` hash - and a ``running`` one a
live claim too. Whatever lost all of these (a broker restarted without persistence, a
message dropped by a bug of an older release, a producer killed between marking and
sending) waits for ever. Reconcile compares the ledger with the queue, the unacknowledged
messages and the claims, and sends one message for each orphan. Sending one too many is
harmless: a second delivery of an object waits for its claim, or finds it finished.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from producer.enqueue import Enqueuer
from producer.sources import ObjectRef
from worker.runtime.contract import BatchSpec
from worker.runtime.ledger import Ledger

UNACKED_KEY = "unacked"  # kombu's Redis transport default (unacked_key)
SCAN_PAGE = 1000


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


def _envelopes(ledger: Ledger, queue: str) -> Iterator[Any]:
    """Every message waiting in ``queue`` and every delivered, unacknowledged one."""
    redis = ledger.redis
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


def live_keys(ledger: Ledger, queue: str, batch: str) -> set[str]:
    """Object keys of ``batch`` that have a message waiting or in flight."""
    keys = set()
    for envelope in _envelopes(ledger, queue):
        job = _job_of(envelope)
        if job is not None and job.get("batch") == batch and isinstance(job.get("key"), str):
            keys.add(job["key"])
    return keys


def find_orphans(ledger: Ledger, spec: BatchSpec, queue: str) -> ReconcileReport:
    """The batch's queued or running objects that no live message will finish."""
    report = ReconcileReport(spec.batch)
    live = live_keys(ledger, queue, spec.batch)
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


def reconcile(enqueuer: Enqueuer, queue: str) -> ReconcileReport:
    """Find the batch's orphans and send one message for each.

    A ``running`` orphan keeps its record: the next delivery counts the death and may
    record ``worker_lost`` after ``max_attempts``, as for any worker that died.
    """
    ledger, spec = enqueuer.ledger, enqueuer.spec
    report = find_orphans(ledger, spec, queue)
    records = ledger.get_records(spec.batch, report.queued_orphans + report.running_orphans)
    keys = report.queued_orphans + report.running_orphans
    refs = [
        ObjectRef(spec.source.bucket, key, record.etag if record else "",
                  (record.bytes_in or None) if record else None)
        for key, record in zip(keys, records, strict=True)
    ]  # fmt: skip
    report.sent = enqueuer.send(refs) if refs else 0
    return report
