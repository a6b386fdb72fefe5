"""The stand-in worker of ``benchmarks.control_plane``: a worker's Redis work, no codec.

It pops the Celery messages the feeder pushed (the queue is a Redis list; kombu pops it
with BRPOP), decodes their envelopes and records each object through the real ledger
code: a ``running`` record, then a ``done`` one (a small share ``failed``) with the
fields a real worker writes. It fetches nothing, compresses nothing, writes no output.
The stub at index 0 also runs the archiver, as the workers' bootstep does
(``worker/runtime/archive_watch.py``): :func:`~worker.runtime.archive.archive_locked`
every few seconds, writing shards into the S3 server.

Two ways of recording (``recording``):

* ``batched``: up to :data:`POP` messages per ``RPOP``, one
  :meth:`~worker.runtime.ledger.Ledger.transition_many` call for their ``running``
  records and one for their outcomes, the stage times once per pop: a million objects
  in minutes on two cores;
* ``per-object``: the Redis calls a real worker makes for one object, one round trip
  each, in the order ``worker/runtime/tasks.py`` and ``pipeline.py`` make them: BRPOP,
  kombu's unacknowledged-message bookkeeping (ZADD + HSET, and ZREM + HDEL on the ack),
  Celery's three task events (PUBLISH; on for Flower), the breaker's state, the claim,
  the previous record, the cancel flag, two transitions, the stage times, the breaker's
  outcome, the release. kombu's and Celery's calls are imitated (same commands and
  sizes), the ledger's and the breaker's are the real code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import resource
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal, cast

from worker.runtime.archive import archive_locked
from worker.runtime.breaker import Breaker
from worker.runtime.ledger import Keys, Ledger
from worker.runtime.records import Record, short_etag
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

POP = 100  # messages per RPOP in batched recording (a few prefetching workers' worth)
IDLE_WAIT = 0.2  # seconds a BRPOP waits on an empty queue before the stub looks again
COMPLETE_WAIT = 60.0  # seconds the archiver waits for the other stubs' last records
# kombu's Redis transport: where an unacknowledged message waits (its QoS) until the ack
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"
# Celery's task events go to kombu's fanout exchange, a PUBLISH per event; ~800 bytes
# is the size of a task-succeeded event's envelope (its body, base64, and headers)
EVENT_CHANNEL = "/0.celeryev/task.{kind}"
EVENT_BODY = json.dumps({"body": "e" * 640, "headers": {"hostname": "celery@stub"}})
# a realistic worker name (the records keep its short tag, the shards the name)
WORKER_NAME = "celery@dcmpress-worker-6f7d9c8b5-x7k2p/{index}"
FAILED_MESSAGE = (
    "verification_failed: the decoded output differs from the source (17 pixels, largest "
    "error 3 in frame 1); nothing written, the source is unchanged"
)
STAGES = ("fetch", "parse", "decode", "encode", "serialize", "verify", "upload", "record")
STAGE_SHARES = (0.12, 0.02, 0.03, 0.30, 0.03, 0.25, 0.24, 0.01)  # of an object's millis

Recording = Literal["batched", "per-object"]


@dataclass(frozen=True)
class StubConfig:
    """What one stub worker process does; picklable (it crosses a process spawn)."""

    index: int
    env: dict[str, str]  # DCMPRESS_* and AWS_* of the stack it talks to
    batch: str
    queue: str
    recording: Recording
    failed_share: float
    archive: bool  # this stub runs the archiver
    archive_interval: float
    archive_keep: float
    shard_size: int
    report_prefix: str


@dataclass
class StubTally:
    """What one stub worker did, and the CPU seconds of its parts."""

    messages: int = 0  # messages popped from the queue
    done: int = 0
    failed: int = 0
    written: int = 0  # records transition_many set (never fewer than 2 per message)
    recording_cpu: float = 0.0  # this process's main thread: pop, decode, record
    archiver_cpu: float = 0.0  # the archiver, in whichever thread it ran
    archiver_seconds: float = 0.0  # wall seconds inside archive runs
    archive_runs: int = 0
    shards: int = 0
    archived: int = 0
    process_cpu: float = 0.0  # the whole process, imports excluded
    recording_seconds: float = 0.0  # from the start signal to the last record
    extra: dict[str, float] = field(default_factory=dict)


def decode_job(raw: bytes) -> tuple[dict[str, Any], str]:
    """The job message (the task's one argument) in a Celery envelope as kombu's Redis
    transport stores it, and its delivery tag."""
    envelope = json.loads(raw)
    args, _, _ = json.loads(base64.b64decode(envelope["body"]))
    return args[0], envelope["properties"]["delivery_tag"]


def is_failed(key: str, failed_share: float) -> bool:
    """True for the share of keys a stub records ``failed``, chosen by a digest of the
    key so that every run fails the same objects."""
    digest = hashlib.md5(key.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") < failed_share * 2**32


def outcome(key: str, running: Record, failed_share: float) -> tuple[Record, str]:
    """The final record and stored message of ``key``, with sizes, time, ETag and
    modality that vary as real ones do (the shards compress what repeats)."""
    digest = hashlib.md5(key.encode(), usedforsecurity=False).digest()
    size = 300_000 + int.from_bytes(digest[:3], "big") // 32  # 0.3-0.8 MB, CT-like
    common = {
        "bytes_in": size,
        "target": "jpeg-ls",
        "plugin": "pyjpegls",
        "millis": 200 + digest[4] * 6,
        "etag": short_etag(digest.hex()),
        "modality": ("CT", "MR", "CR", "DX")[digest[6] % 4],
    }
    if is_failed(key, failed_share):
        return running.stamped(state="failed", code="verification_failed", **common), (
            FAILED_MESSAGE
        )
    # a done object's message is derived from its record: none is stored
    out = size * 10 // (22 + digest[3] % 10)  # ratio 2.2-3.1, as JPEG-LS on CT
    return running.stamped(state="done", code="compressed", bytes_out=out, **common), ""


def stage_seconds(records: Sequence[Record]) -> dict[str, float]:
    """The stage times the worker adds to the batch counters for ``records``."""
    millis = sum(record.millis for record in records)
    return {stage: millis * share / 1000 for stage, share in zip(STAGES, STAGE_SHARES, strict=True)}


class Archiver:
    """The archiver as the workers' bootstep runs it: ``archive_locked`` on the batch
    every ``archive_interval`` seconds (in a thread), then once the batch is complete
    until its outbox is empty. Counts its own CPU wherever it runs."""

    def __init__(self, ledger: Ledger, storage: Storage, config: StubConfig, tally: StubTally):
        self.ledger = ledger
        self.storage = storage
        self.config = config
        self.tally = tally
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="stub-archiver")
        self.lock = threading.Lock()  # the loop and the final drain never overlap

    def start(self) -> None:
        """Archive every interval from now on."""
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.wait(self.config.archive_interval):
            self.archive_once()

    def archive_once(self) -> int:
        """One run, as one bootstep tick: the records it moved out of Redis."""
        with self.lock:
            cpu, wall = time.thread_time(), time.perf_counter()
            run = archive_locked(
                self.ledger,
                self.storage,
                self.config.batch,
                report_prefix=self.config.report_prefix,
                shard_size=self.config.shard_size,
                keep=self.config.archive_keep,
            )
            self.tally.archiver_cpu += time.thread_time() - cpu
            self.tally.archiver_seconds += time.perf_counter() - wall
            self.tally.archive_runs += 1
            if run is None:
                return 0
            self.tally.shards += run.shards
            self.tally.archived += run.archived
            return run.archived

    def finish(self) -> None:
        """Stop the ticks; once the whole batch is finished (every stub), archive until
        the outbox is empty, as the next ticks would (a complete batch writes its last,
        partial shard at once)."""
        self.stopped.set()
        self.thread.join()
        # the other stubs hold a pop's worth at most; a record left running (a bug the
        # checks then report) must not hang the benchmark
        deadline = time.monotonic() + COMPLETE_WAIT
        while not batch_complete(self.ledger, self.config.batch):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        while self.ledger.redis.llen(Keys.outbox(self.config.batch)):
            if not self.archive_once():
                break  # records that keep changing: left for a later run, as in production


def batch_complete(ledger: Ledger, batch: str) -> bool:
    """Fed in full and nothing queued or running (as ``dcmpress status`` says complete)."""
    counts = ledger.counts(batch)
    fed = "listing_done" in ledger.batch_info(batch)
    return fed and not counts.get("queued", 0) and not counts.get("running", 0)


class Stub:
    """One stub worker: its ledger, tag and way of recording."""

    def __init__(self, config: StubConfig, ledger: Ledger, settings: WorkerSettings) -> None:
        self.config = config
        self.ledger = ledger
        self.redis = ledger.redis
        self.worker = ledger.register_worker(WORKER_NAME.format(index=config.index))
        self.breaker = Breaker.from_settings(ledger.redis, settings)
        self.claim_ttl = settings.claim_ttl
        self.tally = StubTally()

    def fed_and_empty(self) -> bool:
        """The feeder finished and its last message was taken: nothing more will come."""
        fed = self.redis.hexists(Keys.batch(self.config.batch), "listing_done")
        return bool(fed) and not self.redis.llen(self.config.queue)

    def run(self) -> None:
        """Take messages until the batch is fed in full and its queue is empty."""
        while (raws := self.take()) is not None:
            if self.config.recording == "batched":
                self.record_batch(raws)
            else:
                for raw in raws:
                    self.record_one(raw)

    def take(self) -> list[bytes] | None:
        """The next messages (batched: up to POP in one RPOP; per object: one BRPOP, as
        kombu takes them); None once the feeder finished and the queue is empty."""
        queue = self.config.queue
        while True:
            if self.config.recording == "batched":
                raws = cast(list[bytes] | None, self.redis.rpop(queue, POP))
                if raws:
                    return raws
                if self.fed_and_empty():
                    return None
            item = cast(tuple[bytes, bytes] | None, self.redis.brpop([queue], IDLE_WAIT))
            if item is not None:
                return [item[1]]
            if self.fed_and_empty():
                return None

    def record_batch(self, raws: list[bytes]) -> None:
        """Record the objects of ``raws``: their running records in one call, then their
        outcomes in one call per guard (the ETag each message was sent for)."""
        jobs = [decode_job(raw)[0] for raw in raws]
        running = [
            Record(
                state="running", attempts=1, worker=self.worker, etag=short_etag(job.get("etag"))
            ).stamped()
            for job in jobs
        ]
        batch = self.config.batch
        self.tally.written += self.ledger.transition_many(
            batch, [(job["key"], record, "") for job, record in zip(jobs, running, strict=True)]
        )
        by_guard: dict[str, list[tuple[str, Record, str]]] = {}
        for job, record in zip(jobs, running, strict=True):
            final, message = outcome(job["key"], record, self.config.failed_share)
            by_guard.setdefault(job.get("etag") or "", []).append((job["key"], final, message))
        finals = []
        for guard, items in by_guard.items():
            self.tally.written += self.ledger.transition_many(batch, items, guard=guard)
            finals += [final for _, final, _ in items]
        self.ledger.add_stage_seconds(batch, stage_seconds(finals))
        self._count(finals)

    def record_one(self, raw: bytes) -> None:
        """Record one object with a real worker's Redis calls, one round trip each."""
        job, tag = decode_job(raw)
        batch, bucket, key = self.config.batch, job["bucket"], job["key"]
        with self.redis.pipeline(transaction=False) as pipe:  # kombu's QoS.append
            pipe.zadd(UNACKED_INDEX, {tag: time.time()})
            pipe.hset(UNACKED, tag, json.dumps([raw.decode(), "", self.config.queue]))
            pipe.execute()
        self.redis.publish(EVENT_CHANNEL.format(kind="received"), EVENT_BODY)
        owner = f"stub:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # the pipeline's start and end (Ledger.begin, Ledger.finish): one call each
        begun = self.ledger.begin(
            batch, bucket, key, job.get("etag") or "", (owner, self.claim_ttl), self.worker,
            self.breaker.key,
        )  # fmt: skip
        assert begun.verdict == "started" and begun.record is not None, begun
        self.tally.written += 1
        self.redis.publish(EVENT_CHANNEL.format(kind="started"), EVENT_BODY)
        final, message = outcome(key, begun.record, self.config.failed_share)
        guard = job.get("etag") or ""
        self.tally.written += self.ledger.finish(
            batch, key, final, message, guard, stages=stage_seconds([final]),
            claim=(bucket, owner), note=self.breaker.served(bucket, key),
        )  # fmt: skip
        self.redis.publish(EVENT_CHANNEL.format(kind="succeeded"), EVENT_BODY)
        with self.redis.pipeline(transaction=False) as pipe:  # kombu's ack
            pipe.zrem(UNACKED_INDEX, tag)
            pipe.hdel(UNACKED, tag)
            pipe.execute()
        self._count([final])

    def _count(self, finals: Sequence[Record]) -> None:
        self.tally.messages += len(finals)
        failed = sum(final.state == "failed" for final in finals)
        self.tally.failed += failed
        self.tally.done += len(finals) - failed


def run_stub_worker(config: StubConfig, pipe: Connection) -> None:
    """A stub worker process: connect, say ready, wait for the go, record until the
    batch is fed and its queue empty, archive (stub 0), and send back its tally."""
    os.environ.update(config.env)
    settings = WorkerSettings()
    ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds)
    stub = Stub(config, ledger, settings)
    archiver = Archiver(ledger, Storage(settings), config, stub.tally) if config.archive else None
    pipe.send("ready")
    pipe.recv()  # the go: the feeder starts now
    before = _process_cpu()
    own, started = time.thread_time(), time.perf_counter()
    if archiver is not None:
        archiver.start()
    stub.run()
    stub.tally.recording_cpu = time.thread_time() - own
    stub.tally.recording_seconds = time.perf_counter() - started
    if archiver is not None:
        archiver.finish()
        # the final drain ran in this thread: it is the archiver's, not the recording's
    stub.tally.process_cpu = _process_cpu() - before
    pipe.send(stub.tally)
    pipe.close()


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
