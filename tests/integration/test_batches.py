"""One batch rule for every entry point: a batch is created, resumed, or on a conflict
refused (`enqueue`, `demo`) or forked (`listen`); its resume point is read where it is
written (producer/batches.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dcmpress.stack.demo import DEMO_BATCH, open_demo_batch
from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import RedisServer, SeaweedS3
from producer.batches import (
    BatchConflict,
    OnConflict,
    ResumePoint,
    open_batch,
    save_finished,
    save_listing_point,
    save_manifest_point,
)
from producer.listen import EventFilter, EventIntake
from tests.conftest import run_cli
from tests.integration.test_pipeline import enqueue, upload
from worker.codec.options import CompressionOptions
from worker.runtime.app import create_app
from worker.runtime.contract import BatchSpec, S3Location
from worker.runtime.ledger import Ledger
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration

KEYS = ["a/one.dcm", "b/two.dcm"]


def _spec(batch: str, **changes: Any) -> BatchSpec:
    fields: dict[str, Any] = {
        "batch": batch, "source": S3Location(bucket="src"), "dest": S3Location(bucket="dst"),
        "options": CompressionOptions(target=["jpeg-ls"]),
    }  # fmt: skip
    return BatchSpec(**{**fields, **changes})


def _upload(s3: SeaweedS3, bucket: str) -> None:
    upload(s3, bucket, {key: to_bytes(make_image(32, 32, seed=i)) for i, key in enumerate(KEYS)})


@pytest.fixture
def own_queue(stack_env: dict[str, str]) -> dict[str, str]:
    """The test servers' environment with a queue no worker consumes: jobs stay queued."""
    return {**stack_env, "DCMPRESS_QUEUE": f"batches-{uuid.uuid4().hex[:6]}"}


# -- the rule ----------------------------------------------------------------------------


def test_a_new_id_is_created_and_the_same_job_again_resumes_it(ledger: Ledger) -> None:
    batch = f"rule-{uuid.uuid4().hex[:6]}"
    first = open_batch(ledger, _spec(batch), OnConflict.REFUSE)
    assert first.created and first.spec.created > 0 and first.resume == ResumePoint()
    again = open_batch(ledger, _spec(batch), OnConflict.REFUSE)
    assert not again.created and again.spec == first.spec  # the stored spec, its time too
    assert again.resume == ResumePoint(interrupted=True)  # nothing enqueued yet


@pytest.mark.parametrize(
    "change",
    [{"source": S3Location(bucket="other")}, {"dest": S3Location(bucket="dst", prefix="x/")},
     {"options": CompressionOptions(target=["rle"])}, {"policy": '[[rule]]\nname = "d"\n'}],
    ids=["source", "dest", "options", "policy"],
)  # fmt: skip
def test_another_job_under_the_id_is_refused_or_forked(
    ledger: Ledger, change: dict[str, Any]
) -> None:
    batch = f"rule-{uuid.uuid4().hex[:6]}"
    stored = open_batch(ledger, _spec(batch), OnConflict.REFUSE).spec
    with pytest.raises(BatchConflict, match="other source/dest/options/policy"):
        open_batch(ledger, _spec(batch, **change), OnConflict.REFUSE)
    assert ledger.get_batch(batch) == stored  # untouched
    fork = open_batch(ledger, _spec(batch, **change), OnConflict.FORK)
    assert fork.created and fork.forked_from == batch
    assert fork.spec.batch == f"{batch}-{_spec(batch, **change).digest()[:8]}"
    again = open_batch(ledger, _spec(batch, **change), OnConflict.FORK)
    assert not again.created and again.spec.batch == fork.spec.batch  # the fork resumes
    assert ledger.get_batch(batch) == stored


def test_the_resume_point_is_read_as_it_was_written(ledger: Ledger) -> None:
    listing, manifest = (f"rp-{uuid.uuid4().hex[:6]}" for _ in range(2))
    for batch in (listing, manifest):
        open_batch(ledger, _spec(batch), OnConflict.REFUSE)
    save_listing_point(ledger, listing, "a/one.dcm", 1)
    save_manifest_point(ledger, manifest, 1000, 990)
    assert ResumePoint.read(ledger, listing) == ResumePoint(True, after_key="a/one.dcm")
    assert ResumePoint.read(ledger, manifest) == ResumePoint(True, after_entries=1000)
    # a listing into a manifest's batch starts from the first key, not after "manifest:1000"
    assert open_batch(ledger, _spec(manifest), OnConflict.REFUSE).resume.after_key == ""
    save_finished(ledger, listing, 2)
    assert open_batch(ledger, _spec(listing), OnConflict.REFUSE).resume == ResumePoint()


# -- `dcmpress enqueue` from a listing: refuse -----------------------------------------


def test_enqueue_refuses_a_named_batch_that_holds_other_options(
    own_queue: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    _upload(s3_server, source)
    batch = f"ls-{uuid.uuid4().hex[:6]}"
    args = (f"s3://{source}/", "--dest", f"s3://{dest}/", "--batch", batch)
    enqueue(own_queue, *args)
    stored = ledger.get_batch(batch)
    refused = run_cli(own_queue, "enqueue", *args, "--target", "rle")
    assert refused.returncode == 2
    assert f"batch {batch!r} exists with other source/dest/options/policy; pick a new --batch" in (
        " ".join(refused.stderr.split())
    )
    assert ledger.get_batch(batch) == stored
    assert ledger.counts(batch)["queued"] == len(KEYS)  # nothing queued again
    report = enqueue(own_queue, *args)  # the same command: the same batch
    assert (report["batch"], report["enqueued"], report["already_queued"]) == (batch, 0, 2)


# -- `dcmpress enqueue --manifest`: refuse, never reuse the stored options silently ----


def test_a_manifest_enqueue_refuses_a_named_batch_that_holds_other_options(
    own_queue: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    _upload(s3_server, source)
    manifest = tmp_path / "keys.txt"
    manifest.write_text("".join(f"s3://{source}/{key}\n" for key in KEYS))
    batch = f"mf-{uuid.uuid4().hex[:6]}"
    args = ("--manifest", str(manifest), "--dest", f"s3://{dest}/", "--batch", batch)
    enqueue(own_queue, *args)  # one bucket: its report is the last line
    stored = ledger.get_batch(batch)
    assert stored is not None and stored.options.target == ["jpeg-ls"]
    refused = run_cli(own_queue, "enqueue", *args, "--target", "rle")
    assert refused.returncode == 2
    assert "other source/dest/options/policy; pick a new --batch" in " ".join(
        refused.stderr.split()
    )
    assert ledger.get_batch(batch) == stored
    assert ledger.counts(batch)["queued"] == len(KEYS)
    again = run_cli(own_queue, "enqueue", *args)  # the same manifest: fed in full already
    assert again.returncode == 0, again.stderr
    assert "this manifest was fed in full already" in " ".join(again.stderr.split())
    assert ledger.counts(batch)["queued"] == len(KEYS)


# -- `dcmpress listen`: fork -----------------------------------------------------------


def test_a_listener_restarted_with_other_options_forks_its_batch_and_resumes_the_fork(
    settings: WorkerSettings, ledger: Ledger, bucket_pair: tuple[str, str]
) -> None:
    source, dest = bucket_pair
    name = f"ev-{uuid.uuid4().hex[:6]}"

    def intake(target: str) -> EventIntake:
        return EventIntake(
            create_app(settings), ledger, Storage(settings), settings.queue,
            S3Location(bucket=dest), False, CompressionOptions(target=[target]), EventFilter(),
            batch_name=name,
        )  # fmt: skip

    first = intake("jpeg-ls")._enqueuer(source).spec
    assert first.batch == f"{name}-{source}"
    assert intake("jpeg-ls")._enqueuer(source).spec == first  # restarted alike: resumed
    forked = intake("rle")._enqueuer(source).spec
    assert forked.batch.startswith(f"{first.batch}-") and forked.options.target == ["rle"]
    assert intake("rle")._enqueuer(source).spec == forked  # restarted again: the same fork
    assert ledger.get_batch(first.batch) == first  # the first job's batch is untouched


# -- `dcmpress demo`: refuse ------------------------------------------------------------


@pytest.fixture
def spare_ledger(redis_server: RedisServer) -> Iterator[Ledger]:
    """A ledger in a Redis database of its own: the demo's batch id is fixed."""
    ledger = Ledger.from_url(redis_server.url.removesuffix("/0") + "/7", 3600)
    ledger.redis.flushdb()
    yield ledger
    ledger.redis.flushdb()


def test_the_demo_batch_is_created_and_refused_when_it_holds_another_job(
    spare_ledger: Ledger,
) -> None:
    created = open_demo_batch(spare_ledger, CompressionOptions(target=["jpeg-ls"]))
    assert created.created and created.spec.batch == DEMO_BATCH
    again = open_demo_batch(spare_ledger, CompressionOptions(target=["jpeg-ls"]))
    assert not again.created and again.spec == created.spec
    with pytest.raises(BatchConflict):
        open_demo_batch(spare_ledger, CompressionOptions(target=["rle"]))
    assert spare_ledger.get_batch(DEMO_BATCH) == created.spec
