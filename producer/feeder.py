"""Feeding a batch: its queue kept topped up to a mark from the source's durable cursor.

The listing or the manifest is the backlog, not Redis. A feeder sends the next objects
while the queue holds fewer than ``DCMPRESS_FEED_HIGH_WATER`` messages, checkpoints
after each chunk, and waits while the queue is at its mark, the batch is cancelled,
its schedule window is closed, its rate limit is spent, or Redis is full. What it does
is noted in the batch hash (``feed_state``), so ``dcmpress status`` can say it.

Who feeds: whoever holds the batch's feed lock. ``dcmpress enqueue`` feeds while it
runs (until the queue is at its mark, or to the end with ``--follow``); then one of the
workers takes the lock and feeds the rest (``worker/runtime/feedstep.py``), so a batch
keeps moving with nothing running but workers and Redis. A manifest on local disk can
only be fed by its ``enqueue``, which then follows to the end.

Nothing lost, nothing twice: a chunk is queued (each record and its message in one
atomic step, :class:`~producer.enqueue.Enqueuer`) before the checkpoint moves past it.
A feeder killed in between sends that chunk again from the checkpoint, and the ledger
answers "already queued" for what it had. A checkpoint only ever follows what its own
feeder sent from an earlier one, so everything before it was sent by someone.

A listing fed in full can be fed again (``enqueue`` run again): that later pass sends
only objects modified since the previous pass began, less an hour for uploads that were
under way (the storage's own clock), so objects done long ago, whose records may have
left Redis for the outcome shards, are not sent again.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
from celery import Celery
from pydantic import BaseModel

from producer.batches import (
    OnConflict,
    ResumePoint,
    open_batch,
    save_finished,
    save_listing_point,
    save_manifest_point,
    save_restart,
)
from producer.enqueue import Enqueuer, EnqueueReport
from producer.pacing import Pacer, Window
from producer.sources import KeyFilter, ObjectRef
from worker.runtime.contract import BatchSpec, S3Location, default_batch_id, is_output_of
from worker.runtime.ledger import Keys, Ledger, is_out_of_memory
from worker.runtime.reconcile import broker_redis
from worker.runtime.storage import Listed, Storage

log = logging.getLogger(__name__)

CHUNK = 5_000  # most objects sent in one step (ten atomic calls of 500)
LOCK_SECONDS = 60.0  # a feeder that stops renewing its lock gives the batch up after this
# a later pass also sends objects modified this long before the previous pass began:
# an upload under way then (a multipart upload is stamped when it began) was not listed
RESCAN_MARGIN = 3600.0
# the feed pauses above this share of Redis' maxmemory: the rest is the workers', whose
# records must never be refused because the queue took the memory
HEADROOM = 0.9
QUEUED_BYTES = 1_600  # Redis of one queued object: its message and record (1,548 measured)
FULL = "paused: Redis is nearly full (maxmemory); feeding resumes when memory frees"


class FeedPlan(BaseModel):
    """How a batch is fed; stored in its batch hash (``feed``), read at every step, so
    ``enqueue`` run again with other pacing changes a feed that is under way."""

    kind: Literal["listing", "manifest"] = "listing"
    queue: str = ""  # where its messages go: only workers of that queue feed it
    manifest: str = ""  # s3://bucket/key or a local path
    batch_name: str = ""  # the --batch of a manifest run: names its other buckets' batches
    suffixes: tuple[str, ...] = ()
    exclude_suffixes: tuple[str, ...] = ()
    exclude_prefixes: tuple[str, ...] = ()
    min_size: int = 1
    max_size: int | None = None
    force: bool = False  # process objects again whatever the ledger says of them
    changed_since: float = 0.0  # a later pass: objects modified since (storage clock)
    pass_started: float = 0.0  # the storage's clock when this pass began
    max_rate: float = 0.0  # objects per second, 0: no limit
    max_bytes_rate: float = 0.0  # bytes per second, 0: no limit
    window: str = ""  # HH:MM-HH:MM, "" for any time
    timezone: str = "UTC"

    @property
    def workers_can_feed(self) -> bool:
        """True unless the manifest is a file only the enqueue's machine can read."""
        return self.kind == "listing" or self.manifest.startswith("s3://")

    def key_filter(self) -> KeyFilter:
        """The listing's filter (a fresh one: it counts what it rejects)."""
        return KeyFilter(
            suffixes=self.suffixes, exclude_suffixes=self.exclude_suffixes,
            exclude_prefixes=self.exclude_prefixes, min_size=self.min_size,
            max_size=self.max_size, changed_since=self.changed_since,
        )  # fmt: skip

    def schedule(self) -> Window | None:
        """The daily window, if any."""
        return Window.parse(self.window, self.timezone) if self.window else None

    def pacing(self) -> str:
        """The limits in words ("" for none)."""
        parts = []
        if self.max_rate:
            parts.append(f"{self.max_rate:g} objects/s")
        if self.max_bytes_rate:
            parts.append(f"{self.max_bytes_rate / 1e6:g} MB/s")
        if self.window:
            parts.append(f"window {self.schedule()}")
        return ", ".join(parts)


def save_plan(ledger: Ledger, batch: str, plan: FeedPlan) -> None:
    """Store the feed plan of ``batch`` and list the batch among those being fed."""
    with ledger.redis.pipeline() as pipe:
        pipe.hset(Keys.batch(batch), "feed", plan.model_dump_json())
        pipe.sadd(Keys.feeds(), batch)
        pipe.execute()


def load_plan(ledger: Ledger, batch: str) -> FeedPlan | None:
    """The feed plan of ``batch`` (None for a batch fed by events only)."""
    raw = ledger.redis.hget(Keys.batch(batch), "feed")
    return FeedPlan.model_validate_json(raw) if raw else None


def feeding(ledger: Ledger) -> list[str]:
    """Batches whose listing or manifest is not fed in full yet."""
    return sorted(b.decode() for b in ledger.redis.smembers(Keys.feeds()))  # type: ignore[union-attr]


def note_state(ledger: Ledger, batch: str, state: str) -> None:
    """Say what the batch's feeder does now (``dcmpress status`` shows it)."""
    ledger.redis.hset(
        Keys.batch(batch), mapping={"feed_state": state, "feed_state_at": int(time.time())}
    )


def new_pass(ledger: Ledger, storage: Storage, spec: BatchSpec, plan: FeedPlan) -> FeedPlan:
    """A plan for feeding ``spec``'s listing again after an earlier pass finished: from
    the start, objects modified since that pass began (all of them with ``force``)."""
    began = plan.pass_started
    since = 0.0 if plan.force or not began else began - RESCAN_MARGIN
    now = storage.clock(spec.source.bucket, spec.source.prefix)
    save_restart(ledger, spec.batch)
    return plan.model_copy(update={"changed_since": since, "pass_started": now})


# -- cursors: the source read in order, with the checkpoint after each object ---------


class Cursor:
    """Objects of a source in order, each with the checkpoint that follows it."""

    def __init__(self) -> None:
        self.buffer: deque[tuple[ObjectRef, str]] = deque()
        self.exhausted = False
        self.position = ""  # the checkpoint after everything taken so far
        self.seen = 0  # objects read from the source and accepted

    def fill(self, wanted: int) -> None:
        """Read the source until ``wanted`` objects are buffered, or it ends."""
        raise NotImplementedError

    def peek(self, count: int) -> list[ObjectRef]:
        """The next ``count`` objects at most (fewer only at the end of the source)."""
        self.fill(count)
        return [ref for ref, _ in list(self.buffer)[:count]]

    def take(self, count: int) -> str:
        """Consume the first ``count`` objects peeked; return the checkpoint after them."""
        for _ in range(count):
            _, self.position = self.buffer.popleft()
        return self.position


class ListingCursor(Cursor):
    """A bucket listing from a checkpoint key; the checkpoint is the last key handled."""

    def __init__(self, storage: Storage, source: S3Location, after: str, keys: KeyFilter) -> None:
        super().__init__()
        self.position = after
        self.keys = keys
        self._pages: Iterator[list[Listed]] = storage.list_pages(
            source.bucket, source.prefix, start_after=after
        )
        self.bucket = source.bucket
        self.modified: dict[str, float] = {}  # LastModified of the keys buffered

    def take(self, count: int) -> str:
        for ref, _ in list(self.buffer)[:count]:
            self.modified.pop(ref.key, None)
        return super().take(count)

    def fill(self, wanted: int) -> None:
        while len(self.buffer) < wanted and not self.exhausted:
            page = next(self._pages, None)
            if page is None:
                self.exhausted = True
                return
            accepted = [item for item in page if self.keys.accepts(item)]
            self.seen += len(accepted)
            for index, item in enumerate(accepted):
                # the last one of a page carries the page's end: a rejected tail is
                # not listed again after a restart
                after = page[-1].key if index == len(accepted) - 1 else item.key
                self.buffer.append((ObjectRef(self.bucket, item.key, item.etag, item.size), after))
                self.modified[item.key] = item.modified
            if not accepted and page and not self.buffer:
                self.position = page[-1].key  # a page of rejected keys only


class ManifestCursor(Cursor):
    """A manifest's entries after the first ``skip``; the checkpoint counts entries."""

    def __init__(self, pages: Iterator[list[ObjectRef]], skip: int) -> None:
        super().__init__()
        self._pages = pages
        self.skip = skip
        self._entries = 0
        self.position = f"manifest:{skip}"

    def fill(self, wanted: int) -> None:
        while len(self.buffer) < wanted and not self.exhausted:
            page = next(self._pages, None)
            if page is None:
                self.exhausted = True
                return
            for ref in page:
                self._entries += 1
                if self._entries > self.skip:
                    self.seen += 1
                    self.buffer.append((ref, f"manifest:{self._entries}"))


# -- the feeder -----------------------------------------------------------------------


class Step(enum.Enum):
    """What one feeder step did."""

    FED = "fed"  # sent objects; more may follow at once
    WAITING = "waiting"  # the queue is at its mark
    PACED = "paced"  # the rate limit is spent for now
    PAUSED = "paused"  # cancelled, outside the window, or Redis is full
    FINISHED = "finished"  # the whole source is fed


@dataclass
class Feeder:
    """Feeds one batch (and, for a manifest naming several buckets, its sibling
    batches) from its cursor; one step at a time, under the batch's feed lock."""

    app: Celery
    ledger: Ledger
    storage: Storage
    lead: BatchSpec  # the batch the feed belongs to (a manifest's first bucket)
    queue: str
    high_water: int
    cursor: Cursor
    resuming: bool = False  # the first chunk may hold objects queued and never sent
    clock: Callable[[], float] = time.time
    reports: dict[str, EnqueueReport] = field(default_factory=dict)
    state: str = ""  # the last state noted
    wait: float = 0.0  # seconds the last step asks to wait before the next
    _enqueuers: dict[str, Enqueuer] = field(default_factory=dict)
    _pacer: Pacer = field(default_factory=Pacer)
    _sent_before: int = 0

    def __post_init__(self) -> None:
        info = self.ledger.batch_info(self.lead.batch)
        self._sent_before = int(info.get("enqueued", 0) or 0) if self.resuming else 0
        self.reports.setdefault(self.lead.batch, EnqueueReport(batch=self.lead.batch))

    # -- batches ------------------------------------------------------------------

    def enqueuer(self, bucket: str, plan: FeedPlan) -> Enqueuer:
        """The enqueuer of ``bucket``'s batch: the lead's, or a sibling opened with the
        same job (named ``{name}-{bucket}`` when the run was named)."""
        if bucket not in self._enqueuers:
            spec = self.lead
            if bucket != self.lead.source.bucket:
                source = S3Location(bucket=bucket)
                name = (
                    f"{plan.batch_name}-{bucket}" if plan.batch_name
                    else default_batch_id(source, spec.dest, spec.options, spec.policy)
                )  # fmt: skip
                wanted = spec.model_copy(update={"batch": name, "source": source, "created": 0})
                spec = open_batch(self.ledger, wanted, OnConflict.REFUSE).spec
            self._enqueuers[bucket] = Enqueuer(
                self.app, self.ledger, spec, self.queue, force=plan.force, rewrite=plan.force
            )
            self.reports.setdefault(spec.batch, EnqueueReport(batch=spec.batch))
        return self._enqueuers[bucket]

    @property
    def batches(self) -> list[str]:
        """Every batch this feed has sent objects to (the lead first)."""
        return [self.lead.batch] + [
            e.spec.batch for e in self._enqueuers.values() if e.spec.batch != self.lead.batch
        ]

    # -- steps --------------------------------------------------------------------

    def queue_depth(self) -> int:
        """Messages waiting in the queue."""
        enqueuer = next(iter(self._enqueuers.values()), None)
        if enqueuer is not None and not enqueuer.atomic:
            with broker_redis(self.app) as broker:
                return int(broker.llen(self.queue))
        return int(self.ledger.redis.llen(self.queue))

    def step(self) -> Step:
        """Send the next chunk if the queue has room and the plan allows; say why not.

        Redis unreachable, or full, pauses the feed (the chunk is sent again later;
        nothing is queued without its message); storage failing raises
        :class:`~worker.errors.DcmpressError` with the cursor where it was."""
        try:
            return self._step()
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            # nothing of the chunk is queued without its message (one atomic step per
            # 500, refused whole by a full Redis); the cursor has not moved
            return self._pause(Step.PAUSED, FULL, 5)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.wait = 5.0
            log.warning("feed of batch %s: Redis unreachable (%s); trying again",
                        self.lead.batch, exc)  # fmt: skip
            return Step.PAUSED

    def _step(self) -> Step:
        plan = load_plan(self.ledger, self.lead.batch) or FeedPlan()
        self._pacer.objects_per_second = plan.max_rate
        self._pacer.bytes_per_second = plan.max_bytes_rate
        self.enqueuer(self.lead.source.bucket, plan)
        if self.ledger.is_cancelled(self.lead.batch):
            return self._pause(Step.PAUSED, "paused: the batch is cancelled (dcmpress resume)", 5)
        window = plan.schedule()
        now = self.clock()
        if window is not None and not window.is_open(now):
            opens = window.opens_in(now)
            return self._pause(
                Step.PAUSED, f"paused: outside its window {window}, opens in {_span(opens)}",
                min(60.0, max(1.0, opens)),
            )  # fmt: skip
        memory_room = self._memory_room()
        if memory_room <= 0:
            return self._pause(Step.PAUSED, FULL, 5)
        room = self.high_water - self.queue_depth()
        if room <= 0:
            return self._pause(Step.WAITING, f"waiting: the queue is at its mark "
                               f"({self.high_water:,} messages)", 1)  # fmt: skip
        refs = self.cursor.peek(min(room, CHUNK, memory_room))
        if not refs:
            self._finish()
            return Step.FINISHED
        allowed = self._pacer.allowance([ref.size or 0 for ref in refs])
        if allowed == 0:
            return self._pause(Step.PACED, f"paced: {plan.pacing()}", 0.2)
        chunk = refs[:allowed]
        self._send(chunk, plan)
        self._pacer.spend([ref.size or 0 for ref in chunk])
        self._checkpoint(self.cursor.take(len(chunk)))
        self._note("feeding")
        self.wait = 0.0
        return Step.FED

    def _memory_room(self) -> int:
        """How many more objects may be queued before the ledger's Redis is within 10 %
        of its memory limit (the rest is kept for the workers' records); CHUNK if it
        has no limit. A chunk sized so does not overshoot the limit midway."""
        memory = self.ledger.redis.info("memory")
        limit = int(memory.get("maxmemory", 0) or 0)
        if not limit:
            return CHUNK
        return int((HEADROOM * limit - int(memory.get("used_memory", 0))) // QUEUED_BYTES)

    def _send(self, chunk: list[ObjectRef], plan: FeedPlan) -> None:
        by_bucket: dict[str, list[ObjectRef]] = {}
        for ref in chunk:
            by_bucket.setdefault(ref.bucket, []).append(ref)
        for bucket, refs in by_bucket.items():
            enqueuer = self.enqueuer(bucket, plan)
            report = self.reports[enqueuer.spec.batch]
            report.listed += len(refs)
            unsent = self._not_written(enqueuer.spec, refs, plan)
            sent, done, queued = enqueuer.enqueue(unsent, resend_queued=self.resuming)
            report.enqueued += sent
            report.already_done += done + len(refs) - len(unsent)
            report.already_queued += queued
        self.resuming = False

    def _not_written(
        self, spec: BatchSpec, refs: list[ObjectRef], plan: FeedPlan
    ) -> list[ObjectRef]:
        """In a later pass, ``refs`` less the objects the previous pass fed and finished
        whose records left Redis for the outcome shards: those modified before it began
        (the margin's hour) with no record, whose output is written (one HEAD each, as
        the worker would do), are not sent again, so they are not counted again."""
        cursor = self.cursor
        if (
            not plan.changed_since
            or plan.force
            or spec.in_place
            or not isinstance(cursor, ListingCursor)
        ):
            return refs
        began = plan.changed_since + RESCAN_MARGIN
        doubtful = [ref for ref in refs if cursor.modified.get(ref.key, 0.0) <= began]
        if not doubtful:
            return refs
        records = self.ledger.get_records(spec.batch, [ref.key for ref in doubtful])
        digest = spec.digest()
        written = {
            ref.key
            for ref, record in zip(doubtful, records, strict=True)
            if record is None
            and is_output_of(
                self.storage.output_metadata(*spec.output_key(ref.key)), ref.etag, digest
            )
        }
        return [ref for ref in refs if ref.key not in written]

    def _sent(self, batch: str) -> int:
        return self.reports[batch].enqueued + (self._sent_before if batch == self.lead.batch else 0)

    def _checkpoint(self, position: str) -> None:
        if isinstance(self.cursor, ManifestCursor):
            entries = int(position.removeprefix("manifest:"))
            for batch in self.batches:
                save_manifest_point(self.ledger, batch, entries, self._sent(batch))
        else:
            save_listing_point(self.ledger, self.lead.batch, position, self._sent(self.lead.batch))

    def _finish(self) -> None:
        for batch in self.batches:
            save_finished(self.ledger, batch, self._sent(batch))
        self.ledger.redis.srem(Keys.feeds(), self.lead.batch)
        self._note("finished: the whole source is fed")

    def _pause(self, step: Step, state: str, wait: float) -> Step:
        self._note(state)
        self.wait = wait
        return step

    def _note(self, state: str) -> None:
        if state != self.state:  # one write per change, not per step
            self.state = state
            log.info("feed of batch %s: %s", self.lead.batch, state)
            try:
                for batch in self.batches:
                    note_state(self.ledger, batch, state)
            except redis.RedisError as exc:  # a full Redis refuses even this: said above
                log.warning("could not note the feed's state in Redis: %s", exc)

    @property
    def report(self) -> EnqueueReport:
        """What this feeder did for the lead batch (objects it read, sent, found)."""
        return self.reports[self.lead.batch]

    def run(self, until: Callable[[Step], bool], sleep: Callable[[float], object] = time.sleep,
            keep: Callable[[], bool] = lambda: True) -> Step:  # fmt: skip
        """Step until ``until(step)`` says stop, the source is fed in full, or ``keep``
        (e.g. renewing the feed lock) says to give up; return the last step."""
        while True:
            step = self.step()
            if step is Step.FINISHED or until(step) or not keep():
                return step
            if self.wait:
                sleep(self.wait)


def still_held(lock: Any) -> bool:
    """Renew a feed lock: False once another process holds it (this one stalled past
    its timeout); True while Redis is away (the step then pauses, and the lock, kept
    by a Redis with persistence, is renewed when it answers)."""
    try:
        lock.reacquire()
    except redis.exceptions.LockError:
        return False
    except (redis.ConnectionError, redis.TimeoutError):
        return True
    return True


def _span(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{max(1, minutes)}m"


def make_feeder(
    app: Celery,
    ledger: Ledger,
    storage: Storage,
    spec: BatchSpec,
    queue: str,
    high_water: int,
    open_manifest: Callable[[str], Iterator[list[ObjectRef]]],
) -> Feeder | None:
    """The feeder of ``spec``'s batch from where its checkpoint says (None: no plan)."""
    plan = load_plan(ledger, spec.batch)
    if plan is None:
        return None
    queue = plan.queue or queue
    resume = ResumePoint.read(ledger, spec.batch)
    cursor: Cursor
    if plan.kind == "manifest":
        cursor = ManifestCursor(open_manifest(plan.manifest), resume.after_entries)
    else:
        cursor = ListingCursor(storage, spec.source, resume.after_key, plan.key_filter())
    return Feeder(app, ledger, storage, spec, queue, high_water, cursor,
                  resuming=resume.interrupted)  # fmt: skip
