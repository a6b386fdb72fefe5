"""Done records written out of Redis into shards on S3 (worker/runtime/archive.py),
against the real Redis and S3 servers; a real worker archives a batch it runs."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import worker.runtime.archive as archive
from dcmpress.commands.common import key_filter
from dcmpress.reports import report_rows
from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from tests.integration.test_pipeline_steps import make_job, spec_for
from worker.runtime.archive import (
    archive_batch,
    archive_locked,
    archived_rows,
    progress,
    shard_key,
)
from worker.runtime.contract import BatchSpec, S3Location
from worker.runtime.ledger import SHARDS, Keys, Ledger
from worker.runtime.pipeline import process_object
from worker.runtime.records import Record
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PREFIX = "dcmpress-reports/"


def archive_now(ledger: Ledger, storage: Storage, batch: str, **options: Any) -> archive.ArchiveRun:
    """archive_batch with the defaults' shard size, records older than a minute."""
    settings: dict[str, Any] = {"report_prefix": PREFIX, "shard_size": 10_000, "keep": 60}
    return archive_batch(ledger, storage, batch, **{**settings, **options})


def done_record(ledger: Ledger, index: int, updated: float, **fields: Any) -> Record:
    """A done record like a worker's."""
    return Record(
        state="done", code="compressed", bytes_in=500_000 + index, bytes_out=200_000,
        attempts=1, target="jpeg-ls", plugin="pyjpegls", millis=400 + index,
        worker=ledger.register_worker("celery@node-1/42"), etag=f"{index:012x}",
        updated=int(updated), modality="CT", **fields,
    )  # fmt: skip


def varied_record(ledger: Ledger, index: int, updated: float) -> Record:
    """A done record whose sizes, time and ETag vary as real ones do (shards compress
    what repeats)."""
    digest = hashlib.md5(str(index).encode(), usedforsecurity=False).digest()
    size = 300_000 + int.from_bytes(digest[:3], "big")
    return Record(
        state="done", code="compressed", bytes_in=size,
        bytes_out=size * 10 // (20 + digest[3] % 15),
        attempts=1, target="jpeg-ls", plugin="pyjpegls", millis=200 + digest[4] * 3,
        worker=ledger.register_worker(f"celery@node-{digest[5] % 8}/42"), etag=digest.hex()[:12],
        updated=int(updated) + index // 100, modality=("CT", "MR", "CR", "DX")[digest[6] % 4],
    )  # fmt: skip


def new_batch(ledger: Ledger, bucket_pair: tuple[str, str]) -> BatchSpec:
    """A saved batch writing to the destination bucket."""
    source, dest = bucket_pair
    spec = BatchSpec(
        batch=f"arch-{uuid.uuid4().hex[:8]}", source=S3Location(bucket=source),
        dest=S3Location(bucket=dest, prefix="out/"), created=time.time(),
    )  # fmt: skip
    ledger.save_batch(spec)
    return spec


def fill(ledger: Ledger, batch: str, keys: list[str], updated: float) -> None:
    """Record ``keys`` done, as a worker does (queued, running, done)."""
    items = [(key, Record(state="queued"), "") for key in keys]
    ledger.transition_many(batch, items)
    notices = {keys[0]: "done, high bits cleared"} if keys else {}
    ledger.transition_many(
        batch,
        ((key, done_record(ledger, i, updated), notices.get(key, "")) for i, key in
         enumerate(keys)),
    )  # fmt: skip


def shard_rows(s3_server: SeaweedS3, bucket: str, key: str) -> list[dict[str, Any]]:
    """The lines of one shard, as stored."""
    body = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return [json.loads(line) for line in gzip.decompress(body).decode().splitlines()]


def test_done_records_leave_redis_for_a_shard_and_the_counters_stay(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str]
) -> None:
    spec = new_batch(ledger, bucket_pair)
    batch = spec.batch
    keys = [f"studies/{i:04d}/IM{i}.dcm" for i in range(25)]
    fill(ledger, batch, keys, time.time() - 700)
    failed = Record(state="failed", code="invalid_dicom", bytes_in=9).stamped()
    ledger.transition(batch, "bad.dcm", failed, "invalid DICOM: no preamble")
    ledger.transition(batch, "waiting.dcm", Record(state="queued").stamped())
    rows_before = list(report_rows(ledger, batch))
    counts_before = ledger.counts(batch)

    run = archive_now(ledger, storage, batch)

    assert (run.shards, run.archived, run.dropped) == (1, 25, 0)
    assert ledger.counts(batch) == counts_before  # counters untouched
    left = {key: record.state for key, record, _ in ledger.iter_records(batch)}
    assert left == {"bad.dcm": "failed", "waiting.dcm": "queued"}
    assert ledger.get_message(batch, keys[0]) == ""  # a done record's notice left too
    assert ledger.redis.llen(Keys.outbox(batch)) == 0
    where = S3Location(bucket=bucket_pair[1], prefix=f"{PREFIX}{batch}/")
    assert progress(ledger, batch) == archive.Progress(1, 25, where)
    # the shard holds the report's rows of the done objects, in finish order, each a
    # line of success.ndjson
    stored = shard_rows(s3_server, bucket_pair[1], f"{PREFIX}{batch}/outcomes-00000000.ndjson.gz")
    by_key = {row["key"]: row for row in rows_before}
    assert stored == [{"batch": batch, **by_key[key]} for key in keys]
    assert stored[0]["message"] == "done, high bits cleared"
    # and the report reads them back: every object once, as before
    rows_after = list(report_rows(ledger, batch, storage))
    assert sorted(rows_after, key=lambda row: row["key"]) == sorted(
        rows_before, key=lambda row: row["key"]
    )
    assert [row["key"] for row in rows_after[:25]] == keys  # shards first
    # nothing more to do: a second run writes nothing
    assert archive_now(ledger, storage, batch) == archive.ArchiveRun()


def test_skipped_records_go_to_the_shards_those_of_a_cancel_and_failed_ones_stay(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str]
) -> None:
    """`retry` works on failed records and `resume` on cancelled ones: they stay; an
    object skipped for what it is (no pixel data) is finished like a done one."""
    spec = new_batch(ledger, bucket_pair)
    batch, old = spec.batch, time.time() - 700
    states = {
        "sr.dcm": Record(state="skipped", code="no_pixel_data", bytes_in=7, updated=int(old)),
        "later.dcm": Record(state="skipped", code="cancelled", bytes_in=7, updated=int(old)),
        "bad.dcm": Record(state="failed", code="invalid_dicom", bytes_in=9, updated=int(old)),
    }
    ledger.transition_many(batch, ((key, Record(state="queued"), "") for key in states))
    ledger.transition_many(
        batch, ((key, record, f"{record.code}") for key, record in states.items())
    )
    counts = ledger.counts(batch)

    run = archive_now(ledger, storage, batch)

    assert (run.shards, run.archived) == (1, 1)
    assert {key for key, _, _ in ledger.iter_records(batch)} == {"later.dcm", "bad.dcm"}
    _, dest = bucket_pair
    rows = shard_rows(s3_server, dest, f"{PREFIX}{batch}/outcomes-00000000.ndjson.gz")
    assert [(r["key"], r["state"], r["code"]) for r in rows] == [
        ("sr.dcm", "skipped", "no_pixel_data")
    ]
    assert ledger.counts(batch) == counts
    reported = {row["key"]: row["state"] for row in report_rows(ledger, batch)}
    assert reported == {"sr.dcm": "skipped", "later.dcm": "skipped", "bad.dcm": "failed"}


def test_records_younger_than_the_keep_time_stay_in_redis(
    ledger: Ledger, storage: Storage, bucket_pair: tuple[str, str]
) -> None:
    spec = new_batch(ledger, bucket_pair)
    now = time.time()
    fill(ledger, spec.batch, [f"old/{i}.dcm" for i in range(5)], now - 700)
    fill(ledger, spec.batch, [f"new/{i}.dcm" for i in range(3)], now - 10)

    run = archive_now(ledger, storage, spec.batch, keep=60, now=now)

    assert run.archived == 5
    assert sorted(key for key, _, _ in ledger.iter_records(spec.batch)) == [
        "new/0.dcm", "new/1.dcm", "new/2.dcm",
    ]  # fmt: skip
    assert ledger.redis.llen(Keys.outbox(spec.batch)) == 3
    # DCMPRESS_ARCHIVE_KEEP=0: at once
    assert archive_now(ledger, storage, spec.batch, keep=0, shard_size=3).archived == 3
    assert progress(ledger, spec.batch).shards == 2


def test_a_running_batch_waits_for_a_full_shard_a_finished_one_does_not(
    ledger: Ledger, storage: Storage, bucket_pair: tuple[str, str]
) -> None:
    spec = new_batch(ledger, bucket_pair)
    now = time.time()
    fill(ledger, spec.batch, [f"a/{i}.dcm" for i in range(7)], now - 120)
    ledger.transition(spec.batch, "pending.dcm", Record(state="queued").stamped())
    # 7 records, shards of 3: two full shards now, the seventh waits for company
    run = archive_now(ledger, storage, spec.batch, shard_size=3, now=now)
    assert (run.shards, run.archived) == (2, 6)
    # ... or for ten minutes
    later = archive_now(ledger, storage, spec.batch, shard_size=3, now=now + archive.PARTIAL_AFTER)
    assert (later.shards, later.archived) == (1, 1)
    # a finished batch (enqueued in full, nothing pending) writes its last records at once
    fill(ledger, spec.batch, ["b/0.dcm"], now - 120)
    assert archive_now(ledger, storage, spec.batch, shard_size=3, now=now).archived == 0
    ledger.transition(spec.batch, "pending.dcm", done_record(ledger, 99, now - 120))
    ledger.mark_listing_done(spec.batch, 9)
    assert archive_now(ledger, storage, spec.batch, shard_size=3, now=now).archived == 2
    assert progress(ledger, spec.batch).archived == 9
    assert list(ledger.iter_records(spec.batch)) == []


def test_an_object_queued_again_while_its_shard_is_written_keeps_its_record(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    spec = new_batch(ledger, bucket_pair)
    keys = [f"k/{i}.dcm" for i in range(6)]
    fill(ledger, spec.batch, keys, time.time() - 700)
    real_put = archive.put_shard
    calls: list[int] = []

    def put_then_requeue(*args: Any) -> int:
        size = real_put(*args)
        if not calls:  # between the PUT and the commit, k/2 is sent again (--force)
            ledger.queue_many(spec.batch, [("k/2.dcm", "000000000002")], True, True)
        calls.append(len(args[-1]))
        return size

    monkeypatch.setattr(archive, "put_shard", put_then_requeue)
    run = archive_now(ledger, storage, spec.batch)

    assert calls == [6, 5]  # the shard was written again without it
    assert (run.shards, run.archived, run.dropped) == (1, 5, 1)
    record = ledger.get_record(spec.batch, "k/2.dcm")
    assert record is not None and record.state == "queued"
    where = progress(ledger, spec.batch).at
    assert where is not None
    stored = shard_rows(s3_server, where.bucket, shard_key(where, 0))
    assert [row["key"] for row in stored] == ["k/0.dcm", "k/1.dcm", "k/3.dcm", "k/4.dcm", "k/5.dcm"]
    # done again later, it goes into the next shard: once in all
    ledger.transition(spec.batch, "k/2.dcm", done_record(ledger, 2, time.time() - 700))
    assert archive_now(ledger, storage, spec.batch).archived == 1
    keys_reported = [row["key"] for row in report_rows(ledger, spec.batch, storage)]
    assert sorted(keys_reported) == keys


def test_report_of_a_batch_whose_records_are_all_in_shards_lists_every_object_once(
    stack_env: dict[str, str], ledger: Ledger, storage: Storage,
    bucket_pair: tuple[str, str], tmp_path: Path,
) -> None:  # fmt: skip
    spec = new_batch(ledger, bucket_pair)
    keys = [f"series/{i:03d}.dcm" for i in range(23)]
    fill(ledger, spec.batch, keys, time.time() - 700)
    ledger.mark_listing_done(spec.batch, len(keys))
    assert archive_now(ledger, storage, spec.batch, shard_size=5).shards == 5
    assert list(ledger.iter_records(spec.batch)) == []  # only counters are left

    proc = run_cli(stack_env, "report", spec.batch, "--format", "ndjson")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [row["key"] for row in rows] == keys
    assert rows[0]["message"] == "done, high bits cleared" and rows[1]["ratio"] == 2.5
    proc = run_cli(stack_env, "report", spec.batch, "--out", str(tmp_path / "set"), "--html")
    assert proc.returncode == 0, proc.stderr
    with (tmp_path / "set" / "completion.csv").open() as handle:
        completion = list(csv.reader(handle))
    assert [row[1] for row in completion] == keys
    assert len((tmp_path / "set" / "success.ndjson").read_text().splitlines()) == 23
    assert "23" in (tmp_path / "set" / "report.html").read_text()
    status = run_cli(stack_env, "status", spec.batch).stdout  # from the counters
    assert "23 / 23" in status and "2.50x" in status


def test_the_workers_archive_nothing_of_a_batch_while_its_report_is_read(
    ledger: Ledger, storage: Storage, bucket_pair: tuple[str, str]
) -> None:
    spec = new_batch(ledger, bucket_pair)
    keys = [f"r/{i:02d}.dcm" for i in range(12)]
    fill(ledger, spec.batch, keys, time.time() - 120)
    assert archive_now(ledger, storage, spec.batch, shard_size=5).archived == 10
    rows = report_rows(ledger, spec.batch, storage)
    reported = [next(rows)["key"]]  # a report under way: shards read, Redis next

    held = archive_locked(
        ledger, storage, spec.batch, report_prefix=PREFIX, shard_size=1, keep=0
    )  # fmt: skip

    assert held is None  # else r/10 and r/11 would leave Redis unseen
    reported += [row["key"] for row in rows]
    assert reported[:10] == keys[:10] and sorted(reported) == keys
    run = archive_locked(ledger, storage, spec.batch, report_prefix=PREFIX, shard_size=1, keep=0)
    assert run is not None and run.archived == 2


def test_the_listing_never_takes_the_shards_as_input(settings: WorkerSettings) -> None:
    source = S3Location(bucket="archive")
    in_place = key_filter(source, None, None, None, 1, None)
    same_bucket = key_filter(source, S3Location(bucket="archive", prefix="jls/"), None, None,
                             1, None)  # fmt: skip
    elsewhere = key_filter(source, S3Location(bucket="archive-jls"), None, None, 1, None)
    assert settings.report_prefix in in_place.exclude_prefixes
    assert same_bucket.exclude_prefixes == ("jls/", settings.report_prefix)
    assert elsewhere.exclude_prefixes == ()


def test_a_done_object_whose_record_was_archived_is_recorded_again_not_written_again(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str]
) -> None:
    """``enqueue`` run again sends an object whose record left Redis: the worker finds
    its output with one HEAD and records it done again; the counters count it twice."""
    source, dest = bucket_pair
    client = s3_server.client()
    client.put_object(Bucket=source, Key="a.dcm", Body=to_bytes(make_image(48, 48)))
    etag = str(client.head_object(Bucket=source, Key="a.dcm")["ETag"]).strip('"')
    spec = spec_for(source, dest)
    job = make_job(ledger, storage, spec, "a.dcm", etag=etag)
    assert process_object(job)["outcome"] == "done"
    written = client.head_object(Bucket=dest, Key="out/a.dcm")["LastModified"]
    assert archive_now(ledger, storage, spec.batch, keep=0, shard_size=1).archived == 1
    assert ledger.get_record(spec.batch, "a.dcm") is None

    again = process_object(make_job(ledger, storage, spec, "a.dcm", etag=etag))

    assert again["outcome"] == "done" and "written already" in ledger.get_message(
        spec.batch, "a.dcm"
    )
    assert client.head_object(Bucket=dest, Key="out/a.dcm")["LastModified"] == written
    assert ledger.counts(spec.batch)["done"] == 2  # one object, two finishes


def test_a_worker_archives_the_batch_it_runs(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    client = s3_server.client()
    for index in range(9):
        client.put_object(Bucket=source, Key=f"{index}.dcm",
                          Body=to_bytes(make_image(40, 40, seed=index)))  # fmt: skip
    client.put_object(Bucket=source, Key="notes.dcm", Body=b"not DICOM at all" * 8)
    env = {
        **stack_env, "DCMPRESS_QUEUE": f"arch-{uuid.uuid4().hex[:6]}", "DCMPRESS_ARCHIVE": "true",
        "DCMPRESS_ARCHIVE_INTERVAL": "0.5", "DCMPRESS_ARCHIVE_KEEP": "0",
        "DCMPRESS_ARCHIVE_SHARD_SIZE": "4",
    }  # fmt: skip
    batch = f"arch-{uuid.uuid4().hex[:6]}"
    with CeleryWorker({**env, "PYTHONPATH": str(ROOT)}, tmp_path, concurrency=2) as worker:
        proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/out/",
                       "--batch", batch, "--not-dicom", "fail")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        counts = wait_for_batch(ledger, batch, 10)
        deadline = time.monotonic() + 60
        while progress(ledger, batch).archived < counts["done"]:
            assert time.monotonic() < deadline, worker.log_path.read_text()[-3000:]
            time.sleep(0.2)
    assert counts["done"] == 9 and counts["failed"] == 1
    assert ledger.counts(batch) == counts
    # Redis keeps the counters and the one failed record; the done ones are in shards
    assert [(key, record.state) for key, record, _ in ledger.iter_records(batch)] == [
        ("notes.dcm", "failed")
    ]
    listed = client.list_objects_v2(Bucket=dest, Prefix=f"{PREFIX}{batch}/")["Contents"]
    assert len(listed) == progress(ledger, batch).shards >= 3
    rows = list(report_rows(ledger, batch))
    assert sorted(row["key"] for row in rows) == sorted([f"{i}.dcm" for i in range(9)] +
                                                         ["notes.dcm"])  # fmt: skip
    assert "archived in" in worker.log_path.read_text()


def test_redis_memory_of_done_records_before_and_after_archiving(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str]
) -> None:
    """100,000 done records with 38-character keys: Redis bytes per object with its
    record and outbox entry, then once archived; the shards' bytes per object."""
    spec = new_batch(ledger, bucket_pair)
    count = 100_000
    keys = [f"studies/2024/{i:07d}/series-1/IM{i:06d}.dcm" for i in range(count)]
    finished = time.time() - 2000  # (a second later every 100 records)
    before = int(ledger.redis.info("memory")["used_memory"])
    for start in range(0, count, 5_000):
        ledger.transition_many(
            spec.batch,
            (
                (keys[i], varied_record(ledger, i, finished), "")
                for i in range(start, start + 5_000)
            ),
        )
    filled = int(ledger.redis.info("memory")["used_memory"])
    outbox = int(ledger.redis.memory_usage(Keys.outbox(spec.batch)) or 0)
    ledger.mark_listing_done(spec.batch, count)
    started = time.perf_counter()
    run = archive_now(ledger, storage, spec.batch)
    seconds = time.perf_counter() - started
    time.sleep(1)  # (Redis shrinks its emptied key tables in its cron)
    after = int(ledger.redis.info("memory")["used_memory"])
    with ledger.redis.pipeline(transaction=False) as pipe:
        for shard in range(SHARDS):
            pipe.exists(Keys.objects(spec.batch, shard), Keys.messages(spec.batch, shard))
        pipe.exists(Keys.outbox(spec.batch))
        assert sum(pipe.execute()) == 0  # no record, message or outbox entry is left
    kept = sum(
        int(ledger.redis.memory_usage(key) or 0)
        for key in (Keys.batch(spec.batch), Keys.counts(spec.batch))
    )
    place = progress(ledger, spec.batch).at
    assert place is not None
    shard_bytes = sum(
        item["Size"]
        for item in s3_server.client().list_objects_v2(Bucket=place.bucket, Prefix=place.prefix)[
            "Contents"
        ]
    )
    print(
        f"\nredis per done object: {(filled - before) / count:.1f} B with its outbox entry "
        f"({outbox / count:.1f} B); once archived {(after - before) / count:.2f} B (the "
        f"batch's keys {kept} B in all); "
        f"shards {shard_bytes / count:.1f} B per object; {run.shards} shards of 10,000 in "
        f"{seconds:.1f} s ({count / seconds:,.0f} records/s)"
    )
    assert run.archived == count and ledger.counts(spec.batch)["done"] == count
    assert outbox / count <= 50
    assert kept < 4096  # the batch hash and its counters: nothing per object
    assert (after - before) / count < 5  # (what else remains: the key tables' slack)
    assert shard_bytes / count < 100
    assert sum(1 for _ in archived_rows(ledger, storage, spec.batch)) == count
