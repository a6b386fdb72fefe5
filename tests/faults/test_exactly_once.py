"""Exactly-once effects: an output is written once per source ETag and options.

Faults come from the proxy between Storage and the real S3 server (a write stored but
its answer lost, a body cut short) and from a ledger that lost its records (Redis
restarted empty); the proxy's log counts what the server really stored.
"""

from __future__ import annotations

from typing import Any

import boto3
import numpy as np
import pytest
import redis
from botocore.config import Config
from botocore.exceptions import ClientError

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import SeaweedS3
from tests.faults.proxy import FaultProxy, first_of_each
from tests.integration.test_pipeline_steps import make_job, spec_for
from tests.support import independent_decode, source_pixels
from worker.errors import TransientError
from worker.runtime import contract
from worker.runtime.contract import JobMessage
from worker.runtime.ledger import Ledger
from worker.runtime.pipeline import Job, process_object
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration


@pytest.fixture(params=["obstore", "boto3"])
def proxied(
    proxy: FaultProxy, settings: WorkerSettings, monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Storage:  # fmt: skip
    """A Storage whose every request goes through ``proxy``, with each S3 client of
    the data path (every guarantee here holds for both)."""
    monkeypatch.setenv("DCMPRESS_S3_ENDPOINT_URL", proxy.endpoint_url)
    monkeypatch.setenv("DCMPRESS_S3_CLIENT", request.param)
    return Storage(WorkerSettings(), serves_objects=True)


def _put_source(s3_server: SeaweedS3, bucket: str, key: str, seed: int = 0) -> tuple[Any, str]:
    ds = make_image(64, 64, bits_stored=12, seed=seed)
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key=key, Body=to_bytes(ds))
    return ds, str(client.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')


def test_botocore_alone_stores_a_write_twice_when_its_answer_is_lost(
    proxy: FaultProxy, s3_server: SeaweedS3, bucket_pair: tuple[str, str]
) -> None:
    # the fault is real: a plain client (botocore's own retries) writes twice
    proxy.rule = first_of_each("reset_after", "PUT")
    client = boto3.session.Session().client(
        "s3", endpoint_url=proxy.endpoint_url, region_name=s3_server.region,
        aws_access_key_id=s3_server.access_key, aws_secret_access_key=s3_server.secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}),
    )  # fmt: skip
    client.put_object(Bucket=bucket_pair[1], Key="plain.dcm", Body=b"x" * 1000)
    assert proxy.stored_writes(f"/{bucket_pair[1]}/plain.dcm") == 2


def test_a_write_whose_answer_was_lost_is_not_made_again(
    proxy: FaultProxy, proxied: Storage, bucket_pair: tuple[str, str]
) -> None:
    _, dest = bucket_pair
    proxy.rule = first_of_each("reset_after", "PUT")
    proxied.put(dest, "out.dcm", b"x" * 1000, {contract.META_MARKER: "1"})
    assert proxy.stored_writes(f"/{dest}/out.dcm") == 1
    # a copy (PUT with x-amz-copy-source) likewise
    proxied.copy(dest, "out.dcm", None, dest, "copy.dcm", {contract.META_MARKER: "1"})
    assert proxy.stored_writes(f"/{dest}/copy.dcm") == 1


def test_a_write_that_never_arrived_is_made_again(
    proxy: FaultProxy, proxied: Storage, bucket_pair: tuple[str, str]
) -> None:
    _, dest = bucket_pair
    proxy.rule = first_of_each("reset_before", "PUT")
    proxied.put(dest, "out.dcm", b"y" * 1000, {contract.META_MARKER: "1"})
    assert proxy.stored_writes(f"/{dest}/out.dcm") == 1
    assert [e.fault for e in proxy.requests("PUT", "out.dcm")] == ["reset_before", "pass"]


def test_every_write_lost_ends_transient_not_stored_twice(
    proxy: FaultProxy, proxied: Storage, bucket_pair: tuple[str, str]
) -> None:
    _, dest = bucket_pair
    proxy.rule = first_of_each("reset_before", "PUT", times=1000)
    with pytest.raises(TransientError):
        proxied.put(dest, "never.dcm", b"z" * 100, {contract.META_MARKER: "1"})
    attempts = WorkerSettings.model_fields["s3_max_attempts"].default
    assert len(proxy.requests("PUT", "never.dcm")) == attempts


def test_a_lost_answer_that_cannot_be_checked_is_not_written_again(
    proxy: FaultProxy, proxied: Storage, bucket_pair: tuple[str, str]
) -> None:
    # the write is stored, its answer lost, and every look at the object fails: writing
    # again could store it twice, so the task retries instead (and its retry looks first)
    _, dest = bucket_pair
    put_lost = first_of_each("reset_after", "PUT")
    proxy.rule = lambda request: "reset_before" if request.method == "HEAD" else put_lost(request)
    with pytest.raises(TransientError, match="cannot be checked"):
        proxied.put(dest, "unknown.dcm", b"u" * 100, {contract.META_MARKER: "1"})
    assert proxy.stored_writes(f"/{dest}/unknown.dcm") == 1


def test_in_place_write_whose_answer_was_lost_is_done_not_source_changed(
    proxy: FaultProxy, proxied: Storage, ledger: Ledger, s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
) -> None:  # fmt: skip
    source, _ = bucket_pair
    ds, etag = _put_source(s3_server, source, "a.dcm")
    proxy.rule = first_of_each("reset_after", "PUT")  # the If-Match write, stored
    result = process_object(make_job(ledger, proxied, spec_for(source, None), "a.dcm", etag))
    assert (result["outcome"], result["code"]) == ("done", "compressed"), result
    assert proxy.stored_writes(f"/{source}/a.dcm") == 1
    replaced = s3_server.client().get_object(Bucket=source, Key="a.dcm")["Body"].read()
    np.testing.assert_array_equal(independent_decode(replaced), source_pixels(ds))


def test_a_truncated_download_is_retried_never_compressed(
    proxy: FaultProxy, proxied: Storage, ledger: Ledger, s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
) -> None:  # fmt: skip
    source, dest = bucket_pair
    ds, etag = _put_source(s3_server, source, "cut.dcm")
    proxy.rule = first_of_each("truncate", "GET")
    job = make_job(ledger, proxied, spec_for(source, dest), "cut.dcm", etag)
    if proxied.lean is None:
        with pytest.raises(TransientError):  # the task retries it
            process_object(job)
        assert proxy.requests("PUT", "cut.dcm") == []  # nothing was written from half a file
        result = process_object(make_job(ledger, proxied, job.spec, "cut.dcm", etag))
    else:
        # obstore asks for the rest (a ranged GET, for the same ETag) and goes on
        result = process_object(job)
        assert len(proxy.requests("GET", "cut.dcm")) == 2
    assert result["outcome"] == "done"
    output = s3_server.client().get_object(Bucket=dest, Key="out/cut.dcm")["Body"].read()
    np.testing.assert_array_equal(independent_decode(output), source_pixels(ds))


def _forget(ledger: Ledger, job: Job) -> Job:
    """The same job after Redis lost everything (restarted without persistence)."""
    ledger.redis.delete(*ledger.redis.keys(f"dcmpress:batch:{job.batch}*"))
    return make_job(ledger, job.storage, job.spec, job.key, job.message.etag)


def test_a_lost_ledger_finds_the_outputs_and_writes_none_again(
    proxy: FaultProxy, proxied: Storage, ledger: Ledger, s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
) -> None:  # fmt: skip
    source, dest = bucket_pair
    _, etag = _put_source(s3_server, source, "k.dcm")
    job = make_job(ledger, proxied, spec_for(source, dest), "k.dcm", etag)
    first = process_object(job)
    again = process_object(_forget(ledger, job))
    assert (again["outcome"], again["code"]) == ("done", "compressed")
    assert (again["bytes_in"], again["bytes_out"]) == (first["bytes_in"], first["bytes_out"])
    assert "written already" in again["message"]
    assert proxy.requests("GET", "k.dcm") == proxy.requests("GET", "k.dcm")[:1]  # one fetch
    assert proxy.stored_writes(f"/{dest}/out/k.dcm") == 1
    record = ledger.get_record(job.batch, "k.dcm")
    assert record is not None and (record.target, record.plugin) == (first["target"], "pyjpegls")
    counts = ledger.counts(job.batch)
    assert (counts.get("done"), counts.get("bytes_out")) == (1, first["bytes_out"])


def test_a_copied_object_is_recognised_too(
    proxy: FaultProxy, proxied: Storage, ledger: Ledger, s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
) -> None:  # fmt: skip
    source, dest = bucket_pair
    s3_server.client().put_object(Bucket=source, Key="notdicom.txt", Body=b"hello " * 100)
    etag = s3_server.client().head_object(Bucket=source, Key="notdicom.txt")["ETag"]
    job = make_job(ledger, proxied, spec_for(source, dest), "notdicom.txt", etag)
    first = process_object(job)
    assert first["outcome"] == "skipped"
    again = process_object(_forget(ledger, job))
    assert (again["outcome"], again["code"]) == ("skipped", first["code"])
    assert proxy.stored_writes(f"/{dest}/out/notdicom.txt") == 1


def test_without_an_etag_in_the_message_the_output_is_still_recognised(
    proxy: FaultProxy, proxied: Storage, ledger: Ledger, s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
) -> None:  # fmt: skip
    source, dest = bucket_pair
    _put_source(s3_server, source, "k.dcm")
    job = make_job(ledger, proxied, spec_for(source, dest), "k.dcm")  # no ETag known
    process_object(job)
    again = process_object(_forget(ledger, job))
    assert "written already" in again["message"]
    assert len(proxy.requests("GET", "k.dcm")) == 2  # fetched to learn its ETag
    assert proxy.stored_writes(f"/{dest}/out/k.dcm") == 1


def test_other_options_a_changed_source_or_force_write_again(
    proxy: FaultProxy, proxied: Storage, ledger: Ledger, s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
) -> None:  # fmt: skip
    source, dest = bucket_pair
    _, etag = _put_source(s3_server, source, "k.dcm")
    spec = spec_for(source, dest)
    process_object(make_job(ledger, proxied, spec, "k.dcm", etag))
    path = f"/{dest}/out/k.dcm"
    # other options (a new batch): a different output
    other = spec_for(source, dest, target=["rle"])
    assert process_object(make_job(ledger, proxied, other, "k.dcm", etag))["target"] == "rle"
    assert proxy.stored_writes(path) == 2
    # `enqueue --force`: written again although the same output exists
    forced = JobMessage(batch=spec.batch, bucket=source, key="k.dcm", etag=etag, rewrite=True)
    ledger.redis.delete(*ledger.redis.keys(f"dcmpress:batch:{spec.batch}:obj:*"))
    process_object(Job(forced, spec, proxied, ledger, "test-worker", 60, 3))
    assert proxy.stored_writes(path) == 3
    # the source changed: a new output
    _, new_etag = _put_source(s3_server, source, "k.dcm", seed=5)
    third = spec_for(source, dest)
    assert process_object(make_job(ledger, proxied, third, "k.dcm", new_etag))["outcome"] == "done"
    assert proxy.stored_writes(path) == 4


def test_in_place_output_whose_record_was_lost_is_recorded_with_its_real_outcome(
    proxied: Storage, ledger: Ledger, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    source, _ = bucket_pair
    ds, etag = _put_source(s3_server, source, "a.dcm")
    job = make_job(ledger, proxied, spec_for(source, None), "a.dcm", etag)
    real_finish = ledger.finish

    def redis_gone_at_the_final_record(
        batch: str, key: str, record: Any, *args: Any, **kwargs: Any
    ) -> Any:
        if record.state == "done":
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1 (injected)")
        return real_finish(batch, key, record, *args, **kwargs)

    # (the delivery's end writes the final record: Ledger.finish)
    monkeypatch.setattr(ledger, "finish", redis_gone_at_the_final_record)
    with pytest.raises(redis.ConnectionError):  # the task retries it
        process_object(job)
    monkeypatch.setattr(ledger, "finish", real_finish)
    size_in = len(to_bytes(ds))  # the uploaded object's (its UIDs are random, so its size)
    again = process_object(make_job(ledger, proxied, job.spec, "a.dcm", etag))
    assert (again["outcome"], again["code"]) == ("done", "compressed"), again  # not own_output
    assert again["bytes_in"] == size_in and 0 < again["bytes_out"] < size_in
    # an object some other in-place run compressed is still not taken for ours
    other = make_job(ledger, proxied, spec_for(source, None), "a.dcm", etag="0" * 32)
    assert process_object(other)["code"] == "own_output"


def test_a_destination_it_may_not_read_is_written_all_the_same(
    proxied: Storage, ledger: Ledger, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    _, etag = _put_source(s3_server, source, "k.dcm")

    def forbidden(**kwargs: Any) -> Any:
        if kwargs["Bucket"] == dest:  # a write-only role on the destination
            raise ClientError(
                {"Error": {"Code": "403", "Message": "Forbidden"},
                 "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadObject",
            )  # fmt: skip
        raise AssertionError("only the destination is looked at")

    monkeypatch.setattr(proxied.client, "head_object", forbidden)
    result = process_object(make_job(ledger, proxied, spec_for(source, dest), "k.dcm", etag))
    assert result["outcome"] == "done"


def test_every_output_carries_what_recognises_it(
    storage: Storage, ledger: Ledger, s3_server: SeaweedS3, bucket_pair: tuple[str, str]
) -> None:
    source, dest = bucket_pair
    _, etag = _put_source(s3_server, source, "k.dcm")
    spec = spec_for(source, dest)
    process_object(make_job(ledger, storage, spec, "k.dcm", etag))
    meta = s3_server.client().head_object(Bucket=dest, Key="out/k.dcm")["Metadata"]
    assert meta[contract.META_SOURCE_ETAG] == etag
    assert meta[contract.META_OPTIONS] == contract.options_digest(spec.options)
    assert meta[contract.META_CODEC] == "jpeg-ls/pyjpegls"
    assert meta[contract.META_MODALITY] == "CT"
    assert len(meta[contract.META_WRITE_ID]) == 32
    assert meta[contract.META_OUTCOME] == "done/compressed"
