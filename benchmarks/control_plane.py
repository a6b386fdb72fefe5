"""The control plane's capacity, measured: feeder, queue, ledger, shard writer, status
and report through 10^5 and 10^6 objects, with workers that skip the codec and storage.

For each ``--objects`` N, on a fresh ``redis-server`` (and SeaweedFS where S3 is used),
each in a temporary directory:

* **feeder alone**: the real :class:`~producer.feeder.Feeder` with the default
  high-water mark (``DCMPRESS_FEED_HIGH_WATER``) sends N keys, while a drain deletes
  the queue as fast as it fills (workers infinitely fast): from a generated S3 Batch
  Operations manifest of N realistic keys (~60 characters) read by
  :class:`~producer.feeder.ManifestCursor`, and from a *listing page stream*: a
  :class:`~producer.feeder.ListingCursor` fed generated pages of 1,000, no S3 server,
  so the feeder's own speed shows, not the listing's. keys/s, and the CPU of the
  feeder and of Redis per key;
* **the control plane**: the feeder sends the manifest's N keys through the queue
  to stub workers (``benchmarks/harness/stub_worker.py``: separate processes that pop
  the Celery messages, decode them and record each object ``running`` then ``done``,
  a share ``failed``, through the real ledger code, no codec, no S3), the archiver
  (``archive_locked``, as the workers' bootstep runs it) moves done records into gzip
  NDJSON shards in SeaweedFS, then ``status`` (``views.snapshot`` and ``render``) and
  ``report`` (``report_rows``, shards and Redis, written as CSV) over the whole batch.
  It prints Redis's peak memory (``INFO used_memory`` sampled every 20 ms, and the
  fresh server's ``used_memory_peak``), its memory at the end, the feeder's keys/s,
  the control plane's CPU per object by component (from ``/proc`` and each thread's
  own clock), the shard bytes per object, and report rows/s, and checks that every
  object was recorded once and reported once.

Once per invocation, beside them: a real SeaweedFS listing of ``--listing-objects``
objects (listing alone, and through the feeder); the same control-plane run on
``--per-object-sample`` objects with the stubs making a real worker's Redis calls one
by one (``per-object``: what Redis pays per object in production); the Redis bytes of
one object queued at the mark, one done record awaiting the archiver and one failed
and one skipped record (failed ones stay in Redis, skipped ones only a cancel's); and
from all of it, the capacity model
for 10^8 and 10^9 objects (``docs/guides/scale.md``, "Capacity").

Batched recording (the default for the big runs) pops 100 messages per RPOP and
records them in one ``transition_many`` call per state: one stub process records
~5,000 objects/s that way on two cores, where one round trip per call (~300/s) would
take most of an hour for 10^6 objects. The archiver keeps no record
(``--archive-keep 0``) and runs every ``--archive-interval`` (3) seconds, so the
records done and waiting for it stay flat in N; production's ``archive_keep`` (60 s)
and ``archive_interval`` (30 s) keep about (objects/s x 90 s) more, which the capacity
model adds. The per-object run uses production's interval: at a few hundred objects/s,
a tick every 3 s would read a partial shard's outbox again and again.

Run from the repository's root:
``python -m benchmarks.control_plane [--objects 100000 1000000] [--json] [--markdown]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any, cast

import redis
from rich.console import Console

from benchmarks.harness.machine import describe_machine
from benchmarks.harness.stub_worker import (
    FAILED_MESSAGE,
    Recording,
    StubConfig,
    StubTally,
    is_failed,
    run_stub_worker,
)
from benchmarks.harness.tables import TextTable
from benchmarks.harness.timing import Progress
from dcmpress.reports import report_rows, write_report
from dcmpress.stack.services import RedisServer, SeaweedS3, dcmpress_env
from dcmpress.views import render, snapshot
from producer.feeder import Cursor, Feeder, ListingCursor, ManifestCursor, Step
from producer.manifests import open_local, read_manifest
from producer.sources import KeyFilter
from worker.procfs import tree_cpu_seconds
from worker.runtime.app import create_app
from worker.runtime.archive import progress as archive_progress
from worker.runtime.contract import BatchSpec, S3Location
from worker.runtime.ledger import SHARDS, Keys, Ledger, shard_of
from worker.runtime.records import Record
from worker.runtime.storage import Listed, Storage
from worker.settings import WorkerSettings

SOURCE_BUCKET = "archive"  # named by the manifest; never read (the stubs fetch nothing)
DEST_BUCKET = "bench-out"  # where the shards go
LISTING_BUCKET = "bench-list"
PAGE = 1_000  # keys per listing page, as S3's ListObjectsV2 returns
SAMPLE_SECONDS = 0.02  # INFO memory every 20 ms: a 500-record Lua call takes ~10 ms
MB = 1e6
MASK = 2**64 - 1
SKIPPED_MESSAGE = "no_pixel_data: no pixel data (SR document); copied unchanged"
PRODUCTION_INTERVAL = float(WorkerSettings.model_fields["archive_interval"].default)
PRODUCTION_KEEP = float(WorkerSettings.model_fields["archive_keep"].default)
LISTPACK_ENTRIES = 128  # Redis 7's hash-max-listpack-entries: a fuller hash is a hashtable


# -- the backlog ---------------------------------------------------------------------


def object_key(index: int) -> str:
    """The ``index``-th key of the archive: 60 characters, as a PACS export names them
    (500 images a study, 100 a series)."""
    study, image = divmod(index, 500)
    series, image = divmod(image, 100)
    return f"studies/1.2.840.113619.2.55.3.{study:07d}/series/{series + 1:03d}/IM{image:05d}.dcm"


def write_manifest(path: Path, count: int) -> int:
    """An S3 Batch Operations CSV of ``count`` keys; returns the sum of their hashes
    (the report's check: every key once)."""
    key_sum = 0
    with path.open("w") as handle:
        for index in range(count):
            key = object_key(index)
            key_sum = (key_sum + hash(key)) & MASK
            handle.write(f"{SOURCE_BUCKET},{key}\n")
    return key_sum


class PageStream:
    """Stands in for :class:`~worker.runtime.storage.Storage` in a
    :class:`~producer.feeder.ListingCursor`: ``list_pages`` yields generated pages of
    :data:`PAGE` objects, made as they are read (no S3, no memory for the whole listing)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def list_pages(
        self, bucket: str, prefix: str, start_after: str = "", page_size: int = PAGE
    ) -> Iterator[list[Listed]]:
        """The listing, page by page (``start_after`` is not needed: never resumed)."""
        for first in range(0, self.count, page_size):
            yield [
                Listed(
                    object_key(index),
                    f"{zlib.crc32(b'%d' % index):08x}" * 4,
                    524_288 + index,
                    modified=1.7e9,
                )
                for index in range(first, min(first + page_size, self.count))
            ]


# -- measuring -----------------------------------------------------------------------


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` in ``os.environ`` (WorkerSettings reads it, stubs inherit it) for a while."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def cpu_of(pid: int | None) -> float:
    """CPU seconds of one server process so far."""
    return tree_cpu_seconds(pid, descendants=False)


class RedisWatch:
    """Samples Redis in a thread: ``used_memory`` and, at its peak, what Redis held
    (messages in the queue, keys in the outbox, records queued and running)."""

    def __init__(self, url: str, queue: str, batch: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.queue, self.batch = queue, batch
        self.peak = 0
        self.peak_at: dict[str, int] = {}
        self.samples = 0
        self.cpu = 0.0  # the sampler's own CPU: measurement overhead, not control plane
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="redis-watch")

    def __enter__(self) -> RedisWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
        self.client.close()

    def _run(self) -> None:
        own = time.thread_time()
        while not self.stopped.wait(SAMPLE_SECONDS):
            with self.client.pipeline(transaction=False) as pipe:
                pipe.info("memory")
                pipe.llen(self.queue)
                pipe.llen(Keys.outbox(self.batch))
                pipe.hmget(Keys.counts(self.batch), "queued", "running")
                memory, queue, outbox, (queued, running) = pipe.execute()
            self.samples += 1
            used = int(memory["used_memory"])
            if used > self.peak:
                self.peak = used
                self.peak_at = {
                    "queue_messages": int(queue),
                    "outbox_entries": int(outbox),
                    "queued_records": int(queued or 0),
                    "running_records": int(running or 0),
                }
        self.cpu = time.thread_time() - own


def command_stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """(calls, microseconds) per command since the server started."""
    stats = cast(dict[str, dict[str, int]], client.info("commandstats"))
    return {
        name.removeprefix("cmdstat_"): (int(value["calls"]), int(value["usec"]))
        for name, value in stats.items()
    }


def command_cost(
    before: dict[str, tuple[int, int]],
    after: dict[str, tuple[int, int]],
    objects: int,
    top: int = 8,
) -> dict[str, dict[str, float]]:
    """The commands Redis spent most time in between two readings: calls and µs per
    object. A script's time includes the commands it calls, which are listed too."""
    rows = {}
    for name, (calls, usec) in after.items():
        calls -= before.get(name, (0, 0))[0]
        usec -= before.get(name, (0, 0))[1]
        if calls:
            rows[name] = {"calls": calls / objects, "us": usec / objects}
    ranked = sorted(rows.items(), key=lambda item: -item[1]["us"])[:top]
    return {name: {k: round(v, 3) for k, v in row.items()} for name, row in ranked}


def used_memory(client: redis.Redis) -> int:
    """Bytes Redis has allocated now (what ``maxmemory`` counts)."""
    return int(client.info("memory")["used_memory"])


@dataclass
class FeedTiming:
    """A feeder's run to the end of its source."""

    keys: int  # objects it sent
    seconds: float  # from its first step to the end of the source
    busy: float  # wall seconds inside steps that sent objects
    waited: float  # seconds asleep, the queue at its mark
    cpu: float  # CPU seconds of the thread that ran it


def feed(feeder: Feeder) -> FeedTiming:
    """Step ``feeder`` until its source is fed in full, as :meth:`Feeder.run` does,
    timing the steps that send apart from the waits at the mark."""
    cpu, started = time.thread_time(), time.perf_counter()
    busy = waited = 0.0
    while True:
        before = time.perf_counter()
        step = feeder.step()
        if step is Step.FED:
            busy += time.perf_counter() - before
        elif step is Step.FINISHED:
            break
        elif step is not Step.WAITING:
            raise RuntimeError(f"the feeder stopped: {step.value}, {feeder.state}")
        if feeder.wait:
            time.sleep(feeder.wait)
            waited += feeder.wait
    return FeedTiming(
        feeder.report.enqueued,
        time.perf_counter() - started,
        busy,
        waited,
        time.thread_time() - cpu,
    )


class Drain:
    """Deletes the queue whenever it holds messages: infinitely fast workers, so a
    feeder alone runs at its own speed with the default mark."""

    def __init__(self, url: str, queue: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.queue = queue
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="drain")

    def __enter__(self) -> Drain:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
        self.client.close()

    def _run(self) -> None:
        while not self.stopped.is_set():
            if not self.client.delete(self.queue):
                time.sleep(0.002)


def new_batch(ledger: Ledger, batch: str, source: str = SOURCE_BUCKET) -> BatchSpec:
    """A saved batch of ``source`` writing to :data:`DEST_BUCKET`."""
    spec = BatchSpec(
        batch=batch,
        source=S3Location(bucket=source),
        dest=S3Location(bucket=DEST_BUCKET),
        created=time.time(),
    )
    ledger.save_batch(spec)
    return spec


def make_feeder(
    settings: WorkerSettings, ledger: Ledger, storage: Storage, spec: BatchSpec, cursor: Cursor
) -> Feeder:
    """The real feeder on ``spec`` with the settings' queue and high-water mark."""
    return Feeder(
        create_app(settings),
        ledger,
        storage,
        spec,
        settings.queue,
        settings.feed_high_water,
        cursor,
    )


def manifest_cursor(manifest: Path) -> ManifestCursor:
    """The manifest read from its start, streamed."""
    return ManifestCursor(read_manifest(str(manifest), open_local), 0)


def feeder_alone(
    kind: str, count: int, manifest: Path, root: Path, s3_env: dict[str, str]
) -> dict[str, Any]:
    """The feeder alone (a drain for workers) on a fresh Redis: from the manifest
    (``kind`` "manifest") or a generated listing page stream ("listing stream")."""
    with RedisServer(root / f"redis-feeder-{kind.replace(' ', '-')}") as server:
        env = {**s3_env, "DCMPRESS_REDIS_URL": server.url}
        with environment(env):
            settings = WorkerSettings()
            ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds)
            storage = Storage(settings)
            spec = new_batch(ledger, f"feed-{count}")
            cursor: Cursor = manifest_cursor(manifest)
            if kind != "manifest":
                # (a PageStream is all of Storage a ListingCursor uses)
                pages = cast(Storage, PageStream(count))
                cursor = ListingCursor(pages, spec.source, "", KeyFilter())
            feeder = make_feeder(settings, ledger, storage, spec, cursor)
            redis_before = cpu_of(server.pid)
            with Drain(settings.redis_url, settings.queue):
                timing = feed(feeder)
            redis_cpu = cpu_of(server.pid) - redis_before
            ledger.redis.close()
    if timing.keys != count:
        raise RuntimeError(f"feeder alone ({kind}) sent {timing.keys} of {count} keys")
    return {
        "keys": count,
        "keys_per_s": round(count / timing.seconds),
        "seconds": round(timing.seconds, 2),
        "waited_seconds": round(timing.waited, 2),
        "feeder_cpu_us_per_key": round(timing.cpu / count * 1e6, 1),
        "redis_cpu_us_per_key": round(redis_cpu / count * 1e6, 1),
        "high_water": settings.feed_high_water,
    }


# -- the control plane -----------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """How a control-plane run is made (the command line's knobs)."""

    workers: int = 1
    failed_share: float = 0.001
    archive_interval: float = 3.0
    archive_keep: float = 0.0
    shard_size: int | None = None  # None: WorkerSettings' default


class ReportCheck:
    """Counts the report's rows as they stream by, and adds up their keys' hashes: the
    same count and sum as the manifest's mean every key once (a key twice and another
    missing would have to hash to the same sum)."""

    def __init__(self, keys_out: IO[str] | None) -> None:
        self.rows = 0
        self.key_sum = 0
        self.states: Counter[str] = Counter()
        self.keys_out = keys_out

    def through(self, rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """``rows``, counted."""
        for row in rows:
            self.rows += 1
            self.key_sum = (self.key_sum + hash(row["key"])) & MASK
            self.states[row["state"]] += 1
            if self.keys_out is not None:
                self.keys_out.write(f"{row['key']}\t{row['state']}\n")
            yield row


Stubs = list[tuple[multiprocessing.process.BaseProcess, Connection]]


def start_stubs(count: int, config: StubConfig) -> Stubs:
    """``count`` stub worker processes (spawned: no inherited Redis connections), each
    connected and ready; stub 0 archives."""
    context = multiprocessing.get_context("spawn")
    stubs: Stubs = []
    for index in range(count):
        mine, theirs = context.Pipe()
        stub_config = StubConfig(**{**asdict(config), "index": index, "archive": index == 0})
        child = context.Process(target=run_stub_worker, args=(stub_config, theirs), daemon=True)
        child.start()
        theirs.close()
        stubs.append((child, mine))
    for process, pipe in stubs:
        if not pipe.poll(120) or pipe.recv() != "ready":
            raise RuntimeError(f"stub worker {process.pid} did not start")
    return stubs


def collect_stubs(stubs: Stubs) -> list[StubTally]:
    """Each stub's tally once it is done; raises if one died."""
    tallies = []
    for process, pipe in stubs:
        try:
            tallies.append(cast(StubTally, pipe.recv()))
        except EOFError:
            process.join(5)
            raise RuntimeError(
                f"stub worker {process.pid} died (exit {process.exitcode})"
            ) from None
        process.join(30)
    return tallies


def shard_sizes(storage: Storage, spec: BatchSpec, ledger: Ledger) -> tuple[int, int]:
    """(shards, bytes) committed for the batch, listed from S3."""
    at = archive_progress(ledger, spec.batch).at
    if at is None:
        return 0, 0
    sizes = [item.size for page in storage.list_pages(at.bucket, at.prefix) for item in page]
    return len(sizes), sum(sizes)


def control_plane_run(
    count: int,
    manifest: Path,
    key_sum: int,
    recording: Recording,
    options: Options,
    root: Path,
    keys_out: IO[str] | None = None,
) -> dict[str, Any]:
    """Feeder -> queue -> stub workers -> ledger -> archiver -> shards, then status and
    report, on a fresh Redis and SeaweedFS: memory, CPU, shard bytes, the checks."""
    with (
        RedisServer(root / "redis") as server,
        SeaweedS3(root / "s3") as s3,
        environment(dcmpress_env(server, s3)),
    ):
        settings = WorkerSettings()
        client = s3.client()
        client.create_bucket(Bucket=DEST_BUCKET)
        client.close()
        ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds)
        storage = Storage(settings)
        spec = new_batch(ledger, f"cp-{count}")
        shard_size = options.shard_size or settings.archive_shard_size
        config = StubConfig(
            index=0,
            env=dict(os.environ),
            batch=spec.batch,
            queue=settings.queue,
            recording=recording,
            failed_share=options.failed_share,
            archive=True,
            archive_interval=options.archive_interval,
            archive_keep=options.archive_keep,
            shard_size=shard_size,
            report_prefix=settings.report_prefix,
        )
        stubs = start_stubs(options.workers, config)
        feeder = make_feeder(settings, ledger, storage, spec, manifest_cursor(manifest))
        stats_before = command_stats(ledger.redis)
        redis_cpu = [cpu_of(server.pid)]
        s3_before = tree_cpu_seconds(s3.pid)
        empty = used_memory(ledger.redis)
        with RedisWatch(settings.redis_url, settings.queue, spec.batch) as watch:
            started = time.perf_counter()
            for _, pipe in stubs:
                pipe.send("go")
            timing = feed(feeder)
            redis_cpu.append(cpu_of(server.pid))
            tallies = collect_stubs(stubs)
            recorded = time.perf_counter() - started
            redis_cpu.append(cpu_of(server.pid))
            stats_after = command_stats(ledger.redis)
            own = time.thread_time()
            status_started = time.perf_counter()
            status = snapshot(ledger, spec.batch)
            Console(file=io.StringIO(), width=100).print(render(status))
            status_seconds = time.perf_counter() - status_started
            check = ReportCheck(keys_out)
            report_started = time.perf_counter()
            with open(os.devnull, "w") as sink:
                write_report(check.through(report_rows(ledger, spec.batch, storage)), sink, "csv")
            report_seconds = time.perf_counter() - report_started
            status_report_cpu = time.thread_time() - own
            redis_cpu.append(cpu_of(server.pid))
        s3_cpu = tree_cpu_seconds(s3.pid) - s3_before
        memory = ledger.redis.info("memory")
        shards, shard_bytes = shard_sizes(storage, spec, ledger)
        counts = ledger.counts(spec.batch)
        archived = archive_progress(ledger, spec.batch).archived
        ledger.redis.close()
    messages = sum(t.messages for t in tallies)
    expected_failed = sum(is_failed(object_key(i), options.failed_share) for i in range(count))
    checks: dict[str, Any] = {
        "fed": timing.keys,
        "messages": messages,
        "transitions": sum(t.written for t in tallies),
        "done": int(counts.get("done", 0)),
        "failed": int(counts.get("failed", 0)),
        "expected_failed": expected_failed,
        "queued": int(counts.get("queued", 0)),
        "running": int(counts.get("running", 0)),
        "archived": archived,
        "report_rows": check.rows,
        "report_states": dict(check.states),
        "report_keys_match": check.rows == count and check.key_sum == key_sum,
        "status_complete": status.complete and status.finished == count,
    }
    checks["ok"] = bool(
        checks["fed"] == messages == count
        and checks["transitions"] == 2 * count  # running and final, none superseded
        and checks["done"] + checks["failed"] == count
        and checks["failed"] == expected_failed
        and checks["queued"] == checks["running"] == 0
        and archived == checks["done"] == check.states["done"]  # every done row from a shard
        and check.states["failed"] == checks["failed"]  # the others from Redis
        and checks["report_keys_match"]
        and checks["status_complete"]
    )
    recording_cpu = sum(t.recording_cpu for t in tallies)
    archiver_cpu = sum(t.archiver_cpu for t in tallies)
    stub_other = sum(t.process_cpu for t in tallies) - recording_cpu - archiver_cpu
    redis_total = redis_cpu[-1] - redis_cpu[0]
    cpu = {
        "feeder": timing.cpu,
        "stub recording": recording_cpu,
        "archiver": archiver_cpu,
        "stub other threads": max(0.0, stub_other),
        "status and report": status_report_cpu,
        "redis": redis_total,
    }
    cpu["total"] = sum(cpu.values())
    return {
        "objects": count,
        "recording": recording,
        "stub_workers": options.workers,
        "high_water": settings.feed_high_water,
        "archive": {
            "keep": options.archive_keep,
            "interval": options.archive_interval,
            "shard_size": shard_size,
        },
        "seconds": round(recorded, 2),
        "objects_per_s": round(count / recorded),
        "feed": {
            "seconds": round(timing.seconds, 2),
            "busy_seconds": round(timing.busy, 2),
            "waited_seconds": round(timing.waited, 2),
            "keys_per_s": round(count / timing.seconds),
            "busy_keys_per_s": round(count / timing.busy) if timing.busy else None,
        },
        "redis": {
            "empty_mb": round(empty / MB, 2),
            "peak_sampled_mb": round(watch.peak / MB, 2),
            "used_memory_peak_mb": round(int(memory["used_memory_peak"]) / MB, 2),
            "end_mb": round(int(memory["used_memory"]) / MB, 2),
            "rss_end_mb": round(int(memory["used_memory_rss"]) / MB, 2),
            "peak_at": watch.peak_at,
            "samples": watch.samples,
            "cpu_seconds": {
                "feeding (stubs and archiver at work)": round(redis_cpu[1] - redis_cpu[0], 2),
                "after the feed: last records, last shards": round(redis_cpu[2] - redis_cpu[1], 2),
                "status and report": round(redis_cpu[3] - redis_cpu[2], 2),
            },
            "commands_per_object": command_cost(stats_before, stats_after, count),
        },
        "cpu_us_per_object": {name: round(sec / count * 1e6, 1) for name, sec in cpu.items()},
        "s3_server_cpu_us_per_object": round(s3_cpu / count * 1e6, 1),
        "sampler_cpu_seconds": round(watch.cpu, 2),
        "stub_recording_seconds": round(max(t.recording_seconds for t in tallies), 2),
        "archiver": {
            "runs": sum(t.archive_runs for t in tallies),
            "seconds": round(sum(t.archiver_seconds for t in tallies), 2),
        },
        "shards": {
            "count": shards,
            "bytes": shard_bytes,
            "bytes_per_object": round(shard_bytes / count, 2),
            "bytes_per_archived_record": round(shard_bytes / archived, 2) if archived else None,
        },
        "status_ms": round(status_seconds * 1000, 2),
        "report": {
            "rows": check.rows,
            "seconds": round(report_seconds, 2),
            "rows_per_s": round(check.rows / report_seconds),
        },
        "checks": checks,
    }


# -- once per invocation -------------------------------------------------------------


def seaweed_listing(objects: int, root: Path) -> dict[str, Any]:
    """A real SeaweedFS listing of ``objects`` objects: listing alone, and listing fed
    to the feeder (fresh Redis, drain for workers)."""
    with (
        SeaweedS3(root / "s3-listing") as s3,
        RedisServer(root / "redis-listing") as server,
        environment(dcmpress_env(server, s3)),
    ):
        client = s3.client()
        client.create_bucket(Bucket=LISTING_BUCKET)

        def put(index: int) -> None:
            client.put_object(Bucket=LISTING_BUCKET, Key=object_key(index), Body=b"DICM")

        with ThreadPoolExecutor(8) as pool:  # (a boto3 client is safe across threads)
            list(pool.map(put, range(objects)))
        client.close()
        settings = WorkerSettings()
        storage = Storage(settings)
        started = time.perf_counter()
        listed = sum(len(page) for page in storage.list_pages(LISTING_BUCKET, ""))
        list_seconds = time.perf_counter() - started
        ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds)
        spec = new_batch(ledger, "listing", source=LISTING_BUCKET)
        cursor = ListingCursor(storage, spec.source, "", KeyFilter())
        feeder = make_feeder(settings, ledger, storage, spec, cursor)
        with Drain(settings.redis_url, settings.queue):
            timing = feed(feeder)
        ledger.redis.close()
    if listed != objects or timing.keys != objects:
        raise RuntimeError(f"listed {listed}, fed {timing.keys} of {objects} objects")
    return {
        "objects": objects,
        "list_keys_per_s": round(objects / list_seconds),
        "feeder_keys_per_s": round(objects / timing.seconds),
    }


def _restricted_keys(count: int, shards: int) -> list[str]:
    """``count`` keys whose records fall in the first ``shards`` of the ledger's shards:
    a few thousand records as densely packed as a million would be."""
    keys: list[str] = []
    index = 0
    while len(keys) < count:
        key = object_key(10**9 + index)
        if shard_of(key) < shards:
            keys.append(key)
        index += 1
    return keys


def record_bytes(root: Path, manifest: Path, s3_env: dict[str, str]) -> dict[str, Any]:
    """Redis bytes of one object in each state the capacity model counts, measured on a
    fresh server as the growth of ``used_memory``: queued at the mark (its message and
    its record, the feeder filling the queue with no worker); done and waiting for the
    archiver (its record and outbox entry, as sparse as in a run); failed and skipped
    (record and message) ~100 a shard (listpack hashes, as 8*10^5 of them would be) and
    ~400 a shard (hash tables, as 10^7 would be)."""
    with (
        RedisServer(root / "redis-bytes") as server,
        environment({**s3_env, "DCMPRESS_REDIS_URL": server.url}),
    ):
        settings = WorkerSettings()
        ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds)
        storage = Storage(settings)
        sizes: dict[str, Any] = {"empty_mb": round(used_memory(ledger.redis) / MB, 2)}
        spec = new_batch(ledger, "bytes-queued")
        before = used_memory(ledger.redis)
        feeder = make_feeder(settings, ledger, storage, spec, manifest_cursor(manifest))
        while feeder.step() is Step.FED:  # until the queue is at its mark (or all fed)
            pass
        queued = int(ledger.redis.llen(settings.queue))
        sizes["queued_at_mark"] = round((used_memory(ledger.redis) - before) / queued)
        sizes["queue_at_mark_messages"] = queued
        worker = ledger.register_worker("celery@dcmpress-worker-6f7d9c8b5-x7k2p/0")
        running = Record(state="running", attempts=1, worker=worker, etag="0123456789ab")
        kinds = {
            "done": (
                Record(
                    state="done",
                    code="compressed",
                    bytes_in=524_288,
                    bytes_out=201_000,
                    target="jpeg-ls",
                    plugin="pyjpegls",
                    millis=812,
                    modality="CT",
                ),
                "",
            ),
            "failed": (
                Record(
                    state="failed",
                    code="verification_failed",
                    bytes_in=524_288,
                    target="jpeg-ls",
                    plugin="pyjpegls",
                    millis=812,
                    modality="CT",
                ),
                FAILED_MESSAGE,
            ),
            "skipped": (
                Record(
                    state="skipped",
                    code="no_pixel_data",
                    bytes_in=24_576,
                    bytes_out=24_576,
                    millis=40,
                    modality="SR",
                    copied=True,
                ),
                SKIPPED_MESSAGE,
            ),
        }
        # done records waiting for the archiver are few a shard; failed and skipped ones
        # pile up: listpack hashes below 128 a shard, hash tables above (10^8 objects with
        # 1.1 % kept make ~134 a shard, 10^9 ~1,340)
        placements = {
            "done": [object_key(2 * 10**9 + i) for i in range(10_000)],
            "failed": _restricted_keys(8_200, SHARDS // 100),  # ~100 a shard
            "skipped": _restricted_keys(8_200, SHARDS // 100),
            "failed_hashtable": _restricted_keys(8_000, 20),  # ~400 a shard
            "skipped_hashtable": _restricted_keys(8_000, 20),
        }
        for name, keys in placements.items():
            final, message = kinds[name.removesuffix("_hashtable")]
            batch = new_batch(ledger, f"bytes-{name}").batch
            before = used_memory(ledger.redis)
            ledger.transition_many(batch, [(key, running.stamped(), "") for key in keys])
            ledger.transition_many(batch, [(key, final.stamped(), message) for key in keys])
            sizes[name] = round((used_memory(ledger.redis) - before) / len(keys))
        ledger.redis.close()
    return sizes


# -- the capacity model --------------------------------------------------------------


@dataclass(frozen=True)
class Assumptions:
    """What the capacity model assumes beyond what was measured."""

    failed_share: float = 0.001  # objects that fail: their records stay in Redis
    # skipped records kept in Redis: only a cancel's (others go to the shards like done
    # ones); none in a migration that is not cancelled
    skipped_share: float = 0.0
    rate: float = 1_000.0  # objects/s the workers finish (records waiting to be archived)
    archive_keep: float = 60.0  # production's defaults (WorkerSettings)
    archive_interval: float = 30.0
    put_per_1000: float = 0.005  # $ per 1,000 PUT, COPY, POST, LIST (S3 Standard list price)
    get_per_1000: float = 0.0004  # $ per 1,000 GET, HEAD and others
    storage_gb_month: float = 0.023  # $ per GB-month, S3 Standard, first 50 TB


def capacity_model(
    results: dict[str, Any], assumptions: Assumptions, sizes: Sequence[float] = (1e8, 1e9)
) -> list[dict[str, Any]]:
    """Redis size, feeder time, shard storage, S3 requests and their cost, control-plane
    CPU for ``sizes`` objects, from the largest run's numbers and the per-record bytes."""
    run = results["runs"][-1]
    main = run["control_plane"]
    per_object = results.get("per_object")
    bytes_of = results["record_bytes"]
    feeder = min(
        run["feeder"]["manifest"]["keys_per_s"], run["feeder"]["listing_stream"]["keys_per_s"]
    )
    shard_size = main["archive"]["shard_size"]
    waiting = shard_size + assumptions.rate * (
        assumptions.archive_keep + assumptions.archive_interval
    )
    finished_share = 1 - assumptions.failed_share - assumptions.skipped_share
    rows = []
    for objects in sizes:
        kept_share = assumptions.failed_share + assumptions.skipped_share
        # records a shard hash holds: a hash table above Redis's listpack limit
        form = "_hashtable" if objects * kept_share / SHARDS > LISTPACK_ENTRIES else ""
        kept = objects * (
            assumptions.failed_share * bytes_of["failed" + form]
            + assumptions.skipped_share * bytes_of["skipped" + form]
        )
        redis_bytes = (
            bytes_of["empty_mb"] * MB
            + bytes_of["queued_at_mark"] * main["high_water"]
            + bytes_of["done"] * waiting
            + kept
        )
        archived = objects * finished_share
        shard_bytes = archived * main["shards"]["bytes_per_archived_record"]
        shards = math.ceil(archived / shard_size)
        worker_requests = objects * (2 * assumptions.get_per_1000 + assumptions.put_per_1000) / 1000
        row = {
            "objects": objects,
            "redis_mb": round(redis_bytes / MB),
            "redis_kept_records_mb": round(kept / MB),
            "feeder_hours": round(objects / feeder / 3600, 1),
            "shard_gb": round(shard_bytes / 1e9, 1),
            "shard_storage_per_month": round(shard_bytes / 1e9 * assumptions.storage_gb_month, 2),
            "shard_puts": shards,
            "shard_put_cost": round(shards * assumptions.put_per_1000 / 1000, 2),
            "listing_cost": round(objects / PAGE * assumptions.put_per_1000 / 1000, 2),
            "worker_request_cost": round(worker_requests),
            "report_hours": round(objects / main["report"]["rows_per_s"] / 3600, 1),
            "control_plane_core_hours": round(
                objects * main["cpu_us_per_object"]["total"] / 1e6 / 3600
            ),
        }
        if per_object:
            redis_us = per_object["cpu_us_per_object"]["redis"]
            row["redis_core_hours_per_object_calls"] = round(objects * redis_us / 1e6 / 3600)
        rows.append(row)
    return rows


# -- the report ----------------------------------------------------------------------


def tables(results: dict[str, Any]) -> list[TextTable]:
    """Every table of the run, in reading order."""
    runs = results["runs"]
    out = [
        TextTable(
            "Feeder alone: default mark, a drain for workers (keys/s; CPU µs per key)",
            ("source", "keys", "keys/s", "feeder CPU", "Redis CPU"),
            tuple(
                (
                    kind,
                    f"{f['keys']:,}",
                    f"{f['keys_per_s']:,}",
                    f"{f['feeder_cpu_us_per_key']}",
                    f"{f['redis_cpu_us_per_key']}",
                )
                for run in runs
                for kind, f in ((k.replace("_", " "), f) for k, f in run["feeder"].items())
            ),
            "manifest: a generated Batch Operations CSV, streamed; listing stream: generated "
            "pages of 1,000 in a ListingCursor (no S3)",
        )
    ]
    mains = [run["control_plane"] for run in runs]
    if results.get("per_object"):
        mains.append(results["per_object"])
    out.append(
        TextTable(
            "Control plane: feeder -> queue -> stub workers -> ledger -> archiver -> shards; "
            "then status and report",
            (
                "objects",
                "recording",
                "objects/s",
                "feed keys/s",
                "busy keys/s",
                "Redis peak MB",
                "server peak MB",
                "end MB",
                "shards",
                "shard B/object",
                "status ms",
                "report rows/s",
                "checks",
            ),
            tuple(
                (
                    f"{m['objects']:,}",
                    m["recording"],
                    f"{m['objects_per_s']:,}",
                    f"{m['feed']['keys_per_s']:,}",
                    f"{m['feed']['busy_keys_per_s'] or 0:,}",
                    f"{m['redis']['peak_sampled_mb']:.1f}",
                    f"{m['redis']['used_memory_peak_mb']:.1f}",
                    f"{m['redis']['end_mb']:.1f}",
                    str(m["shards"]["count"]),
                    f"{m['shards']['bytes_per_object']:.1f}",
                    f"{m['status_ms']:.1f}",
                    f"{m['report']['rows_per_s']:,}",
                    "ok" if m["checks"]["ok"] else "FAILED",
                )
                for m in mains
            ),
            "Redis peak: INFO used_memory sampled every 20 ms; server peak: used_memory_peak "
            "of the run's fresh server (transient buffers included); busy keys/s: the feeder's "
            "keys over the time of its steps that sent (not its waits at the mark)",
            text_columns=2,
        )
    )
    names = list(mains[0]["cpu_us_per_object"])
    out.append(
        TextTable(
            "Control-plane CPU per object (µs): this process, the stubs, redis-server",
            ("objects", "recording", *names, "S3 server"),
            tuple(
                (
                    f"{m['objects']:,}",
                    m["recording"],
                    *(f"{m['cpu_us_per_object'][n]:.1f}" for n in names),
                    f"{m['s3_server_cpu_us_per_object']:.1f}",
                )
                for m in mains
            ),
            "feeder, status and report: thread CPU clocks of this process; stub recording "
            "and archiver: thread CPU clocks in the stub processes; redis: /proc; the S3 "
            "server (SeaweedFS: shard PUTs, report GETs) is not in the total",
            text_columns=2,
        )
    )
    out.append(
        TextTable(
            "Redis time by command, per object (µs), feeding and recording",
            ("objects", "recording", "commands (µs per object, calls per object)"),
            tuple(
                (
                    f"{m['objects']:,}",
                    m["recording"],
                    "; ".join(
                        f"{name} {c['us']:.1f} ({c['calls']:.2f})"
                        for name, c in m["redis"]["commands_per_object"].items()
                    ),
                )
                for m in mains
            ),
            "INFO commandstats; a script's (evalsha) time includes the commands it calls, "
            "which are listed as well",
            text_columns=3,
        )
    )
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        a, b = first["control_plane"], last["control_plane"]
        ratio = f"{last['objects']:,} / {first['objects']:,}"

        def of(x: float, y: float) -> str:
            return f"{x / y:.2f}" if y else "-"

        out.append(
            TextTable(
                f"Ratios, {ratio} objects, same run",
                ("number", "ratio"),
                (
                    (
                        "Redis peak (sampled)",
                        of(b["redis"]["peak_sampled_mb"], a["redis"]["peak_sampled_mb"]),
                    ),
                    (
                        "Redis server peak",
                        of(b["redis"]["used_memory_peak_mb"], a["redis"]["used_memory_peak_mb"]),
                    ),
                    ("Redis at the end", of(b["redis"]["end_mb"], a["redis"]["end_mb"])),
                    (
                        "feeder keys/s, manifest",
                        of(
                            last["feeder"]["manifest"]["keys_per_s"],
                            first["feeder"]["manifest"]["keys_per_s"],
                        ),
                    ),
                    (
                        "feeder keys/s, listing stream",
                        of(
                            last["feeder"]["listing_stream"]["keys_per_s"],
                            first["feeder"]["listing_stream"]["keys_per_s"],
                        ),
                    ),
                    (
                        "control-plane CPU per object",
                        of(b["cpu_us_per_object"]["total"], a["cpu_us_per_object"]["total"]),
                    ),
                    (
                        "shard bytes per object",
                        of(b["shards"]["bytes_per_object"], a["shards"]["bytes_per_object"]),
                    ),
                    ("report rows/s", of(b["report"]["rows_per_s"], a["report"]["rows_per_s"])),
                ),
            )
        )
    listing = results.get("seaweed_listing")
    if listing:
        out.append(
            TextTable(
                "A real SeaweedFS listing (same machine)",
                ("objects", "list alone keys/s", "listing -> feeder keys/s"),
                (
                    (
                        f"{listing['objects']:,}",
                        f"{listing['list_keys_per_s']:,}",
                        f"{listing['feeder_keys_per_s']:,}",
                    ),
                ),
            )
        )
    sizes = results["record_bytes"]
    out.append(
        TextTable(
            "Redis bytes per object, by state",
            (
                "queued at the mark",
                "done, awaiting the archiver",
                "failed ~100 a shard",
                "skipped ~100 a shard",
                "failed ~400 a shard",
                "skipped ~400 a shard",
                "empty server MB",
            ),
            (
                (
                    *(
                        f"{sizes[name]:,}"
                        for name in (
                            "queued_at_mark",
                            "done",
                            "failed",
                            "skipped",
                            "failed_hashtable",
                            "skipped_hashtable",
                        )
                    ),
                    f"{sizes['empty_mb']}",
                ),
            ),
            "growth of used_memory: queued = message + record; done = record + outbox entry "
            "(sparse, as in a run); failed and skipped = record + message, kept in "
            "Redis: ~100 a shard is a listpack hash, ~400 a hash table (above 128)",
            text_columns=0,
        )
    )
    model = results["capacity"]
    a = results["assumptions"]
    out.append(
        TextTable(
            "Capacity model (from this run's numbers)",
            (
                "objects",
                "Redis MB",
                "of it failed+skipped",
                "feeder h",
                "shards GB",
                "$/month",
                "shard PUTs",
                "$ PUTs",
                "$ LIST",
                "$ worker requests",
                "report h",
                "control-plane core-h",
                "Redis core-h, per-object calls",
            ),
            tuple(
                (
                    f"{r['objects']:.0e}",
                    f"{r['redis_mb']:,}",
                    f"{r['redis_kept_records_mb']:,}",
                    f"{r['feeder_hours']}",
                    f"{r['shard_gb']}",
                    f"{r['shard_storage_per_month']}",
                    f"{r['shard_puts']:,}",
                    f"{r['shard_put_cost']}",
                    f"{r['listing_cost']}",
                    f"{r['worker_request_cost']:,}",
                    f"{r['report_hours']}",
                    f"{r['control_plane_core_hours']:,}",
                    f"{r.get('redis_core_hours_per_object_calls', '-'):,}",
                )
                for r in model
            ),
            f"assumed: {a['failed_share']:.1%} failed (their records stay in Redis), "
            f"{a['skipped_share']:.0%} skipped by a cancel (the same), workers finishing "
            f"{a['rate']:,.0f} objects/s with "
            f"archive_keep {a['archive_keep']:.0f} s + archive_interval "
            f"{a['archive_interval']:.0f} s; S3 Standard list prices ${a['put_per_1000']} per "
            f"1,000 PUT/LIST, ${a['get_per_1000']} per 1,000 GET/HEAD, "
            f"${a['storage_gb_month']}/GB-month; worker requests: GET source + HEAD output + "
            "PUT output per object",
            text_columns=1,
        )
    )
    return out


def print_results(results: dict[str, Any], stream: Any, markdown: bool) -> None:
    """The tables, for a terminal or (``markdown``) for a document."""
    machine, options = results["machine"], results["options"]
    lines = [
        f"{machine['cpu']}, {machine['cores']} cores, load {machine['load_average_at_start']} "
        f"at the start and {results['load_average_at_end']} at the end (other work on the "
        "machine shares its cores)",
        f"stub workers: {options['workers']}; archive keep {options['archive_keep']} s, "
        f"every {options['archive_interval']} s; {options['failed_share']:.1%} of objects "
        "recorded failed",
    ]
    if markdown:
        stream.write("\n".join(f"- {line}" for line in lines) + "\n\n")
        stream.write("\n".join(table.markdown() for table in tables(results)))
        return
    console = Console(file=stream, width=220)
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    for table in tables(results):
        console.print()
        console.print(table.rich())


# -- the command line ----------------------------------------------------------------


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Every measurement; JSON-serialisable results."""
    options = Options(
        workers=args.workers,
        failed_share=args.failed_share,
        archive_interval=args.archive_interval,
        archive_keep=args.archive_keep,
        shard_size=args.shard_size,
    )
    results: dict[str, Any] = {
        "schema": 1,
        "machine": describe_machine(),
        "options": asdict(options),
        "runs": [],
    }
    keys_out = open(args.report_keys, "w") if args.report_keys else None  # noqa: SIM115
    try:
        with tempfile.TemporaryDirectory(prefix="dcmpress-control-") as tmp:
            root = Path(tmp)
            largest = max(max(args.objects), args.per_object_sample)
            progress.note(f"writing a manifest of {largest:,} keys")
            manifests: dict[int, tuple[Path, int]] = {}
            for count in sorted({*args.objects, args.per_object_sample} - {0}):
                path = root / f"manifest-{count}.csv"
                manifests[count] = (path, write_manifest(path, count))
            with SeaweedS3(root / "s3-env") as s3:
                s3_env = s3.env()  # for Storage(): the feeder-alone runs never call it
                for count in args.objects:
                    manifest, key_sum = manifests[count]
                    measured: dict[str, Any] = {"objects": count, "feeder": {}}
                    for kind in ("manifest", "listing stream"):
                        progress.note(f"feeder alone, {kind}, {count:,} keys")
                        measured["feeder"][kind.replace(" ", "_")] = feeder_alone(
                            kind, count, manifest, root / f"alone-{count}", s3_env
                        )
                    progress.note(f"control plane, {count:,} objects, batched recording")
                    measured["control_plane"] = control_plane_run(
                        count,
                        manifest,
                        key_sum,
                        "batched",
                        options,
                        root / f"run-{count}",
                        keys_out if count == args.objects[0] else None,
                    )
                    results["runs"].append(measured)
                if args.per_object_sample:
                    count = args.per_object_sample
                    progress.note(f"control plane, {count:,} objects, per-object recording")
                    manifest, key_sum = manifests[count]
                    # at a few hundred objects/s, ticks of a second would re-read a
                    # partial shard's records every second: production's interval
                    slow = replace(options, archive_interval=PRODUCTION_INTERVAL)
                    results["per_object"] = control_plane_run(
                        count, manifest, key_sum, "per-object", slow, root / "per-object"
                    )
                progress.note("Redis bytes per record")
                results["record_bytes"] = record_bytes(
                    root, manifests[max(args.objects)][0], s3_env
                )
            if args.listing_objects:
                progress.note(f"a SeaweedFS listing of {args.listing_objects:,} objects")
                results["seaweed_listing"] = seaweed_listing(args.listing_objects, root)
    finally:
        if keys_out is not None:
            keys_out.close()
    assumptions = Assumptions()
    results["assumptions"] = asdict(assumptions)
    results["capacity"] = capacity_model(results, assumptions)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds_total"] = round(progress.elapsed(), 1)
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.control_plane",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--objects",
        type=int,
        nargs="+",
        default=[100_000, 1_000_000],
        help="batch sizes, each its own run (default 100000 1000000)",
    )
    parser.add_argument("--workers", type=int, default=1, help="stub worker processes")
    parser.add_argument(
        "--failed-share",
        type=float,
        default=0.001,
        help="share of objects the stubs record failed (default 0.001)",
    )
    parser.add_argument(
        "--archive-interval",
        type=float,
        default=3.0,
        help="seconds between archiver runs (production: 30)",
    )
    parser.add_argument(
        "--archive-keep",
        type=float,
        default=0.0,
        help="seconds a done record stays before it is archived (production: 60)",
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="records per shard (default: DCMPRESS_ARCHIVE_SHARD_SIZE's, 10000)",
    )
    parser.add_argument(
        "--per-object-sample",
        type=int,
        default=20_000,
        help="objects of the per-object-calls run (0: none)",
    )
    parser.add_argument(
        "--listing-objects",
        type=int,
        default=2_000,
        help="objects of the real SeaweedFS listing (0: none)",
    )
    parser.add_argument(
        "--json", action="store_true", help="the results as JSON on stdout, the tables on stderr"
    )
    parser.add_argument("--markdown", action="store_true", help="the tables as Markdown")
    parser.add_argument(
        "--report-keys",
        type=Path,
        default=None,
        metavar="PATH",
        help="write each reported row's key and state (first run) to PATH",
    )
    args = parser.parse_args(argv)
    if min(args.objects) < 1 or args.workers < 1:
        parser.error("--objects and --workers must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Measure, print the tables (or JSON), and exit 1 if a check failed."""
    args = parse_args(argv)
    progress = Progress(quiet=False)
    results = run(args, progress)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
    print_results(results, sys.stderr if args.json else sys.stdout, args.markdown)
    mains = [r["control_plane"] for r in results["runs"]] + (
        [results["per_object"]] if results.get("per_object") else []
    )
    if not all(m["checks"]["ok"] for m in mains):
        print("a check failed: see checks in --json", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
