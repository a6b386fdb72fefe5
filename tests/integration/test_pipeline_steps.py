"""The pipeline and producer in-process against the real Redis and S3 servers.

Failure injection (a fetch that fails, a listing that breaks off, an object changed
mid-flight) uses monkeypatching; everything else is real.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import producer.feeder as feeder_module
from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import SeaweedS3
from producer.feeder import Feeder, ListingCursor, Step
from producer.sources import KeyFilter
from tests.conftest import queued_keys
from tests.support import independent_decode, read, source_pixels
from worker.codec.frames import FRAMES_ABOVE
from worker.codec.options import CompressionOptions
from worker.errors import ClaimHeld, PermanentError, TransientError
from worker.runtime import contract
from worker.runtime.app import create_app
from worker.runtime.breaker import Breaker, Paused, Thresholds
from worker.runtime.contract import BatchSpec, JobMessage, S3Location
from worker.runtime.ledger import Keys, Ledger
from worker.runtime.pipeline import Job, process_object
from worker.runtime.records import Record
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration


def make_job(
    ledger: Ledger,
    storage: Storage,
    spec: BatchSpec,
    key: str,
    etag: str | None = None,
    max_attempts: int = 3,
) -> Job:
    """A pipeline job for ``key`` of ``spec``'s source bucket."""
    ledger.save_batch(spec)
    message = JobMessage(batch=spec.batch, bucket=spec.source.bucket, key=key, etag=etag)
    return Job(message, spec, storage, ledger, "test-worker", 60, max_attempts)


def spec_for(source: str, dest: str | None, **options: Any) -> BatchSpec:
    """A fresh batch spec."""
    return BatchSpec(
        batch=f"t-{uuid.uuid4().hex[:8]}",
        source=S3Location(bucket=source),
        dest=S3Location(bucket=dest, prefix="out/") if dest else None,
        in_place=dest is None,
        options=CompressionOptions(**options),
        created=time.time(),
    )


def test_a_held_claim_makes_the_second_delivery_wait(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str]
) -> None:
    source, dest = bucket_pair
    s3_server.client().put_object(Bucket=source, Key="k.dcm", Body=to_bytes(make_image(40, 40)))
    job = make_job(ledger, storage, spec_for(source, dest), "k.dcm")
    assert ledger.claim(source, "k.dcm", "someone-else", 30)
    with pytest.raises(ClaimHeld):
        process_object(job)
    assert ledger.get_record(job.batch, "k.dcm") is None  # nothing recorded meanwhile
    ledger.release(source, "k.dcm", "someone-else")
    assert process_object(job)["outcome"] == "done"
    assert ledger.claim_owner(source, "k.dcm") is None  # released after the work


def test_a_delivery_calls_the_ledger_once_to_start_and_once_to_end(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    s3_server.client().put_object(Bucket=source, Key="k.dcm", Body=to_bytes(make_image(40, 40)))
    etag = s3_server.client().head_object(Bucket=source, Key="k.dcm")["ETag"]
    job = make_job(ledger, storage, spec_for(source, dest), "k.dcm", etag=etag)
    job.breaker = Breaker(ledger.redis, Thresholds(5, 0.5, 60), queue="q")
    calls: list[str] = []
    real = ledger.redis.execute_command

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger.redis, "execute_command", counted)
    summary = process_object(job)
    monkeypatch.setattr(ledger.redis, "execute_command", real)
    assert summary["outcome"] == "done"
    assert calls == ["EVALSHA", "EVALSHA"], calls  # Ledger.begin, Ledger.finish
    # and those two did all the rest: the record and the counters, stage seconds, the
    # claim given back, the breaker told that storage served the object
    record = ledger.get_record(job.batch, "k.dcm")
    assert record is not None and record.state == "done" and record.attempts == 1
    counts = ledger.counts(job.batch)
    assert counts["done"] == 1 and counts.get("running", 0) == 0
    assert counts["stage:fetch"] > 0 and counts["stage:encode"] > 0
    assert ledger.claim_owner(source, "k.dcm") is None
    assert ledger.redis.llen(Keys.breaker_outcomes("q")) == 1
    # an open breaker stops the next delivery before it claims anything
    ledger.redis.hset(Keys.breaker("q"), mapping={"since": "1", "error": "e", "key": "k"})
    again = make_job(ledger, storage, job.spec, "k.dcm", etag=etag)
    again.breaker = job.breaker
    with pytest.raises(Paused):
        process_object(again)
    assert ledger.claim_owner(source, "k.dcm") is None


def test_a_duplicate_delivery_of_a_finished_object_does_no_work(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    s3_server.client().put_object(Bucket=source, Key="k.dcm", Body=to_bytes(make_image(40, 40)))
    etag = s3_server.client().head_object(Bucket=source, Key="k.dcm")["ETag"]
    job = make_job(ledger, storage, spec_for(source, dest), "k.dcm", etag=etag)
    first = process_object(job)

    def no_fetch(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a finished object was fetched again")

    monkeypatch.setattr(storage, "fetch", no_fetch)
    again = process_object(make_job(ledger, storage, job.spec, "k.dcm", etag=etag))
    assert (again["outcome"], again["bytes_out"]) == (first["outcome"], first["bytes_out"])
    assert ledger.counts(job.batch)["done"] == 1


def test_transient_fetch_errors_leave_the_object_queued_for_retry(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    s3_server.client().put_object(Bucket=source, Key="k.dcm", Body=to_bytes(make_image(40, 40)))
    job = make_job(ledger, storage, spec_for(source, dest), "k.dcm")

    def flaky(*args: Any, **kwargs: Any) -> Any:
        raise TransientError("fetch: 503 SlowDown")

    monkeypatch.setattr(storage, "fetch", flaky)
    with pytest.raises(TransientError):
        process_object(job)
    record = ledger.get_record(job.batch, "k.dcm")
    assert record is not None and record.state == "queued" and record.lost == 0
    assert ledger.claim_owner(source, "k.dcm") is None


@pytest.mark.parametrize("failed_output", ["copy", "none"])
def test_an_object_whose_worker_keeps_dying_is_recorded_worker_lost(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    failed_output: str,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    body = to_bytes(make_image(40, 40))
    s3_server.client().put_object(Bucket=source, Key="k.dcm", Body=body)
    spec = spec_for(source, dest, failed_output=failed_output)
    attempts = WorkerSettings().max_attempts  # the default users get (3)
    job = make_job(ledger, storage, spec, "k.dcm", max_attempts=attempts)
    # every earlier delivery started and never finished (their workers were killed): the
    # record says so for all but the last, whose claim lapsed without a record
    dead = Record(state="running", attempts=attempts, lost=attempts - 1).stamped()
    ledger.transition(job.batch, "k.dcm", dead)
    result = process_object(job)
    assert (result["outcome"], result["code"]) == ("failed", "worker_lost")
    counts = ledger.counts(job.batch)
    assert (counts.get("running"), counts.get("failed")) == (0, 1)
    # by default the source is copied unchanged (the archive stays complete), and the
    # record, the report's row and the copy's metadata say so
    record = ledger.get_record(job.batch, "k.dcm")
    assert record is not None
    client = s3_server.client()
    if failed_output == "none":
        assert not record.copied and record.bytes_out == 0
        assert "Contents" not in client.list_objects_v2(Bucket=dest)
        return
    assert record.copied and record.bytes_out == len(body) == record.bytes_in
    copied = client.get_object(Bucket=dest, Key="out/k.dcm")
    assert copied["Body"].read() == body
    assert copied["Metadata"][contract.META_OUTCOME] == "failed/worker_lost"
    assert copied["Metadata"][contract.META_COPIED] == "1"
    assert ledger.get_message(job.batch, "k.dcm").endswith("; copied unchanged")
    assert result["copied"] is True and result["output"] == f"s3://{dest}/out/k.dcm"
    # a delivery of the same object afterwards is a duplicate: nothing copied again
    again = process_object(make_job(ledger, storage, spec, "k.dcm", max_attempts=attempts))
    assert again.get("duplicate") is True


def test_a_lost_worker_s_object_whose_copy_storage_refuses_is_still_recorded(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The copy of a failed object is made after the failure is known; if storage refuses
    it then, the object still ends failed with its own code, says it was not copied and
    why, and has no output (`dcmpress retry` tries it again)."""
    source, dest = bucket_pair
    s3_server.client().put_object(Bucket=source, Key="k.dcm", Body=to_bytes(make_image(40, 40)))
    attempts = WorkerSettings().max_attempts
    job = make_job(ledger, storage, spec_for(source, dest), "k.dcm", max_attempts=attempts)
    dead = Record(state="running", attempts=attempts, lost=attempts - 1).stamped()
    ledger.transition(job.batch, "k.dcm", dead)

    def refused(*args: Any, **kwargs: Any) -> None:
        raise PermanentError("access_denied", "copy: AccessDenied (injected)")

    monkeypatch.setattr(storage, "copy", refused)
    result = process_object(job)
    assert (result["outcome"], result["code"], result["copied"]) == ("failed", "worker_lost", False)
    record = ledger.get_record(job.batch, "k.dcm")
    assert record is not None and record.terminal and record.bytes_out == 0
    assert "not copied: copy: AccessDenied (injected)" in ledger.get_message(job.batch, "k.dcm")
    assert ledger.counts(job.batch).get("running") == 0
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=dest)


def test_missing_source_is_a_permanent_failure(
    ledger: Ledger, storage: Storage, bucket_pair: tuple[str, str]
) -> None:
    source, dest = bucket_pair
    result = process_object(make_job(ledger, storage, spec_for(source, dest), "gone.dcm"))
    assert (result["outcome"], result["code"]) == ("failed", "source_missing")
    # a storage failure has nothing to copy: no output, whatever failed_output says
    assert result["copied"] is False and result.get("output") is None


def test_in_place_replaces_the_source_only_if_unchanged(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    source, _ = bucket_pair
    client = s3_server.client()
    ds = make_image(64, 64, bits_stored=12)
    client.put_object(Bucket=source, Key="a.dcm", Body=to_bytes(ds))
    spec = spec_for(source, None)
    result = process_object(make_job(ledger, storage, spec, "a.dcm"))
    assert result["outcome"] == "done"
    replaced = client.get_object(Bucket=source, Key="a.dcm")["Body"].read()
    np.testing.assert_array_equal(independent_decode(replaced), source_pixels(ds))

    # someone rewrites the source between our fetch and our write: we must not clobber it
    client.put_object(Bucket=source, Key="b.dcm", Body=to_bytes(ds))
    real_process = __import__("worker.runtime.pipeline", fromlist=["process"]).process

    def concurrent_writer(data: bytes, options: CompressionOptions, **kwargs: Any) -> Any:
        client.put_object(Bucket=source, Key="b.dcm", Body=to_bytes(make_image(64, 64, seed=9)))
        return real_process(data, options, **kwargs)

    monkeypatch.setattr("worker.runtime.pipeline.process", concurrent_writer)
    changed = process_object(make_job(ledger, storage, spec, "b.dcm"))
    assert (changed["outcome"], changed["code"]) == ("failed", "source_changed")
    kept = read(client.get_object(Bucket=source, Key="b.dcm")["Body"].read())
    assert not kept.file_meta.TransferSyntaxUID.is_compressed  # the other writer's object


@pytest.mark.parametrize("client", ["obstore", "boto3"])
@pytest.mark.parametrize(
    ("frames", "from_file"),
    [(6, False), (FRAMES_ABOVE // (1024 * 1024 * 2) + 2, True)],
    ids=["whole object", "frame by frame"],
)
def test_large_objects_use_a_spool_file_and_multipart_upload(
    frames: int, from_file: bool, client: str,
    ledger: Ledger, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """12 MiB of pixels are downloaded to a file and read whole from it; above
    FRAMES_ABOVE, a group of frames at a time, and the output is uploaded from its
    temporary file - by either S3 client."""
    monkeypatch.setenv("DCMPRESS_MULTIPART_THRESHOLD_MB", "5")
    monkeypatch.setenv("DCMPRESS_S3_CLIENT", client)
    storage = Storage(WorkerSettings(), serves_objects=True)
    source, dest = bucket_pair
    ds = make_image(1024, 1024, frames=frames, bits_stored=12)
    data = to_bytes(ds)
    s3_server.client().put_object(Bucket=source, Key="big.dcm", Body=data)
    uploads: list[str] = []
    real_fetch = storage.fetch

    def fetch_spy(*args: Any, **kwargs: Any) -> Any:
        fetched = real_fetch(*args, **kwargs)
        assert not isinstance(fetched.data, bytes)  # spooled to a file
        return fetched

    monkeypatch.setattr(storage, "fetch", fetch_spy)
    if storage.lean is not None:
        real_put = storage.lean.put

        def put_spy(*args: Any, **kwargs: Any) -> Any:
            uploads.append(args[1])
            assert isinstance(args[2], bytes) is not from_file
            return real_put(*args, **kwargs)

        monkeypatch.setattr(storage.lean, "put", put_spy)
    else:
        real_upload = storage.client.upload_fileobj

        def spy(*args: Any, **kwargs: Any) -> Any:
            uploads.append(args[2])
            assert isinstance(args[0], io.BytesIO) is not from_file
            return real_upload(*args, **kwargs)

        monkeypatch.setattr(storage.client, "upload_fileobj", spy)
    spec = spec_for(source, dest, target=["rle"], min_ratio=0)
    result = process_object(make_job(ledger, storage, spec, "big.dcm"))
    assert result["outcome"] == "done", result
    head = s3_server.client().head_object(Bucket=dest, Key="out/big.dcm")
    assert result["bytes_out"] > 5 * 1024 * 1024
    assert uploads == ["out/big.dcm"]
    assert "-" in head["ETag"]  # a multipart ETag
    output = s3_server.client().get_object(Bucket=dest, Key="out/big.dcm")["Body"].read()
    np.testing.assert_array_equal(independent_decode(output), source_pixels(ds))


def _pages_then_break(pages: Iterator[Any], after: int) -> Iterator[Any]:
    for index, page in enumerate(pages):
        if index == after:
            raise TransientError("list: connection reset (injected)")
        yield page


def test_interrupted_enqueue_resumes_after_its_checkpoint(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    settings: WorkerSettings, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    client = s3_server.client()
    keys = [f"k/{index:03d}.dcm" for index in range(25)]
    for key in keys:
        client.put_object(Bucket=source, Key=key, Body=b"x" * 10)
    spec = spec_for(source, dest)
    ledger.save_batch(spec)
    queue = f"resume-{uuid.uuid4().hex[:6]}"
    app = create_app(settings)
    real_pages = storage.list_pages
    monkeypatch.setattr(
        storage, "list_pages", lambda *a, **k: real_pages(*a, **{**k, "page_size": 10})
    )
    monkeypatch.setattr(feeder_module, "CHUNK", 10)  # one page per step
    cursor = ListingCursor(storage, spec.source, "", KeyFilter())
    cursor._pages = _pages_then_break(cursor._pages, 2)
    first = Feeder(app, ledger, storage, spec, queue, 1000, cursor)
    with pytest.raises(TransientError):
        first.run(lambda step: False)
    info = ledger.batch_info(spec.batch)
    assert info["checkpoint"] == keys[19] and "listing_done" not in info
    resumed = ListingCursor(storage, spec.source, info["checkpoint"], KeyFilter())
    second = Feeder(app, ledger, storage, spec, queue, 1000, resumed, resuming=True)
    assert second.run(lambda step: False) is Step.FINISHED
    assert second.report.enqueued == 5
    assert sorted(queued_keys(ledger, queue)) == keys  # every key exactly once
    info = ledger.batch_info(spec.batch)
    assert "listing_done" in info and info["enqueued"] == "25"
    assert ledger.counts(spec.batch)["queued"] == 25


def test_enqueue_filters_and_never_takes_our_own_outputs(
    storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str]
) -> None:
    source, _ = bucket_pair
    client = s3_server.client()
    for key in ("a.dcm", "b.DCM", "c.txt", "out/a.dcm", "folder/"):
        client.put_object(Bucket=source, Key=key, Body=b"x" * 20)
    client.put_object(Bucket=source, Key="tiny.dcm", Body=b"x")
    key_filter = KeyFilter(suffixes=(".dcm",), exclude_prefixes=("out/",), min_size=2)
    cursor = ListingCursor(storage, S3Location(bucket=source), "", key_filter)
    refs = cursor.peek(100)
    assert cursor.exhausted and [ref.key for ref in refs] == ["a.dcm", "b.DCM"]
    assert key_filter.rejected == {
        "suffix": 1, "excluded prefix": 1, "folder marker": 1, "size": 1,
    }  # fmt: skip


@pytest.mark.parametrize("lossy", [False, True], ids=["lossless", "lossy"])
def test_a_finished_record_takes_at_most_130_bytes_of_redis(ledger: Ledger, lossy: bool) -> None:
    """100,000 finished objects, keys like real archives' (~40 characters), the server's
    default settings: every shard stays in the compact encoding (listpack; ziplist before
    Redis 7), which one record over 64 bytes would undo for its whole shard."""
    batch = f"mem-{uuid.uuid4().hex[:6]}"
    count = 100_000
    before = int(ledger.redis.info("memory")["used_memory"])
    quality = {"max_error": 37, "psnr": 48.27} if lossy else {}
    record = Record(
        state="done", code="compressed", bytes_in=526_336, bytes_out=211_002, attempts=1,
        target="j2k-lossy" if lossy else "jpeg-ls", plugin="pylibjpeg" if lossy else "pyjpegls",
        millis=412, worker=ledger.register_worker("celery@node-7/12345"), etag="9a0364b9e99b",
        updated=int(time.time()), modality="CT", **quality,
    )  # fmt: skip
    chunk = 5_000
    for start in range(0, count, chunk):
        ledger.transition_many(
            batch,
            ((f"studies/2024/{i:07d}/series-1/IM{i:06d}.dcm", record, "") for i in
             range(start, start + chunk)),
        )  # fmt: skip
    # (each key also waits on the batch's outbox until the archiver takes its record
    # out of Redis: tests/integration/test_archive.py measures both)
    outbox = int(ledger.redis.memory_usage(Keys.outbox(batch)) or 0)
    used = int(ledger.redis.info("memory")["used_memory"]) - before - outbox
    per_object = used / count
    print(f"ledger: {per_object:.1f} bytes per finished object (key 38 chars, {record.encode()!r})")
    assert ledger.counts(batch)["done"] == count
    encodings = {
        ledger.redis.object("encoding", Keys.objects(batch, n)) for n in range(0, 8192, 97)
    }
    assert encodings <= {b"listpack", b"ziplist"}, encodings
    assert per_object <= 130
