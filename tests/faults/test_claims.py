"""Claims: who may work on an object, decided without trusting host names or PIDs.

The pipeline runs in-process against the real Redis and S3 servers; the other
"worker" is simulated by writing its claim into Redis, as a real one would.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import SeaweedS3
from tests.integration.test_pipeline_steps import make_job, spec_for
from worker.errors import ClaimHeld, ClaimLost
from worker.runtime import pipeline
from worker.runtime.ledger import Keys, Ledger
from worker.runtime.pipeline import WORKER_BOOT, process_object
from worker.runtime.records import Record
from worker.runtime.storage import Storage

pytestmark = pytest.mark.integration
DEAD_PID = 2**22 + 17  # above any pid_max: no process has it


def _upload(s3_server: SeaweedS3, bucket: str, key: str = "k.dcm") -> None:
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=to_bytes(make_image(48, 48)))


def test_a_claim_of_another_worker_is_never_taken_over_early(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str]
) -> None:
    # another container with the same host name, whose PIDs this one cannot see
    source, dest = bucket_pair
    _upload(s3_server, source)
    job = make_job(ledger, storage, spec_for(source, dest), "k.dcm")
    assert ledger.claim(source, "k.dcm", f"0ther0ther00:{DEAD_PID}:abcd1234", 60)
    with pytest.raises(ClaimHeld):
        process_object(job)
    assert ledger.get_record(job.batch, "k.dcm") is None


def test_a_claim_of_a_dead_pool_process_of_this_worker_is_taken_at_once(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str]
) -> None:
    source, dest = bucket_pair
    _upload(s3_server, source)
    job = make_job(ledger, storage, spec_for(source, dest), "k.dcm")
    assert ledger.claim(source, "k.dcm", f"{WORKER_BOOT}:{DEAD_PID}:abcd1234", 60)
    assert process_object(job)["outcome"] == "done"


def _slow_engine(monkeypatch: pytest.MonkeyPatch, seconds: float) -> threading.Event:
    """Make the engine take ``seconds``; the event is set once it has started."""
    started = threading.Event()
    real = pipeline.process

    def slow(data: bytes, options: Any, **kwargs: Any) -> Any:
        started.set()
        time.sleep(seconds)
        return real(data, options, **kwargs)

    monkeypatch.setattr(pipeline, "process", slow)
    return started


def test_a_delivery_whose_claim_was_taken_over_stops_without_writing(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    _upload(s3_server, source)
    job = make_job(ledger, storage, spec_for(source, dest), "k.dcm")
    job.claim_ttl = 4  # a beat every second
    started = _slow_engine(monkeypatch, 3.0)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            process_object(job)
        except ClaimLost as exc:
            outcome["lost"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    assert started.wait(10)
    # the claim lapsed and another delivery took it meanwhile
    ledger.redis.set(Keys.claim(source, "k.dcm"), f"0ther0ther00:1:{uuid.uuid4().hex[:8]}")
    thread.join(30)
    assert "lost" in outcome
    listed = s3_server.client().list_objects_v2(Bucket=dest).get("Contents", [])
    assert listed == []  # nothing written by the delivery that lost the object
    record = ledger.get_record(job.batch, "k.dcm")
    assert record is not None and record.state == "running"  # the other delivery's to end


def test_a_lapsed_claim_nobody_took_is_taken_back(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    _upload(s3_server, source)
    job = make_job(ledger, storage, spec_for(source, dest), "k.dcm")
    job.claim_ttl = 4
    started = _slow_engine(monkeypatch, 3.0)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(process_object(job)))
    thread.start()
    assert started.wait(10)
    ledger.redis.delete(Keys.claim(source, "k.dcm"))  # lapsed (a starved beat)
    thread.join(30)
    assert result.get("outcome") == "done"


def test_sending_again_never_queues_a_running_object_twice(
    ledger: Ledger, bucket_pair: tuple[str, str]
) -> None:
    batch = f"q-{uuid.uuid4().hex[:6]}"
    ledger.transition(batch, "run.dcm", Record(state="running", attempts=1, lost=1,
                                               etag="e1").stamped())  # fmt: skip
    ledger.transition(batch, "wait.dcm", Record(state="queued", attempts=2, lost=1,
                                                etag="e2").stamped())  # fmt: skip
    verdicts = ledger.queue_many(batch, [("run.dcm", "e1"), ("wait.dcm", "e2")], force=False,
                                 resend_queued=True)  # fmt: skip
    assert verdicts == [2, 0]  # the running one stays with its delivery
    waiting = ledger.get_record(batch, "wait.dcm")
    assert waiting is not None and waiting.lost == 1  # its deaths still count
    ledger.transition(
        batch,
        "wait.dcm",
        Record(state="failed", code="worker_lost", attempts=3, lost=3, etag="e2").stamped(),
    )
    assert ledger.queue_many(batch, [("wait.dcm", "e2")], force=True, resend_queued=False) == [0]
    retried = ledger.get_record(batch, "wait.dcm")
    assert retried is not None and (retried.state, retried.lost) == ("queued", 0)


def test_a_claim_left_by_this_process_when_redis_was_away_is_given_back(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import redis

    source, dest = bucket_pair
    _upload(s3_server, source, "a.dcm")
    _upload(s3_server, source, "b.dcm")
    spec = spec_for(source, dest)
    real_release, real_finish = Ledger.release, Ledger.finish

    def away(self: Ledger, *args: object, **kwargs: object) -> None:
        raise redis.ConnectionError("Error 111 connecting (injected)")

    # Redis goes away as the delivery ends: neither its outcome (which gives the claim
    # back with it) nor the release after it reaches Redis
    monkeypatch.setattr(Ledger, "release", away)
    monkeypatch.setattr(Ledger, "finish", away)
    with pytest.raises(redis.ConnectionError):
        process_object(make_job(ledger, storage, spec, "a.dcm"))
    left = ledger.claim_owner(source, "a.dcm")
    assert left is not None and left.startswith(f"{WORKER_BOOT}:")  # still claimed
    monkeypatch.setattr(Ledger, "release", real_release)
    monkeypatch.setattr(Ledger, "finish", real_finish)
    # the next delivery in this process gives it back first
    process_object(make_job(ledger, storage, spec, "b.dcm"))
    assert ledger.claim_owner(source, "a.dcm") is None
    # and a claim of an ended delivery of this very process is never waited for
    assert ledger.claim(source, "a.dcm", left, 60)
    again = make_job(ledger, storage, spec, "a.dcm")
    assert process_object(again)["outcome"] == "done"
