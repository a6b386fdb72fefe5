"""``dcmpress listen``: storage events in, jobs out, at least once and never twice.

Two front doors share one :class:`EventIntake`:

* :class:`SqsListener` long-polls an SQS queue (S3 notifications, SNS-wrapped or not,
  EventBridge) and deletes a message only after its jobs are durably enqueued.
* the webhook (:mod:`producer.webhook`, Starlette on uvicorn) for MinIO, Ceph RGW, the
  SeaweedFS filer and Cloud Storage (Pub/Sub push, CloudEvents); it answers 2xx only
  after enqueueing, or after spooling the message while Redis cannot take it
  (:mod:`producer.spool`), since many senders never retry.

Duplicate events (all of these are at-least-once) are absorbed by the ledger: the
same bucket/key/ETag in a batch is queued once, and a new ETag is a new job (the
newest version wins, see :mod:`worker.runtime.ledger`). Events go to one batch per source
bucket and UTC day (``events-<bucket>-<YYYYMMDD>``), or ``<name>-<bucket>`` with
``--batch``, so ``status`` and ``report`` work for them as for listings.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from producer.batches import OnConflict, open_batch
from producer.enqueue import Enqueuer
from producer.events import EventFormatError, ObjectEvent, RejectedRecord, parse_message
from producer.sources import ObjectRef
from producer.spool import Spool
from worker.codec.options import CompressionOptions
from worker.errors import DcmpressError, one_line
from worker.retry import Backoff
from worker.runtime import contract
from worker.runtime.contract import BatchSpec, S3Location
from worker.runtime.ledger import Ledger
from worker.runtime.storage import Storage

log = logging.getLogger(__name__)

POISON_KEY = "dcmpress:events:poison"  # list: the last 1,000 rejected messages (capped)
POISON_KEEP = 1000
REJECTS_SHOWN = 3  # the rejected records of one message its poison entry shows


@dataclass(frozen=True)
class EventFilter:
    """Which events become jobs."""

    prefixes: tuple[str, ...] = ()
    exclude_prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    exclude_suffixes: tuple[str, ...] = ()
    min_size: int = 1

    def accepts(self, event: ObjectEvent) -> bool:
        """True for a created object that passes every filter."""
        key = event.key
        lowered = key.lower()
        if event.kind != "created" or not key or key.endswith("/"):
            return False
        if event.bucket.startswith("."):  # SeaweedFS's own .system folder, not a bucket
            return False
        if self.prefixes and not key.startswith(self.prefixes):
            return False
        if self.exclude_prefixes and key.startswith(self.exclude_prefixes):
            return False
        if self.suffixes and not lowered.endswith(tuple(s.lower() for s in self.suffixes)):
            return False
        if self.exclude_suffixes and lowered.endswith(
            tuple(s.lower() for s in self.exclude_suffixes)
        ):
            return False
        return event.size is None or event.size >= self.min_size


@dataclass
class IntakeReport:
    """What one message (or request) turned into."""

    enqueued: int = 0
    duplicates: int = 0
    ignored: int = 0
    tests: int = 0
    rejected: int = 0  # records that could not be read (kept in the poison list)
    batches: set[str] = field(default_factory=set)
    spooled: int = 0  # messages kept in the spool, to be handled once Redis answers
    poison: str = ""  # why the whole message was rejected (kept in the poison list)


# What "Redis cannot take it now" looks like: away, hung (a timeout), full (OOM), a
# replica, a missing permission; the broker's connection errors come through kombu
UNAVAILABLE: tuple[type[Exception], ...] = (redis.RedisError, OperationalError)
# Redis calls on the event path give up after this (a sender is waiting); the message
# is then spooled
EVENT_REDIS_TIMEOUT = 3.0


class EventIntake:
    """Turns parsed events into jobs in per-bucket, per-day batches."""

    def __init__(
        self,
        app: Celery,
        ledger: Ledger,
        storage: Storage,
        queue: str,
        dest: S3Location | None,
        in_place: bool,
        options: CompressionOptions,
        event_filter: EventFilter,
        batch_name: str | None = None,
        policy: str | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.app = app
        self.ledger = ledger
        self.storage = storage
        self.queue = queue
        self.dest = dest
        self.in_place = in_place
        self.options = options
        self.filter = event_filter
        self.batch_name = batch_name
        self.policy = policy
        self.spool = spool
        self._enqueuers: dict[str, Enqueuer] = {}
        self._lock = threading.Lock()  # the HTTP server handles requests in threads
        self._spooling = False  # (to log an outage once, not once per message)

    def batch_for(self, bucket: str, received: float | None = None) -> str:
        """The batch an event of ``bucket`` received at ``received`` (default: now)
        belongs to."""
        if self.batch_name:
            return f"{self.batch_name}-{bucket}"
        day = dt.datetime.fromtimestamp(time.time() if received is None else received, dt.UTC)
        return f"events-{bucket}-{day:%Y%m%d}"

    def _enqueuer(self, bucket: str, received: float | None = None) -> Enqueuer:
        batch = self.batch_for(bucket, received)
        enqueuer = self._enqueuers.get(batch)
        if enqueuer is None:
            wanted = BatchSpec(
                batch=batch, source=S3Location(bucket=bucket), dest=self.dest,
                in_place=self.in_place, options=self.options, policy=self.policy,
            )  # fmt: skip
            # a listener restarted with other options or another policy: the events
            # from now on go to a batch of their own, never under the old spec
            opened = open_batch(self.ledger, wanted, OnConflict.FORK)
            if opened.forked_from:
                log.warning(
                    "batch %s has other options or another policy; events go to %s",
                    opened.forked_from, opened.spec.batch,
                )  # fmt: skip
            enqueuer = Enqueuer(self.app, self.ledger, opened.spec, self.queue)
            recent = list(self._enqueuers.items())[: self.KEEP_ENQUEUERS - 1]
            self._enqueuers = {batch: enqueuer, **dict(recent)}
        return enqueuer

    KEEP_ENQUEUERS = 64  # batches whose spec is kept at hand (one per bucket and day)

    def _look_up(self, event: ObjectEvent) -> tuple[bool, str]:
        """(is it our own output?, its ETag), with one HEAD request only where needed.

        Our own writes raise events too: they are dropped (else in-place mode would
        loop). An event without an ETag (MinIO's key-only logs, composite GCS objects)
        gets the object's current one, so a re-upload is not mistaken for a duplicate.
        """
        etag = event.etag or ""
        output_bucket = self.in_place or (
            self.dest is not None and event.bucket == self.dest.bucket
        )
        in_dest_prefix = (
            self.dest is not None
            and event.bucket == self.dest.bucket
            and bool(self.dest.prefix)
            and event.key.startswith(self.dest.prefix)
        )
        if in_dest_prefix:
            return True, etag
        if not output_bucket and etag:
            return False, etag
        try:
            head = self.storage.head(event.bucket, event.key)  # the current version
        except DcmpressError:
            return False, etag  # gone or unreadable: let the worker record what it finds
        ours = output_bucket and bool(head.metadata.get(contract.META_MARKER))
        return ours, etag or head.etag

    def handle(self, events: list[ObjectEvent], received: float | None = None) -> IntakeReport:
        """Enqueue the accepted events; raises on a failure to enqueue (retry later)."""
        report = IntakeReport()
        by_bucket: dict[str, list[ObjectRef]] = {}
        for event in events:
            if event.kind == "test":
                report.tests += 1
                continue
            if not self.filter.accepts(event):
                report.ignored += 1
                continue
            ours, etag = self._look_up(event)
            if ours:
                report.ignored += 1
                continue
            # no version id: the worker compresses the key's current version, so the
            # newest version wins whatever order events and deliveries come in
            ref = ObjectRef(event.bucket, event.key, etag, event.size)
            by_bucket.setdefault(event.bucket, []).append(ref)
        with self._lock:
            for bucket, refs in by_bucket.items():
                enqueuer = self._enqueuer(bucket, received)
                sent, done, queued = enqueuer.enqueue(refs, resend_queued=False)
                report.enqueued += sent
                report.duplicates += done + queued
                report.batches.add(enqueuer.spec.batch)
        return report

    def accept(self, body: str | bytes | Mapping[str, object], source: str) -> IntakeReport:
        """Handle one webhook message now, or keep it in the spool if Redis cannot take
        it (away, hung, full): a sender that never retries loses nothing either way.

        While the spool holds messages, new ones join them there, so they are handled
        in the order they came. Raises :class:`~producer.spool.SpoolFull` past the
        spool's bound, and whatever Redis raises when there is no spool.
        """
        received = time.time()
        if self.spool is not None and self.spool.size:
            return self._spool(body, source, received)
        try:
            return self.handle_or_keep_poison(body, source, received)
        except UNAVAILABLE as exc:
            if self.spool is None:
                raise
            if not self._spooling:
                log.warning("Redis cannot take events now (%s); spooling them in %s",
                            one_line(str(exc), 200), self.spool.directory)  # fmt: skip
            return self._spool(body, source, received)

    def _spool(
        self, body: str | bytes | Mapping[str, object], source: str, received: float
    ) -> IntakeReport:
        assert self.spool is not None
        if isinstance(body, Mapping):
            data = json.dumps(body).encode()
        else:
            data = body.encode() if isinstance(body, str) else body
        self.spool.append(data, source, received)
        self._spooling = True
        return IntakeReport(spooled=1)

    def drain_spool(self, stop: threading.Event) -> None:
        """Hand the spooled messages over in order as soon as Redis takes them, until
        ``stop`` is set (a thread of ``dcmpress listen``)."""
        assert self.spool is not None
        delay = self.DRAIN_RETRY_FIRST
        while not stop.is_set():
            message = self.spool.first()
            if message is None:
                if self._spooling:
                    self._spooling = False
                    log.warning("spool drained: every spooled message is enqueued")
                self.spool.wait(1.0)
                continue
            try:
                self.handle_or_keep_poison(message.body, message.source, message.received)
            except UNAVAILABLE:
                stop.wait(delay)  # Redis still away: the message waits its turn
                delay = min(delay * 2, self.DRAIN_RETRY_MAX)
                continue
            except Exception as exc:  # a message this release cannot handle: never block
                log.exception("a spooled message could not be handled; kept as poison")
                try:
                    self.record_poison(message.body, f"internal error: {exc}", message.source)
                except UNAVAILABLE:
                    stop.wait(delay)
                    continue
            self.spool.handled(message)
            delay = self.DRAIN_RETRY_FIRST

    DRAIN_RETRY_FIRST, DRAIN_RETRY_MAX = 0.5, 10.0  # seconds between tries while away

    def handle_or_keep_poison(
        self, body: str | bytes | Mapping[str, object], source: str, received: float | None = None
    ) -> IntakeReport:
        """:meth:`handle_body`, with a poison message kept (its report says why)."""
        try:
            return self.handle_body(body, source, received)
        except EventFormatError as exc:
            self.record_poison(body, str(exc), source)
            return IntakeReport(poison=str(exc))

    def handle_body(
        self, body: str | bytes | Mapping[str, object], source: str, received: float | None = None
    ) -> IntakeReport:
        """Parse and handle one message body; EventFormatError for a poison message.

        A record that cannot be read is kept in the poison list on its own; the valid
        records of the same message are enqueued.
        """
        rejected: list[RejectedRecord] = []
        report = self.handle(parse_message(body, rejected=rejected), received)
        if rejected:  # one entry and one log line per message, however many records
            first = rejected[:REJECTS_SHOWN]
            reasons = "; ".join(f"{record.where}: {record.reason}" for record in first)
            more = (
                f" (and {len(rejected) - len(first):,} more)" if len(rejected) > len(first) else ""
            )
            self.record_poison(
                json.dumps([record.record for record in first], default=str),
                f"{len(rejected):,} records rejected: {reasons}{more}",
                source,
            )
        report.rejected = len(rejected)
        return report

    def record_poison(
        self, body: str | bytes | Mapping[str, object], reason: str, source: str
    ) -> None:
        """Keep a rejected message for the operator (capped list), and log it."""
        if isinstance(body, Mapping):
            text = json.dumps(body, default=str)
        else:
            # 4,000 characters are at most 16,000 bytes: never decode a 4 MiB body whole
            text = body[:16_000].decode("utf-8", "replace") if isinstance(body, bytes) else body
        entry = json.dumps({"at": time.time(), "source": source, "reason": reason,
                            "body": text[:4000]})  # fmt: skip
        log.error("rejected event message from %s: %s", source, reason)
        with self.ledger.redis.pipeline() as pipe:
            pipe.lpush(POISON_KEY, entry)
            pipe.ltrim(POISON_KEY, 0, POISON_KEEP - 1)
            pipe.execute()


# waits between failed SQS receives (the queue or its endpoint away): up to 2, 4, ... 60 s
RECEIVE_BACKOFF = Backoff(attempts=None, base=2.0, cap=60.0)


class SqsListener:
    """Long-polls one SQS queue; deletes messages only once their jobs are enqueued."""

    def __init__(
        self,
        client: Any,
        queue_url: str,
        intake: EventIntake,
        wait_seconds: int = 20,
        visibility_timeout: int = 120,
    ) -> None:
        self.client = client
        self.queue_url = queue_url
        self.intake = intake
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self.stopping = threading.Event()

    def poll_once(self) -> int:
        """Receive up to 10 messages, handle them, delete the handled ones."""
        response = self.client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=self.wait_seconds,
            VisibilityTimeout=self.visibility_timeout,
        )
        messages = response.get("Messages", [])
        started = time.monotonic()
        done: list[dict[str, str]] = []
        for index, message in enumerate(messages):
            if time.monotonic() - started > self.visibility_timeout / 2:
                self._extend(messages[index:])  # a slow batch: keep the rest invisible
                started = time.monotonic()
            try:
                # a poison message never becomes valid: it is kept for the operator and
                # deleted like a handled one
                self.intake.handle_or_keep_poison(message.get("Body", ""), f"sqs:{self.queue_url}")
            except Exception:
                # Redis unavailable (SQS is the spool here): leave the message; SQS
                # delivers it again after the visibility timeout
                log.exception("could not enqueue an SQS message; it will be redelivered")
                continue
            done.append({"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]})
        if done:
            self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=done)
        return len(messages)

    def _extend(self, messages: list[dict[str, Any]]) -> None:
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"],
             "VisibilityTimeout": self.visibility_timeout}
            for i, m in enumerate(messages)
        ]  # fmt: skip
        self.client.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)

    def run(self) -> None:
        """Poll until :meth:`stop`; transient failures back off and continue."""
        failures = 0
        while not self.stopping.is_set():
            try:
                self.poll_once()
                failures = 0
            except Exception:
                failures += 1
                log.exception("SQS receive failed")
                self.stopping.wait(RECEIVE_BACKOFF.delay(failures))

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current poll."""
        self.stopping.set()
