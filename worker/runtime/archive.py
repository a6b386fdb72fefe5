"""Finished outcomes written out of Redis into shards on S3, so that Redis holds a
batch's counters and its unfinished, failed and cancelled records, not one record per
object of the archive.

A record set ``done``, or ``skipped`` other than by a cancel (:func:`archivable`), puts
its object key on the batch's outbox, a Redis list in finish order
(``scripts.TRANSITION``). :func:`archive_batch` reads the oldest entries and their
records, writes those still finished so and older than ``keep`` seconds as one gzip NDJSON
shard - one line per object, a line of the report set's ``success.ndjson``:
``{"batch": ..., **row}`` (:func:`worker.runtime.rows.report_row`) - to
``s3://{output bucket}/{report prefix}{batch}/outcomes-{n:08d}.ndjson.gz`` with one PUT,
and then in one atomic Lua step (``scripts.ARCHIVE``) deletes those records, unless one
changed meanwhile, drops the outbox entries and moves the batch's shard number ``n`` on.

The shard number moves only in that step: a writer killed between the PUT and the step
writes the same shard name again next time (an overwrite), so no record is lost and
none is in two shards. Readers read shards ``0 .. n-1`` only; a shard written but never
committed is ignored, and overwritten by the next. One process at a time archives a
batch (its Redis lock), and a report holds the same lock while it reads shards, then
Redis (:func:`paused`). The counters are left alone.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from typing import Any, cast

from botocore.exceptions import BotoCoreError, ClientError
from redis.exceptions import RedisError
from redis.lock import Lock

from worker.errors import TransientError
from worker.runtime import contract, scripts
from worker.runtime.contract import BatchSpec, S3Location
from worker.runtime.ledger import Keys, Ledger, shard_of
from worker.runtime.records import Record
from worker.runtime.rows import report_row
from worker.runtime.storage import Storage, classify

log = logging.getLogger(__name__)

SHARD_NAME = "outcomes-{number:08d}.ndjson.gz"
# A running batch writes a shard of fewer records than the shard size only once its
# oldest waiting record finished this long ago: a trickle of events makes a shard per
# ten minutes, not one per run. A finished batch writes its last records at once.
PARTIAL_AFTER = 600.0
# A killed archiver's batch waits this long for its lock; a run renews it at every shard
LOCK_SECONDS = 600.0
RENEW_SECONDS = 60.0  # how often a report holding the lock renews it
# records queued again between the read and the commit leave the shard, which is
# written again without them; after this many rounds the next run tries
COMMIT_ROUNDS = 3


class ArchiveConflict(Exception):
    """Another writer committed a shard of the batch meanwhile (a lapsed lock)."""


@dataclass(frozen=True)
class Archived:
    """A record on its way into a shard: the stored value read, and its row."""

    key: str
    value: bytes
    updated: int
    row: dict[str, Any]


@dataclass
class ArchiveRun:
    """What one :func:`archive_batch` did."""

    shards: int = 0  # shards committed
    archived: int = 0  # records moved out of Redis into them
    dropped: int = 0  # outbox entries of objects no longer archivable (queued again), dropped


@dataclass(frozen=True)
class Progress:
    """A batch's archive so far (its batch hash)."""

    shards: int  # shards committed: the next one's number
    archived: int  # records in them
    at: S3Location | None  # where they are (None before the first)


def shard_place(spec: BatchSpec, report_prefix: str) -> S3Location:
    """Where the shards of ``spec`` go: its output bucket (the source bucket in place)."""
    bucket = spec.dest.bucket if spec.dest is not None else spec.source.bucket
    return S3Location(bucket=bucket, prefix=f"{report_prefix}{spec.batch}/")


def shard_key(place: S3Location, number: int) -> str:
    """The object key of shard ``number``."""
    return place.prefix + SHARD_NAME.format(number=number)


def progress(ledger: Ledger, batch: str) -> Progress:
    """The batch's committed shards, the records in them and where they are."""
    raw = ledger.redis.hmget(Keys.batch(batch), "shards", "archived", "archive_at")
    shards, archived, at = cast(list[bytes | None], raw)
    return Progress(
        int(shards or 0), int(archived or 0), S3Location.parse(at.decode()) if at else None
    )


def archive_batch(
    ledger: Ledger,
    storage: Storage,
    batch: str,
    *,
    report_prefix: str,
    shard_size: int,
    keep: float,
    now: float | None = None,
    lock: Lock | None = None,
) -> ArchiveRun:
    """Move the batch's done records finished over ``keep`` seconds ago out of Redis
    into shards of ``shard_size`` records (see the module's description).

    Run it under the batch's archive lock (:func:`archive_locked`); a ``lock`` given is
    renewed before each shard. Raises :class:`~worker.errors.DcmpressError` if S3 refuses
    a shard (nothing left Redis then) and :class:`ArchiveConflict` if another writer
    committed meanwhile.
    """
    run = ArchiveRun()
    spec = ledger.get_batch(batch)
    if spec is None:  # expired: nowhere to write; its outbox expires with it
        return run
    now = time.time() if now is None else now
    workers = ledger.worker_names()
    commit = ledger.redis.register_script(scripts.ARCHIVE)
    while True:
        done = progress(ledger, batch)
        place = done.at or shard_place(spec, report_prefix)
        entries = [
            raw.decode()
            for raw in cast(list[bytes], ledger.redis.lrange(Keys.outbox(batch), 0, shard_size - 1))
        ]
        rows, taken = _eligible(ledger, spec, workers, entries, now - keep)
        full = taken == shard_size
        if not taken:
            return run
        short = bool(rows) and not full and rows[0].updated > now - PARTIAL_AFTER
        if short and not _complete(ledger, batch):
            return run  # a running batch's short shard waits for more records, or age
        if lock is not None:
            lock.reacquire()  # raises if another process took the lock: it carries on
        archived = _commit(ledger, storage, commit, batch, place, done.shards, taken, rows)
        if archived is None:
            return run
        run.shards += 1 if archived else 0
        run.archived += len(archived)
        run.dropped += taken - len(archived)
        if not full:
            return run


def _eligible(
    ledger: Ledger, spec: BatchSpec, workers: dict[str, str], entries: list[str], before: float
) -> tuple[list[Archived], int]:
    """The records of the outbox ``entries`` that go into a shard now, and how many
    entries that consumes: up to the first record finished after ``before``. An entry of
    an object no longer archivable (queued again: its next finish adds a new entry) or seen
    already in this window is consumed without a row."""
    with ledger.redis.pipeline(transaction=False) as pipe:
        for key in entries:
            shard = shard_of(key)
            pipe.hget(Keys.objects(spec.batch, shard), key)
            pipe.hget(Keys.messages(spec.batch, shard), key)
        replies = pipe.execute()
    rows: list[Archived] = []
    seen: set[str] = set()
    taken = 0
    for key, value, message in zip(entries, replies[::2], replies[1::2], strict=True):
        record = Record.decode(value) if value is not None else None
        if record is not None and archivable(record) and key not in seen:
            if record.updated > before:
                break  # the outbox is in finish order: the rest is younger still
            row = report_row(key, record, (message or b"").decode(), workers, spec)
            rows.append(Archived(key, value, record.updated, row))
            seen.add(key)
        taken += 1
    return rows, taken


def archivable(record: Record) -> bool:
    """True for a record that goes out to the shards: done, or skipped other than by a
    cancel. Failed records stay for ``retry``, cancelled ones for ``resume`` (as the
    transition script decides which keys go on the outbox)."""
    return record.state == "done" or (record.state == "skipped" and record.code != "cancelled")


def _complete(ledger: Ledger, batch: str) -> bool:
    """True once the batch was enqueued in full and nothing of it is queued or running
    (as ``dcmpress status`` says "complete")."""
    with ledger.redis.pipeline(transaction=False) as pipe:
        pipe.hmget(Keys.counts(batch), "queued", "running")
        pipe.hexists(Keys.batch(batch), "listing_done")
        (queued, running), listed = pipe.execute()
    return bool(listed) and not int(queued or 0) and not int(running or 0)


def _commit(
    ledger: Ledger,
    storage: Storage,
    commit: Any,
    batch: str,
    place: S3Location,
    number: int,
    taken: int,
    rows: list[Archived],
) -> list[Archived] | None:
    """Write shard ``number`` of ``rows`` (none: only drop ``taken`` stale entries) and
    commit it; the records that left Redis, or None if they kept changing."""
    for _ in range(COMMIT_ROUNDS):
        if rows:
            put_shard(storage, place, number, batch, [item.row for item in rows])
        keys = [Keys.batch(batch), Keys.outbox(batch)]
        args: list[str | int | bytes] = [number, taken, int(bool(rows)), str(place)]
        for item in rows:
            shard = shard_of(item.key)
            keys += [Keys.objects(batch, shard), Keys.messages(batch, shard)]
            args += [item.key, item.value]
        reply = [int(v) for v in commit(keys=keys, args=args)]
        if reply[0] == 1:
            return rows
        if reply[0] == -1:
            raise ArchiveConflict(f"batch {batch}: shard {number} was committed by another writer")
        changed = set(reply[1:])  # queued again since they were read: they stay in Redis
        rows = [item for index, item in enumerate(rows, 1) if index not in changed]
    log.info("batch %s: records kept changing while shard %d was written; next run",
             batch, number)  # fmt: skip
    return None


def put_shard(
    storage: Storage, place: S3Location, number: int, batch: str, rows: list[dict[str, Any]]
) -> int:
    """Write shard ``number`` (one PUT: durable once answered); return its size."""
    lines = "".join(json.dumps({"batch": batch, **row}) + "\n" for row in rows)
    body = gzip.compress(lines.encode(), compresslevel=6, mtime=0)  # the same rows, bytes
    key = shard_key(place, number)
    try:
        # an overwrite is harmless (it is what a rerun does), so botocore's own retries
        # may resend it; the marker makes listeners and workers leave it alone
        storage.client.put_object(
            Bucket=place.bucket, Key=key, Body=body, ContentType="application/gzip",
            Metadata={contract.META_MARKER: "1"},
        )  # fmt: skip
    except (ClientError, BotoCoreError) as exc:
        raise classify(exc, f"write shard s3://{place.bucket}/{key}") from exc
    return len(body)


def archived_rows(ledger: Ledger, storage: Storage, batch: str) -> Iterator[dict[str, Any]]:
    """The report rows in the batch's committed shards, in shard order, read as a
    stream (one shard's compressed buffer at a time, never a whole shard)."""
    done = progress(ledger, batch)
    if done.at is None:
        return
    for number in range(done.shards):
        yield from read_shard(storage, done.at, number)


def read_shard(storage: Storage, place: S3Location, number: int) -> Iterator[dict[str, Any]]:
    """The rows of one shard, line by line."""
    key = shard_key(place, number)
    body = storage.open_stream(place.bucket, key)
    try:
        with closing(body), gzip.GzipFile(fileobj=body) as unzipped:
            for line in io.TextIOWrapper(unzipped, encoding="utf-8"):
                row = json.loads(line)
                row.pop("batch", None)  # the batch of every line, known to the reader
                yield row
    except (ClientError, BotoCoreError) as exc:
        raise classify(exc, f"read shard s3://{place.bucket}/{key}") from exc


def archive_locked(
    ledger: Ledger,
    storage: Storage,
    batch: str,
    *,
    report_prefix: str,
    shard_size: int,
    keep: float,
) -> ArchiveRun | None:
    """:func:`archive_batch` under the batch's lock; None if another process holds it."""
    lock = ledger.archive_lock(batch, LOCK_SECONDS)
    if not lock.acquire(blocking=False):
        return None
    try:
        return archive_batch(
            ledger, storage, batch, report_prefix=report_prefix, shard_size=shard_size,
            keep=keep, lock=lock,
        )  # fmt: skip
    finally:
        with suppress(RedisError):  # lapsed and taken, or Redis away: it lapses by itself
            lock.release()


@contextmanager
def paused(ledger: Ledger, batch: str) -> Iterator[Callable[[], None]]:
    """Hold the batch's archive lock, once a run in progress has ended, so that no
    record moves from Redis into a shard meanwhile: a reader of shards then Redis sees
    each record once. Yields a function to call often (it renews the lock every minute).
    """
    lock = ledger.archive_lock(batch, LOCK_SECONDS)
    if not lock.acquire(blocking=True, blocking_timeout=LOCK_SECONDS):
        raise TransientError(
            f"batch {batch}: its archive lock was held for {LOCK_SECONDS:.0f} s; try again"
        )
    renewed = time.monotonic()

    def renew() -> None:
        nonlocal renewed
        if time.monotonic() - renewed > RENEW_SECONDS:
            lock.reacquire()
            renewed = time.monotonic()

    try:
        yield renew
    finally:
        with suppress(RedisError):  # lapsed, or Redis away: it lapses by itself
            lock.release()
