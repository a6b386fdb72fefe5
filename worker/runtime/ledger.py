"""The ledger in Redis: batch specs, per-object outcomes, batch counters, claims.

Every Redis key dcmpress uses is built by a function in this module's ``Keys`` class,
so the whole scheme is on one screen. All keys but the claims expire
``retention_days`` after their last update.

Key (type) - content - lifetime
- ``dcmpress:batches`` (zset) - batch ids scored by creation time - retention
- ``dcmpress:batch:{b}`` (hash) - ``spec`` (BatchSpec JSON), ``checkpoint`` (listing
  position), ``enqueued`` (keys sent), ``listing_done``, ``cancelled``,
  ``example:{code}`` (the latest key that failed with that code), ``queued_at`` (when
  objects were last queued), ``queue`` (where its messages were sent),
  ``reconciled_at``/``reconciled_sent`` (the automatic reconcile's last check,
  messages it sent), ``feed`` (how it is fed: a :class:`~producer.feeder.FeedPlan`
  JSON), ``feed_state``/``feed_state_at`` (what its feeder does now, and since
  when), ``shards``/``archived``/``archive_at`` (archive shards committed, records they
  hold, ``s3://bucket/prefix/`` they are under; ``worker/runtime/archive.py``) - retention
- ``dcmpress:batch:{b}:counts`` (hash) - objects per state (queued, running, done,
  skipped, failed), ``bytes_in``/``bytes_out`` of finished objects, ``written_in``
  (bytes_in of those with an output, the base of "saved"), ``code:{code}``
  counts, ``stage:{name}`` seconds, ``started_at``/``finished_at``, and with a policy
  per rule (its 1-based number in base 36) ``rule:{n}`` objects and
  ``rule_in:{n}``/``rule_out:{n}`` bytes of those written - retention
- ``dcmpress:batch:{b}:obj:{n}`` (hash, n < 8192) - object key -> compact record
  (see :class:`~worker.runtime.records.Record`); sharded so each hash stays small - retention
- ``dcmpress:batch:{b}:msg:{n}`` (hash) - object key -> one-line message, only for
  skipped and failed objects and done ones with notices (moved overlays, cleared
  high bits); other done objects' messages are derived - retention
- ``dcmpress:batch:{b}:outbox`` (list) - keys of objects recorded done, in finish order
  (a key again each time), until the archiver has written their records to a shard and
  deleted them (~45 bytes an entry) - drained within minutes, else retention
- ``dcmpress:workers`` (hash) - worker tag -> worker name (records keep the tag) - none
- ``dcmpress:claim:{sha1(bucket/key)}`` (string) - owner (``worker-id:pid:nonce``) of the
  object while a worker processes it; renewed by a heartbeat, deleted at the end -
  ``claim_ttl``, so a killed worker's claim lapses within a minute
- ``dcmpress:feeds`` (set) - batches whose listing or manifest is still being fed
  (``producer/feeder.py``) - until fed in full
- ``dcmpress:lock:feed:{b}`` (string) - redis-py lock: the one process feeding the
  batch (an ``enqueue``, else a worker) - renewed while it feeds, else lapses in 60 s
- ``dcmpress:lock:archive:{b}`` (string) - redis-py lock: the one process archiving the
  batch, or a report reading it - released after each, or lapses in 10 minutes
- ``dcmpress:lock:reconcile`` (string) - redis-py lock: one worker at a time runs the
  automatic reconcile check - released after it, or lapses
- ``dcmpress:breaker:{queue}`` (hash) - present while storage fails across the objects
  of a queue's workers (they share a storage endpoint; the breaker is open,
  ``worker/runtime/breaker.py``): ``since``, ``error``, the
  ``bucket``/``key`` that failed last, ``probed`` (the latest failed probe) - until a
  probe succeeds
- ``dcmpress:breaker-outcomes:{queue}`` (list) - the newest storage outcomes of objects,
  ``time|failed|digest`` entries, newest first - trimmed to 200 (or ten times
  ``breaker_min_objects``), gone an hour after the last
- ``dcmpress:lock:breaker-probe:{queue}`` (string) - redis-py lock: one worker at a
  time probes storage while the breaker is open - never released, lapses after the probe interval
- ``dcmpress:ledger:back`` (string) - epoch seconds when a worker found this Redis
  answering again after it had not (``worker/runtime/ledger_outages.py``) - one day
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.errors import one_line
from worker.runtime import scripts
from worker.runtime.contract import BatchSpec
from worker.runtime.records import Record, short_etag, to_base36, worker_tag

# Shards per batch: with Redis's default small-hash limits (128 entries in Redis 7,
# 512 in 6.2) a batch of up to ~1M objects stays in the compact listpack encoding.
SHARDS = 8192


class Keys:
    """Builds every Redis key dcmpress uses."""

    prefix = "dcmpress"

    @classmethod
    def batches(cls) -> str:
        """Sorted set of batch ids by creation time."""
        return f"{cls.prefix}:batches"

    @classmethod
    def batch(cls, batch: str) -> str:
        """Hash: spec, checkpoint, enqueue progress."""
        return f"{cls.prefix}:batch:{batch}"

    @classmethod
    def counts(cls, batch: str) -> str:
        """Hash: counters of the batch."""
        return f"{cls.prefix}:batch:{batch}:counts"

    @classmethod
    def objects(cls, batch: str, shard: int) -> str:
        """Hash: object key -> record, one shard."""
        return f"{cls.prefix}:batch:{batch}:obj:{shard}"

    @classmethod
    def messages(cls, batch: str, shard: int) -> str:
        """Hash: object key -> message of a skipped or failed object, one shard."""
        return f"{cls.prefix}:batch:{batch}:msg:{shard}"

    @classmethod
    def outbox(cls, batch: str) -> str:
        """List: keys of objects recorded done and not archived yet, oldest first."""
        return f"{cls.prefix}:batch:{batch}:outbox"

    @classmethod
    def archive_lock(cls, batch: str) -> str:
        """String: the redis-py lock of the one process archiving ``batch``."""
        return f"{cls.prefix}:lock:archive:{batch}"

    @classmethod
    def workers(cls) -> str:
        """Hash: worker tag -> full worker name."""
        return f"{cls.prefix}:workers"

    @classmethod
    def reconcile_lock(cls) -> str:
        """String: the redis-py lock of the automatic reconcile check."""
        return f"{cls.prefix}:lock:reconcile"

    @classmethod
    def breaker(cls, queue: str) -> str:
        """Hash: the open storage breaker of ``queue``'s workers (since, error, object
        that failed last)."""
        return f"{cls.prefix}:breaker:{queue}"

    @classmethod
    def breaker_outcomes(cls, queue: str) -> str:
        """List: the newest storage outcomes of ``queue``'s objects, newest first."""
        return f"{cls.prefix}:breaker-outcomes:{queue}"

    @classmethod
    def breaker_probe_lock(cls, queue: str) -> str:
        """String: the redis-py lock of the one worker of ``queue`` probing storage."""
        return f"{cls.prefix}:lock:breaker-probe:{queue}"

    @classmethod
    def ledger_back(cls) -> str:
        """String: when a worker last found this Redis answering again after an outage."""
        return f"{cls.prefix}:ledger:back"

    @classmethod
    def feeds(cls) -> str:
        """Set: batches whose listing or manifest is not yet fed in full."""
        return f"{cls.prefix}:feeds"

    @classmethod
    def feed_lock(cls, batch: str) -> str:
        """String: the redis-py lock of the one process feeding ``batch``."""
        return f"{cls.prefix}:lock:feed:{batch}"

    @classmethod
    def claim(cls, bucket: str, key: str) -> str:
        """String: the owner of an object being processed."""
        digest = hashlib.sha1(f"{bucket}/{key}".encode(), usedforsecurity=False).hexdigest()
        return f"{cls.prefix}:claim:{digest}"


def shard_of(key: str) -> int:
    """The shard holding ``key``'s record."""
    return zlib.crc32(key.encode()) % SHARDS


MAX_MESSAGE = 500


@dataclass(frozen=True)
class Begun:
    """How a delivery starts (:meth:`Ledger.begin`): ``verdict`` is ``paused`` (the
    breaker hash's ``breaker`` fields), ``held`` (by ``holder``), ``duplicate`` (its
    finished ``record`` and ``message``), ``cancelled``, ``was_running`` (the
    ``record`` left so) or ``started`` (the ``record``, running now)."""

    verdict: str
    record: Record | None = None
    message: str = ""
    holder: str = ""
    breaker: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Note:
    """An entry for a bounded Redis list, pushed by :meth:`Ledger.finish` (the storage
    breaker's outcomes)."""

    key: str
    value: str
    kept: int
    ttl: int


QUEUED, ALREADY_DONE, ALREADY_QUEUED = 0, 1, 2  # verdicts of Ledger.queue_many
QUEUE_CALL = 500  # items per atomic check-and-queue call


def is_out_of_memory(exc: BaseException) -> bool:
    """True if Redis refused a write for its ``maxmemory``. Redis 7 answers a refused
    script with an ``OOM`` error (redis-py's OutOfMemoryError); Redis 6.2 with
    ``Error running script ... -OOM command not allowed`` (a plain ResponseError). Either
    way the script was refused at its first write: nothing of it was written."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.ResponseError) and "OOM command not allowed" in str(exc)
    )


class Ledger:
    """Typed access to the ledger; one instance per process."""

    def __init__(
        self,
        client: redis.Redis,
        retention_seconds: int,
        url: str | None = None,
        outbox: bool = True,
    ) -> None:
        self.redis = client
        self.retention = retention_seconds
        self.url = url  # where it connects (None: a client given as is)
        # done records also go on the batch's outbox, for the archiver (archive.py)
        self.outbox = outbox
        self._transition = client.register_script(scripts.TRANSITION)
        self._release = client.register_script(scripts.RELEASE)
        self._renew = client.register_script(scripts.RENEW)
        self._queue = client.register_script(scripts.QUEUE)
        self._begin = client.register_script(scripts.BEGIN)
        self._finish = client.register_script(scripts.FINISH)

    @classmethod
    def from_url(
        cls, url: str, retention_seconds: int, timeout: float = 30, outbox: bool = True
    ) -> Ledger:
        """Connect with sane socket timeouts (``timeout`` for each call) and redis-py's
        retries on connection errors; ``outbox``: done records go on the outbox too
        (off where nothing archives them, ``DCMPRESS_ARCHIVE=false``)."""
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=min(10, timeout),
            socket_timeout=timeout,
            health_check_interval=30,
        )
        return cls(client, retention_seconds, url, outbox)

    @classmethod
    def for_events(cls, url: str, retention_seconds: int, timeout: float) -> Ledger:
        """A ledger whose every call gives up within about ``timeout`` seconds, for a
        caller someone waits on (the listener: a sender holds its request open).

        redis-py retries a timed-out or broken connection 10 times with backoff by
        default (minutes against a hung server); here a broken connection is retried
        once at once (a restarted server), a timeout not at all.
        """
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        return cls(client, retention_seconds, url)

    def persistence(self) -> str:
        """How the server keeps its data across a restart: ``aof``, ``rdb``, ``none``,
        or ``""`` if it does not say (a managed Redis refusing CONFIG)."""
        try:
            info = self.redis.info("persistence")
            if int(info.get("aof_enabled", 0)):
                return "aof"
            reply = cast(dict[Any, Any], self.redis.config_get("save"))
        except redis.RedisError:
            return ""
        save = next(iter(reply.values()), b"") if reply else b""
        text = save.decode() if isinstance(save, bytes) else str(save)
        return "rdb" if text.strip() else "none"

    # -- batches ---------------------------------------------------------------------

    def save_batch(self, spec: BatchSpec) -> None:
        """Store a batch spec (idempotent: the same id keeps its first creation time)."""
        with self.redis.pipeline() as pipe:
            pipe.hset(Keys.batch(spec.batch), "spec", spec.to_json())
            pipe.zadd(Keys.batches(), {spec.batch: spec.created}, nx=True)
            pipe.expire(Keys.batch(spec.batch), self.retention)
            pipe.execute()

    def get_batch(self, batch: str) -> BatchSpec | None:
        """The spec of ``batch``, or None if unknown (or expired)."""
        raw = self.redis.hget(Keys.batch(batch), "spec")
        return BatchSpec.from_json(cast(bytes, raw)) if raw else None

    def batch_ids(self) -> list[str]:
        """All known batches, oldest first."""
        return [b.decode() for b in cast(list[bytes], self.redis.zrange(Keys.batches(), 0, -1))]

    def batch_info(self, batch: str) -> dict[str, str]:
        """Checkpoint and enqueue progress fields of the batch hash."""
        raw = cast(dict[bytes, bytes], self.redis.hgetall(Keys.batch(batch)))
        return {k.decode(): v.decode() for k, v in raw.items() if k != b"spec"}

    def set_cancelled(self, batch: str, cancelled: bool) -> None:
        """Cancel a batch (its queued objects are then recorded cancelled) or resume it."""
        if cancelled:
            self.redis.hset(Keys.batch(batch), "cancelled", int(time.time()))
        else:
            self.redis.hdel(Keys.batch(batch), "cancelled")

    def is_cancelled(self, batch: str) -> bool:
        """True while the batch is cancelled."""
        return bool(self.redis.hexists(Keys.batch(batch), "cancelled"))

    def set_checkpoint(self, batch: str, start_after: str, enqueued: int) -> None:
        """Remember how far the listing got, after its keys were durably enqueued."""
        self.redis.hset(
            Keys.batch(batch), mapping={"checkpoint": start_after, "enqueued": enqueued}
        )

    def clear_checkpoint(self, batch: str) -> None:
        """Forget how far the listing got, and that it finished: it is read again."""
        self.redis.hdel(Keys.batch(batch), "listing_done", "checkpoint")

    def mark_listing_done(self, batch: str, enqueued: int) -> None:
        """The whole listing was enqueued."""
        self.redis.hset(
            Keys.batch(batch),
            mapping={"listing_done": int(time.time()), "enqueued": enqueued},
        )

    def counts(self, batch: str) -> dict[str, float]:
        """The batch counters (states, bytes, codes, stage seconds, timestamps)."""
        raw = cast(dict[bytes, bytes], self.redis.hgetall(Keys.counts(batch)))
        return {k.decode(): float(v) for k, v in raw.items()}

    def activity(self, batches: list[str]) -> list[tuple[float, float, str]]:
        """(pending objects, time of the latest activity, queue its messages went to)
        of each batch, in one round trip. Activity: an object started or finished,
        objects queued, a reconcile check, or else the batch's creation. The queue is
        "" for a batch queued by a release that did not note it."""
        fields = ("queued", "running", "started_at", "finished_at")
        with self.redis.pipeline(transaction=False) as pipe:
            for batch in batches:
                pipe.hmget(Keys.counts(batch), *fields)
                pipe.hmget(Keys.batch(batch), "queued_at", "reconciled_at", "queue")
                pipe.zscore(Keys.batches(), batch)
            replies = pipe.execute()
        result = []
        for index in range(len(batches)):
            counts, (queued_at, checked_at, queue), created = replies[3 * index : 3 * index + 3]
            queued, running, started, finished = (float(v or 0) for v in counts)
            times = [started, finished, float(queued_at or 0), float(checked_at or 0),
                     float(created or 0)]  # fmt: skip
            result.append((queued + running, max(times), (queue or b"").decode()))
        return result

    def note_queue(self, batch: str, queue: str) -> None:
        """Remember the queue the batch's messages are sent to."""
        self.redis.hset(Keys.batch(batch), "queue", queue)

    def note_reconciled(self, batch: str, sent: int, at: float) -> None:
        """Remember a reconcile check of the batch and add the messages it sent."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(Keys.batch(batch), "reconciled_at", int(at))
            pipe.hincrby(Keys.batch(batch), "reconciled_sent", sent)
            pipe.execute()

    def feed_lock(self, batch: str, timeout: float) -> Any:
        """The lock held by the one process feeding ``batch``."""
        return self.redis.lock(Keys.feed_lock(batch), timeout=timeout, blocking=False)

    def reconcile_lock(self, timeout: float) -> Any:
        """The lock that lets one worker at a time run the automatic reconcile."""
        return self.redis.lock(Keys.reconcile_lock(), timeout=timeout, blocking=False)

    def archive_lock(self, batch: str, timeout: float) -> Any:
        """The lock held by the one process archiving ``batch``."""
        return self.redis.lock(Keys.archive_lock(batch), timeout=timeout, blocking=False)

    def add_stage_seconds(self, batch: str, timings: dict[str, float]) -> None:
        """Accumulate per-stage seconds for the batch."""
        with self.redis.pipeline(transaction=False) as pipe:
            for stage, seconds in timings.items():
                pipe.hincrbyfloat(Keys.counts(batch), f"stage:{stage}", seconds)
            pipe.execute()

    # -- objects ---------------------------------------------------------------------

    def get_record(self, batch: str, key: str) -> Record | None:
        """The record of one object."""
        raw = self.redis.hget(Keys.objects(batch, shard_of(key)), key)
        return Record.decode(cast(bytes, raw)) if raw else None

    def get_records(self, batch: str, keys: list[str]) -> list[Record | None]:
        """Records of many objects in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(Keys.objects(batch, shard_of(key)), key)
            raws = pipe.execute()
        return [Record.decode(raw) if raw else None for raw in raws]

    def get_message(self, batch: str, key: str) -> str:
        """The stored message of a skipped or failed object ('' if none)."""
        raw = self.redis.hget(Keys.messages(batch, shard_of(key)), key)
        return cast(bytes, raw).decode() if raw else ""

    def transition(
        self, batch: str, key: str, record: Record, message: str = "", guard: str | None = None
    ) -> bool:
        """Set ``key``'s record, keeping the batch counters exact (atomic).

        With ``guard`` (the ETag a delivery started with, "" if it had none), a record
        that a newer version queued meanwhile is left alone: False (superseded).
        """
        return self.transition_many(batch, [(key, record, message)], guard) == 1

    def transition_many(
        self, batch: str, items: Iterable[tuple[str, Record, str]], guard: str | None = None
    ) -> int:
        """Several transitions, one Lua call per 500 (each call atomic); returns how
        many records were set (the others were superseded, see :meth:`transition`)."""
        now = str(int(time.time()))
        chunk: list[tuple[str, Record, str]] = []
        written = 0
        for item in items:
            chunk.append(item)
            if len(chunk) == 500:
                written += self._transition_chunk(batch, chunk, now, guard)
                chunk = []
        if chunk:
            written += self._transition_chunk(batch, chunk, now, guard)
        return written

    def _transition_chunk(
        self, batch: str, chunk: list[tuple[str, Record, str]], now: str, guard: str | None
    ) -> int:
        keys = [Keys.counts(batch), Keys.batch(batch), Keys.outbox(batch)]
        args: list[str | int] = [self.retention, now, int(self.outbox)]
        guarded = "" if guard is None else "=" + short_etag(guard)
        for key, record, message in chunk:
            shard = shard_of(key)
            keys += [Keys.objects(batch, shard), Keys.messages(batch, shard)]
            args += [key, record.encode(), one_line(message, MAX_MESSAGE), guarded]
        return sum(int(v) for v in cast(list[int], self._transition(keys=keys, args=args)))

    def queue_many(
        self,
        batch: str,
        items: list[tuple[str, str]],
        force: bool,
        resend_queued: bool,
        messages: list[str] | None = None,
        queue: str = "",
    ) -> list[int]:
        """Mark (key, etag) items queued unless already done or queued for that ETag.

        Returns one verdict per item: QUEUED (send it), ALREADY_DONE, ALREADY_QUEUED.
        With ``messages`` (one broker envelope per item, when the broker is this Redis)
        each item queued is pushed onto ``queue`` in the same atomic step: nothing is
        left to send. A running object is never queued again for the same ETag, not
        even with ``force``; another ETag is a new version, queued behind it.
        """
        if messages is not None and (len(messages) != len(items) or not queue):
            raise ValueError("one message per item, and the queue they go to")
        verdicts: list[int] = []
        for start in range(0, len(items), QUEUE_CALL):
            part = items[start : start + QUEUE_CALL]
            sent = messages[start : start + QUEUE_CALL] if messages else None
            keys, args = self._queue_call(batch, part, force, resend_queued, sent, queue)
            verdicts += [int(v) for v in cast(list[int], self._queue(keys=keys, args=args))]
        return verdicts

    def queue_streamed(
        self,
        batch: str,
        parts: Iterable[tuple[list[tuple[str, str]], list[str]]],
        force: bool,
        queue: str,
    ) -> list[int]:
        """:meth:`queue_many` with messages, for parts of at most QUEUE_CALL items made
        on demand: each part's call is sent before the next part is made, and its reply
        read after, so Redis runs one call while the caller builds the next part's
        messages (measured: a feeder otherwise waits a third of its time). Each call is
        atomic, calls run in order, one at a time; verdicts come back in item order."""
        sha = self.redis.script_load(scripts.QUEUE)
        pool = self.redis.connection_pool
        connection: Any = pool.get_connection()  # (its send/read are untyped)
        verdicts: list[int] = []
        waiting = False
        try:
            for items, messages in parts:
                if len(items) > QUEUE_CALL or len(messages) != len(items):
                    raise ValueError(f"at most {QUEUE_CALL} items, one message each")
                keys, args = self._queue_call(batch, items, force, False, messages, queue)
                connection.send_command("EVALSHA", sha, len(keys), *keys, *args)
                if waiting:
                    verdicts += [int(v) for v in connection.read_response()]
                waiting = True
            if waiting:
                verdicts += [int(v) for v in connection.read_response()]
        except BaseException:
            connection.disconnect()  # a reply may be left unread: never reuse it
            raise
        finally:
            pool.release(connection)
        return verdicts

    def _queue_call(
        self,
        batch: str,
        items: list[tuple[str, str]],
        force: bool,
        resend_queued: bool,
        messages: list[str] | None,
        queue: str,
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of one check-and-queue call (scripts.QUEUE)."""
        now = int(time.time())
        # (the queue's slot is never touched without messages)
        keys = [Keys.counts(batch), Keys.batch(batch), queue or Keys.prefix]
        args: list[str | int] = [
            self.retention, now, to_base36(now), int(force), int(resend_queued),
        ]  # fmt: skip
        for index, (key, etag) in enumerate(items):
            shard = shard_of(key)
            keys += [Keys.objects(batch, shard), Keys.messages(batch, shard)]
            args += [key, short_etag(etag), messages[index] if messages else ""]
        return keys, args

    def iter_records(self, batch: str) -> Iterator[tuple[str, Record, str]]:
        """Every (key, record, message) of the batch, shard by shard (no KEYS scan)."""
        group = 256  # shards fetched per round trip; each shard is small
        for first in range(0, SHARDS, group):
            with self.redis.pipeline(transaction=False) as pipe:
                for shard in range(first, min(first + group, SHARDS)):
                    pipe.hgetall(Keys.objects(batch, shard))
                    pipe.hgetall(Keys.messages(batch, shard))
                replies = pipe.execute()
            for records, messages in zip(replies[::2], replies[1::2], strict=True):
                for raw_key, raw in sorted(records.items()):
                    message = messages.get(raw_key, b"").decode()
                    yield raw_key.decode(), Record.decode(raw), message

    # -- one delivery: its start and its end, one round trip each ----------------------

    def begin(
        self, batch: str, bucket: str, key: str, etag: str, claim: tuple[str, int], worker: str,
        breaker: str | None = None,
    ) -> Begun:  # fmt: skip
        """Start a delivery of ``key`` in one atomic step (scripts.BEGIN): unless the
        ``breaker`` hash (a key; None: not heeded) says storage is failing, take the
        object's claim for ``claim`` (owner, seconds) and, if the object has no finished
        record for ``etag`` and the batch is not cancelled, record it running with its
        attempts counted."""
        now = int(time.time())
        shard = shard_of(key)
        owner, ttl = claim
        keys = [
            Keys.claim(bucket, key), Keys.objects(batch, shard), Keys.messages(batch, shard),
            Keys.counts(batch), Keys.batch(batch), breaker or Keys.prefix,
        ]  # fmt: skip
        args: list[str | int] = [
            owner, ttl, key, short_etag(etag), self.retention, now, to_base36(now), worker,
            int(breaker is not None),
        ]  # fmt: skip
        reply = cast(list[Any], self._begin(keys=keys, args=args))
        verdict = cast(bytes, reply[0]).decode()
        if verdict == "paused":
            pairs = cast(list[bytes], reply[1])
            fields = {k.decode(): v.decode() for k, v in zip(pairs[::2], pairs[1::2], strict=True)}
            return Begun(verdict, breaker=fields)
        if verdict == "held":
            return Begun(verdict, holder=cast(bytes, reply[1]).decode())
        raw = cast(bytes, reply[1])
        record = Record.decode(raw) if raw else None
        message = cast(bytes, reply[2]).decode() if len(reply) > 2 else ""
        return Begun(verdict, record=record, message=message)

    def finish(
        self, batch: str, key: str, record: Record, message: str = "", guard: str | None = None,
        *, stages: dict[str, float] | None = None, claim: tuple[str, str] | None = None,
        note: Note | None = None,
    ) -> bool:  # fmt: skip
        """End a delivery in one atomic step (scripts.FINISH): :meth:`transition` the
        record (False: superseded), and if it was set add ``stages`` (stage -> seconds)
        to the batch's counters; give back the claim (bucket, owner) of ``key`` if the
        owner still holds it; push the breaker's ``note``."""
        shard = shard_of(key)
        bucket, owner = claim or ("", "")
        keys = [
            Keys.counts(batch), Keys.batch(batch), Keys.outbox(batch),
            Keys.objects(batch, shard), Keys.messages(batch, shard),
            Keys.claim(bucket, key), note.key if note else Keys.prefix,
        ]  # fmt: skip
        args: list[str | int | float] = [
            self.retention, int(time.time()), int(self.outbox), key, record.encode(),
            one_line(message, MAX_MESSAGE), "" if guard is None else "=" + short_etag(guard),
            owner, note.value if note else "", note.kept if note else 0,
            note.ttl if note else 0,
        ]  # fmt: skip
        for stage, seconds in (stages or {}).items():
            args += [stage, repr(float(seconds))]
        return int(cast(int, self._finish(keys=keys, args=args))) == 1

    # -- workers ---------------------------------------------------------------------

    def register_worker(self, name: str) -> str:
        """Remember ``name`` under its short tag; return the tag."""
        tag = worker_tag(name)
        self.redis.hset(Keys.workers(), tag, name)
        return tag

    def worker_names(self) -> dict[str, str]:
        """Worker tag -> full name."""
        raw = cast(dict[bytes, bytes], self.redis.hgetall(Keys.workers()))
        return {k.decode(): v.decode() for k, v in raw.items()}

    # -- claims ----------------------------------------------------------------------

    def claim(self, bucket: str, key: str, owner: str, ttl: int) -> bool:
        """Take the object for ``owner`` unless another worker holds it."""
        return bool(self.redis.set(Keys.claim(bucket, key), owner, nx=True, ex=ttl))

    def claim_owner(self, bucket: str, key: str) -> str | None:
        """Who holds the claim, if anyone."""
        raw = self.redis.get(Keys.claim(bucket, key))
        return cast(bytes, raw).decode() if raw else None

    def release(self, bucket: str, key: str, owner: str) -> None:
        """Give the claim back if we (``owner``) still hold it."""
        self._release(keys=[Keys.claim(bucket, key)], args=[owner])

    def renew(self, bucket: str, key: str, owner: str, ttl: int) -> bool:
        """Extend our claim by ``ttl`` seconds (taking it back if it lapsed unclaimed);
        False if another owner holds it now."""
        return bool(self._renew(keys=[Keys.claim(bucket, key)], args=[owner, ttl]))
