"""The newest version of a key wins, and a queued object always has its message.

Against the real Redis: the ledger's check-and-queue script with the broker's queue in
the same atomic step, and the guard that keeps a delivery of an older version from
overwriting the record of a newer one queued while it ran.
"""

from __future__ import annotations

import uuid

import pytest

from producer.enqueue import Enqueuer
from producer.sources import ObjectRef
from tests.conftest import queued_keys
from worker.runtime.app import create_app
from worker.runtime.contract import BatchSpec, S3Location
from worker.runtime.ledger import ALREADY_DONE, ALREADY_QUEUED, QUEUED, Ledger
from worker.runtime.records import Record
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration


def _batch(ledger: Ledger) -> BatchSpec:
    spec = BatchSpec(batch=f"v-{uuid.uuid4().hex[:6]}", source=S3Location(bucket="src"),
                     dest=S3Location(bucket="dst"))  # fmt: skip
    ledger.save_batch(spec)
    return spec


def test_a_new_version_of_a_running_object_is_a_new_job(ledger: Ledger) -> None:
    batch = _batch(ledger).batch
    ledger.transition(batch, "k.dcm", Record(state="running", attempts=1, etag="aaa").stamped())
    assert ledger.queue_many(batch, [("k.dcm", "aaa")], False, False) == [ALREADY_QUEUED]
    assert ledger.queue_many(batch, [("k.dcm", "bbb")], False, False) == [QUEUED]
    record = ledger.get_record(batch, "k.dcm")
    assert record is not None
    assert (record.state, record.etag, record.attempts) == ("queued", "bbb", 0)
    # the delivery of version aaa ends: its record is superseded, not written
    done_a = Record(state="done", code="compressed", bytes_in=10, bytes_out=5, etag="aaa")
    assert not ledger.transition(batch, "k.dcm", done_a.stamped(), guard="aaa")
    record = ledger.get_record(batch, "k.dcm")
    assert record is not None and (record.state, record.etag) == ("queued", "bbb")
    assert ledger.counts(batch).get("queued") == 1 and not ledger.counts(batch).get("done")
    # the delivery of version bbb records it
    done_b = Record(state="done", code="compressed", bytes_in=10, bytes_out=5, etag="bbb")
    assert ledger.transition(batch, "k.dcm", done_b.stamped(), guard="bbb")
    counts = ledger.counts(batch)
    assert (counts.get("queued"), counts.get("done"), counts.get("running")) == (0, 1, 0)
    # then: the same version is a duplicate, another one a new job
    assert ledger.queue_many(batch, [("k.dcm", "bbb")], False, False) == [ALREADY_DONE]
    assert ledger.queue_many(batch, [("k.dcm", "ccc")], False, False) == [QUEUED]


def test_a_guard_stops_only_a_record_queued_for_another_version(ledger: Ledger) -> None:
    batch = _batch(ledger).batch
    ledger.transition(batch, "k.dcm", Record(state="running", attempts=1, etag="aaa").stamped())
    # over a running record (its own), and then a record queued for its own version
    assert ledger.transition(batch, "k.dcm", Record(state="queued", etag="aaa").stamped(),
                             guard="aaa")  # fmt: skip
    assert ledger.transition(batch, "k.dcm", Record(state="failed", code="io_error",
                                                    etag="aaa").stamped(), guard="aaa")  # fmt: skip
    # over a finished record, whatever its version
    assert ledger.transition(batch, "k.dcm", Record(state="failed", code="io_error").stamped(),
                             guard="zzz")  # fmt: skip
    # a delivery without an ETag is superseded by a version queued meanwhile
    assert ledger.queue_many(batch, [("k.dcm", "bbb")], False, False) == [QUEUED]
    assert not ledger.transition(batch, "k.dcm", Record(state="done").stamped(), guard="")


def test_messages_are_pushed_in_the_step_that_queues_them(
    settings: WorkerSettings, ledger: Ledger
) -> None:
    app = create_app(settings)
    ledger = Ledger.from_url(settings.redis_url, 3600)
    spec = _batch(ledger)
    queue = f"versions-{uuid.uuid4().hex[:6]}"
    enqueuer = Enqueuer(app, ledger, spec, queue)
    assert enqueuer.atomic  # the broker is the ledger's Redis
    refs = [ObjectRef("src", f"{n}.dcm", f"e{n}") for n in range(3)]
    assert enqueuer.enqueue(refs, resend_queued=False) == (3, 0, 0)
    assert sorted(queued_keys(ledger, queue)) == ["0.dcm", "1.dcm", "2.dcm"]
    # the same events again: no message; a new version of one: one message
    again = [*refs, ObjectRef("src", "1.dcm", "e1-new")]
    assert enqueuer.enqueue(again, resend_queued=False) == (1, 0, 3)
    assert sorted(queued_keys(ledger, queue)) == ["0.dcm", "1.dcm", "1.dcm", "2.dcm"]


def test_without_a_reply_the_object_is_still_queued_with_its_message(
    settings: WorkerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply of the check-and-queue is lost (a timeout: Redis ran it later): the
    event handled again is a duplicate, and the one message exists."""
    app = create_app(settings)
    ledger = Ledger.from_url(settings.redis_url, 3600)
    spec = _batch(ledger)
    queue = f"versions-{uuid.uuid4().hex[:6]}"
    enqueuer = Enqueuer(app, ledger, spec, queue)
    real = ledger.queue_streamed  # (the atomic way: each call's reply read later)

    def reply_lost(*args: object, **kwargs: object) -> list[int]:
        real(*args, **kwargs)  # type: ignore[arg-type]
        import redis

        raise redis.TimeoutError("Timeout reading from socket (injected)")

    monkeypatch.setattr(ledger, "queue_streamed", reply_lost)
    with pytest.raises(Exception, match="injected"):
        enqueuer.enqueue([ObjectRef("src", "x.dcm", "e")], resend_queued=False)
    monkeypatch.setattr(ledger, "queue_streamed", real)
    assert enqueuer.enqueue([ObjectRef("src", "x.dcm", "e")], resend_queued=False) == (0, 0, 1)
    assert sorted(queued_keys(ledger, queue)) == ["x.dcm"]  # "duplicate" means: its message exists
