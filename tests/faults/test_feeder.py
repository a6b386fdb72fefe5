"""The feeder on bad days: killed mid-feed, Redis full, Redis restarted, nobody but the
workers left to feed; and the queue holding its mark, not the archive.

A "drain" thread stands in for the workers where the test is about the control plane:
it takes messages off the queue as a worker would, and keeps their keys, so "every
object exactly once" is read from what really went through the queue.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

import producer.batches as batches_module
from dcmpress.stack.services import CeleryWorker, RedisServer, SeaweedS3, free_port
from producer.feeder import (
    Feeder,
    FeedPlan,
    ListingCursor,
    ManifestCursor,
    Step,
    load_plan,
    save_plan,
)
from producer.sources import KeyFilter, ObjectRef
from tests.conftest import message_keys, queued_keys, run_cli, wait_for_batch
from tests.faults.test_redis_restart import AofRedis
from worker.runtime import contract
from worker.runtime.app import create_app
from worker.runtime.contract import BatchSpec, S3Location
from worker.runtime.ledger import Keys, Ledger, shard_of
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _upload(s3: SeaweedS3, bucket: str, count: int, prefix: str = "k/") -> list[str]:
    keys = [f"{prefix}{index:05d}.dcm" for index in range(count)]
    client = s3.client()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b"x" * 16), keys))
    return keys


class Drain(threading.Thread):
    """Takes up to ``per_tick`` messages off ``queue`` every 20 ms, as workers would."""

    def __init__(self, url: str, queue: str, per_tick: int = 10) -> None:
        super().__init__(daemon=True)
        self.client = redis_py.Redis.from_url(url, socket_timeout=2)
        self.queue, self.per_tick = queue, per_tick
        self.keys: list[str] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            try:
                raws = self.client.rpop(self.queue, self.per_tick)
            except redis_py.RedisError:  # a restart under way
                continue
            self.keys += message_keys(raws or [])

    def until(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.keys) < count:
            assert time.monotonic() < deadline, len(self.keys)
            time.sleep(0.02)


@contextmanager
def draining(url: str, queue: str, per_tick: int = 10) -> Iterator[Drain]:
    drain = Drain(url, queue, per_tick)
    drain.start()
    try:
        yield drain
    finally:
        drain.stopped.set()
        drain.join(5)


def _feed_follow(env: dict[str, str], source: str, dest: str, batch: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dcmpress", "enqueue", f"s3://{source}/", "--dest",
         f"s3://{dest}/", "--batch", batch, "--follow"],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_queue_holds_the_mark_and_the_listing_holds_the_rest(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    keys = _upload(s3_server, source, 450)
    queue = f"mark-{uuid.uuid4().hex[:6]}"
    env = {**stack_env, "DCMPRESS_QUEUE": queue, "DCMPRESS_FEED_HIGH_WATER": "100"}
    batch = f"mark-{uuid.uuid4().hex[:6]}"
    args = ("enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", "--batch", batch)
    first = run_cli(env, *args)
    assert first.returncode == 0, first.stderr
    said = " ".join(first.stderr.split())
    assert "waiting: the queue is at its mark (100 messages)" in said
    assert "the workers feed the rest as the queue drains" in said
    assert ledger.redis.llen(queue) == 100
    info = ledger.batch_info(batch)
    assert info["checkpoint"] == keys[99] and "listing_done" not in info
    assert batch in {b.decode() for b in ledger.redis.smembers(Keys.feeds())}
    assert ledger.counts(batch)["queued"] == 100  # records only for what is queued
    status = run_cli(env, "status", batch)
    assert "waiting: the queue is at its mark" in " ".join(status.stdout.split())
    ledger.redis.rpop(queue, 60)  # workers took 60
    again = run_cli(env, *args)  # the same command goes on from the checkpoint
    assert again.returncode == 0, again.stderr
    assert ledger.redis.llen(queue) == 100
    assert ledger.batch_info(batch)["checkpoint"] == keys[159]
    assert ledger.counts(batch)["queued"] == 160


def test_a_feeder_killed_at_any_moment_loses_and_duplicates_nothing(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger,
) -> None:  # fmt: skip
    """SIGKILL three times mid-feed; each time the next feeder starts at once (the
    test deletes the dead feeder's lock, which would otherwise lapse in 60 s)."""
    source, dest = bucket_pair
    keys = _upload(s3_server, source, 900)
    queue = f"kill-{uuid.uuid4().hex[:6]}"
    env = {**stack_env, "DCMPRESS_QUEUE": queue, "DCMPRESS_FEED_HIGH_WATER": "50"}
    batch = f"kill-{uuid.uuid4().hex[:6]}"
    with draining(stack_env["DCMPRESS_REDIS_URL"], queue) as drain:
        for round_ in range(1, 4):
            feeder = _feed_follow(env, source, dest, batch)
            drain.until(round_ * 200)
            feeder.send_signal(signal.SIGKILL)
            feeder.communicate(timeout=10)
            ledger.redis.delete(Keys.feed_lock(batch))
        feeder = _feed_follow(env, source, dest, batch)
        _, stderr = feeder.communicate(timeout=300)
        assert feeder.returncode == 0, stderr
        _wait(lambda: ledger.redis.llen(queue) == 0, 60, "drained")
        time.sleep(0.2)
    assert len(drain.keys) == len(keys)  # nothing twice
    assert sorted(drain.keys) == keys  # nothing lost
    info = ledger.batch_info(batch)
    assert "listing_done" in info and info["enqueued"] == str(len(keys))
    assert ledger.counts(batch)["queued"] == len(keys)


def test_a_feeder_dying_between_the_send_and_the_checkpoint_sends_nothing_twice(
    settings: WorkerSettings, ledger: Ledger, storage: Storage, s3_server: SeaweedS3,
    bucket_pair: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The narrowest window, hit on purpose: the chunk is queued, the checkpoint not
    written; the next feeder sends the same chunk again, and the ledger absorbs it."""
    source, dest = bucket_pair
    keys = _upload(s3_server, source, 120)
    spec = BatchSpec(batch=f"gap-{uuid.uuid4().hex[:6]}", source=S3Location(bucket=source),
                     dest=S3Location(bucket=dest))  # fmt: skip
    ledger.save_batch(spec)
    queue = f"gap-{uuid.uuid4().hex[:6]}"
    save_plan(ledger, spec.batch, FeedPlan(queue=queue))  # (no worker consumes it)
    app = create_app(settings)
    real = batches_module.ResumePoint.read
    monkeypatch.setattr("producer.feeder.CHUNK", 50)

    def dies_at_the_second_checkpoint(ledger_: Ledger, batch: str, key: str, sent: int) -> None:
        if sent > 50:
            raise SystemExit("killed between the send and the checkpoint (injected)")
        ledger_.set_checkpoint(batch, key, sent)

    monkeypatch.setattr("producer.feeder.save_listing_point", dies_at_the_second_checkpoint)
    cursor = ListingCursor(storage, spec.source, "", KeyFilter())
    with pytest.raises(SystemExit):
        Feeder(app, ledger, storage, spec, queue, 1000, cursor).run(lambda step: False)
    assert ledger.batch_info(spec.batch)["checkpoint"] == keys[49]
    assert ledger.redis.llen(queue) == 100  # the second chunk went out
    monkeypatch.undo()
    resume = real(ledger, spec.batch)
    cursor = ListingCursor(storage, spec.source, resume.after_key, KeyFilter())
    second = Feeder(app, ledger, storage, spec, queue, 1000, cursor, resuming=True)
    assert second.run(lambda step: False) is Step.FINISHED
    assert (second.report.enqueued, second.report.already_queued) == (20, 50)
    assert sorted(queued_keys(ledger, queue)) == keys  # every key exactly once


def test_a_full_redis_pauses_the_feed_in_one_line_and_it_resumes_when_memory_frees(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    """maxmemory with noeviction mid-feed: the feed stops, says so, queues nothing
    without its message, and finishes once memory is raised; no traceback."""
    source, dest = bucket_pair
    keys = _upload(s3_server, source, 2000)
    queue = f"full-{uuid.uuid4().hex[:6]}"
    batch = f"full-{uuid.uuid4().hex[:6]}"
    with RedisServer(tmp_path / "redis", port=free_port()) as server:
        env = {**stack_env, "DCMPRESS_REDIS_URL": server.url, "DCMPRESS_QUEUE": queue}
        admin = redis_py.Redis.from_url(server.url)
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", used + 1_500_000)  # room for about 1,000 messages
        ledger = Ledger.from_url(server.url, 86400)
        feeder = _feed_follow(env, source, dest, batch)
        try:
            _wait(lambda: "nearly full" in ledger.batch_info(batch).get("feed_state", ""),
                  120, "the feed to pause")  # fmt: skip
            queued = ledger.counts(batch)["queued"]
            assert 0 < queued < len(keys)
            assert ledger.redis.llen(queue) == queued  # every record has its message
            status = run_cli(env, "status", batch)
            assert "Redis is nearly full" in " ".join(status.stdout.split())
            admin.config_set("maxmemory", 0)  # memory frees
            _, stderr = feeder.communicate(timeout=120)
        finally:
            if feeder.poll() is None:
                feeder.kill()
            feeder.communicate(timeout=10)  # (closes its pipes whatever happened)
            admin.config_set("maxmemory", 0)
        assert feeder.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert sorted(queued_keys(ledger, queue)) == keys
        assert ledger.counts(batch)["queued"] == len(keys)


def test_a_redis_restart_mid_feed_loses_and_duplicates_nothing(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    keys = _upload(s3_server, source, 800)
    queue = f"aof-{uuid.uuid4().hex[:6]}"
    batch = f"aof-{uuid.uuid4().hex[:6]}"
    server = AofRedis(tmp_path / "redis", port=free_port())
    with server:
        env = {**stack_env, "DCMPRESS_REDIS_URL": server.url, "DCMPRESS_QUEUE": queue,
               "DCMPRESS_FEED_HIGH_WATER": "100"}  # fmt: skip
        with draining(server.url, queue) as drain:
            feeder = _feed_follow(env, source, dest, batch)
            drain.until(300)
            server.stop()  # SIGTERM: with AOF, everything written is kept
            time.sleep(3)  # the feeder finds Redis gone, and waits
            server.start()
            _, stderr = feeder.communicate(timeout=300)
            assert feeder.returncode == 0, stderr
            ledger = Ledger.from_url(server.url, 86400)
            _wait(lambda: ledger.redis.llen(queue) == 0, 60, "drained")
            time.sleep(0.2)
        assert "Traceback" not in stderr
        assert sorted(drain.keys) == keys  # each exactly once
        assert ledger.counts(batch)["queued"] == len(keys)


def test_the_workers_feed_a_batch_nobody_else_feeds(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    """`enqueue` feeds up to the mark and exits; a worker goes on to the end."""
    source, dest = bucket_pair
    keys = _upload(s3_server, source, 240)
    queue = f"wfeed-{uuid.uuid4().hex[:6]}"
    env = {**stack_env, "DCMPRESS_QUEUE": queue, "DCMPRESS_FEED_HIGH_WATER": "40",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    batch = f"wfeed-{uuid.uuid4().hex[:6]}"
    enqueue = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
                      "--batch", batch)  # fmt: skip
    assert enqueue.returncode == 0, enqueue.stderr
    assert ledger.counts(batch)["queued"] == 40
    with CeleryWorker(env, tmp_path / "worker", concurrency=2):
        counts = wait_for_batch(ledger, batch, len(keys), timeout=300)
    assert counts["skipped"] == len(keys)  # not DICOM: each one recorded
    info = ledger.batch_info(batch)
    assert "listing_done" in info and info["enqueued"] == str(len(keys))
    assert batch not in {b.decode() for b in ledger.redis.smembers(Keys.feeds())}


def test_a_closed_window_feeds_nothing_and_status_says_when_it_opens(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    _upload(s3_server, source, 30)
    queue = f"win-{uuid.uuid4().hex[:6]}"
    env = {**stack_env, "DCMPRESS_QUEUE": queue}
    batch = f"win-{uuid.uuid4().hex[:6]}"
    hour = time.gmtime().tm_hour
    closed = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"
    args = ("enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", "--batch", batch,
            "--max-rate", "5/s")  # fmt: skip
    first = run_cli(env, *args, "--window", closed, "--timezone", "UTC")
    assert first.returncode == 0, first.stderr
    assert f"paused: outside its window {closed} UTC, opens in" in " ".join(first.stderr.split())
    assert ledger.redis.llen(queue) == 0
    status = " ".join(run_cli(env, "status", batch).stdout.split())
    assert "paused: outside its window" in status and f"5 objects/s, window {closed}" in status
    # the same command with another window changes the feed under way
    opened = run_cli(env, *args, "--window", f"{hour:02d}:00-{(hour + 1) % 24:02d}:00")
    assert opened.returncode == 0, opened.stderr
    assert 0 < ledger.redis.llen(queue) <= 6  # one second of 5/s at most, no burst


def test_bad_pacing_options_are_refused_before_anything_is_queued(
    stack_env: dict[str, str], bucket_pair: tuple[str, str]
) -> None:
    source, dest = bucket_pair
    cases = [
        (("--max-rate", "fast"), "give objects per second"),
        (("--window", "8-6"), "expected HH:MM-HH:MM"),
        (("--window", "20:00-06:00", "--timezone", "Mars/Base"), "unknown time zone"),
    ]
    for bad, said in cases:
        proc = run_cli(stack_env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", *bad)
        assert proc.returncode == 2 and said in " ".join(proc.stderr.split()), proc.stderr


def test_a_later_pass_sends_neither_old_objects_nor_archived_ones_nor_counts_them_again(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger,
) -> None:  # fmt: skip
    """`enqueue` again after a listing was fed in full: objects modified well before
    the previous pass began are not listed into the ledger at all; those of the hour
    before it whose records left Redis (archived) are found written with one HEAD each
    and not sent; new ones are sent."""
    source, dest = bucket_pair
    keys = _upload(s3_server, source, 6)
    queue = f"pass-{uuid.uuid4().hex[:6]}"
    env = {**stack_env, "DCMPRESS_QUEUE": queue}
    batch = f"pass-{uuid.uuid4().hex[:6]}"
    args = ("enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", "--batch", batch)
    assert run_cli(env, *args).returncode == 0
    spec = ledger.get_batch(batch)
    assert spec is not None
    client = s3_server.client()
    # keys[0:3] finished, their outputs written, their records archived (gone from Redis)
    for key in keys[:3]:
        etag = client.head_object(Bucket=source, Key=key)["ETag"].strip('"')
        metadata = contract.output_metadata(
            source_etag=etag, source_key=key, bytes_in=16, bytes_out=8,
            outcome="done/compressed", options_digest=spec.digest(),
        )  # fmt: skip
        client.put_object(Bucket=dest, Key=key, Body=b"out", Metadata=metadata)
        ledger.redis.hdel(Keys.objects(batch, shard_of(key)), key)
    again = json.loads(run_cli(env, *args).stdout.strip().splitlines()[-1])
    # all six were uploaded within the hour before the first pass: looked at again
    assert (again["enqueued"], again["already_done"], again["already_queued"]) == (0, 3, 3)
    # a pass that began long after these uploads: none of them is even looked at
    plan = load_plan(ledger, batch)
    assert plan is not None
    save_plan(ledger, batch, plan.model_copy(update={"pass_started": time.time() + 7200}))
    new = _upload(s3_server, source, 1, prefix="new/")
    later = json.loads(run_cli(env, *args).stdout.strip().splitlines()[-1])
    assert later["filtered"] == {"unchanged": 7}  # "new/" too is older than that pass
    assert (later["enqueued"], later["already_done"]) == (0, 0)
    forced = json.loads(run_cli(env, *args, "--force").stdout.strip().splitlines()[-1])
    assert forced["enqueued"] == 7 and new[0] in queued_keys(ledger, queue)


def test_a_chunk_refused_by_a_full_redis_midway_pauses_the_feed_and_is_sent_again(
    stack_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feeder sizes its chunks to stay below 90 % of maxmemory; when a chunk still
    meets the limit (the estimate made 30 times too small here), Redis refuses whole
    500-object calls: the feed pauses (even its note refused), nothing is queued
    without its message, and the chunk goes again once memory frees."""
    monkeypatch.setattr("producer.feeder.QUEUED_BYTES", 50)
    with RedisServer(tmp_path / "redis", port=free_port()) as server:
        for name, value in {**stack_env, "DCMPRESS_REDIS_URL": server.url}.items():
            monkeypatch.setenv(name, value)
        settings = WorkerSettings()
        ledger = Ledger.from_url(server.url, 86400)
        spec = BatchSpec(batch="oom", source=S3Location(bucket="srcb"), dest=S3Location(bucket="d"))
        ledger.save_batch(spec)
        keys = [f"k/{index:05d}.dcm" for index in range(3000)]
        pages = iter([[ObjectRef("srcb", key) for key in keys[i : i + 1000]]
                      for i in range(0, 3000, 1000)])  # fmt: skip
        feeder = Feeder(create_app(settings), ledger, Storage(settings), spec, "oom-queue",
                        10_000, ManifestCursor(pages, 0))  # fmt: skip
        used = int(ledger.redis.info("memory")["used_memory"])
        ledger.redis.config_set("maxmemory", used + 2_000_000)  # about 1,300 objects
        steps = [feeder.step() for _ in range(3)]
        assert Step.PAUSED in steps and "nearly full" in feeder.state
        queued = ledger.counts("oom").get("queued", 0)
        assert 0 < queued < len(keys) and ledger.redis.llen("oom-queue") == queued
        ledger.redis.config_set("maxmemory", 0)
        assert feeder.run(lambda step: False, sleep=lambda seconds: None) is Step.FINISHED
        assert sorted(queued_keys(ledger, "oom-queue")) == keys
        assert ledger.counts("oom")["queued"] == len(keys)
