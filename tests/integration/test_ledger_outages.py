"""A Redis outage never counts as a dead worker; a dead worker still does.

Each test has a redis-server of its own (its start time is part of the decision), and
the pipeline runs in-process against it and the real S3 server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import worker.runtime.ledger_outages as ledger_outages
from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import RedisServer, SeaweedS3
from worker.runtime.contract import BatchSpec, JobMessage, S3Location
from worker.runtime.ledger import Keys, Ledger
from worker.runtime.pipeline import Job, process_object
from worker.runtime.records import Record
from worker.runtime.storage import Storage

pytestmark = pytest.mark.integration


@pytest.fixture
def own_ledger(tmp_path: Path) -> Iterator[tuple[RedisServer, Ledger]]:
    """A fresh redis-server and a ledger on it."""
    with RedisServer(tmp_path / "redis") as server:
        ledger = Ledger.from_url(server.url, 86400)
        yield server, ledger
        ledger.redis.close()


def _job(ledger: Ledger, storage: Storage, source: str, dest: str, key: str) -> Job:
    spec = BatchSpec(batch=f"o-{uuid.uuid4().hex[:6]}", source=S3Location(bucket=source),
                     dest=S3Location(bucket=dest), created=time.time())  # fmt: skip
    ledger.save_batch(spec)
    message = JobMessage(batch=spec.batch, bucket=source, key=key)
    return Job(message, spec, storage, ledger, "test-worker", 60, max_attempts=3)


def _left_running(job: Job, at: int) -> None:
    """The record a delivery leaves when it ends without finishing (attempt 1)."""
    job.ledger.transition(job.batch, job.key, Record(state="running", attempts=1, updated=at))


def test_a_record_left_running_before_redis_restarted_costs_no_attempt(
    own_ledger: tuple[RedisServer, Ledger], storage: Storage, s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
) -> None:  # fmt: skip
    _, ledger = own_ledger
    source, dest = bucket_pair
    s3_server.client().put_object(Bucket=source, Key="k.dcm", Body=to_bytes(make_image(40, 40)))
    job = _job(ledger, storage, source, dest, "k.dcm")
    # written before this server started (the AOF brought it back): cut off by the restart
    _left_running(job, int(time.time()) - 30)
    assert process_object(job)["outcome"] == "done"
    record = ledger.get_record(job.batch, "k.dcm")
    assert record is not None and (record.attempts, record.lost) == (2, 0)


def test_a_record_left_running_since_redis_runs_is_a_lost_worker(
    own_ledger: tuple[RedisServer, Ledger], storage: Storage, s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
) -> None:  # fmt: skip
    _, ledger = own_ledger
    source, dest = bucket_pair
    s3_server.client().put_object(Bucket=source, Key="k.dcm", Body=to_bytes(make_image(40, 40)))
    job = _job(ledger, storage, source, dest, "k.dcm")
    time.sleep(1.1)  # a second after the server's start
    _left_running(job, int(time.time()))  # the worker died; Redis was there all along
    assert process_object(job)["outcome"] == "done"
    record = ledger.get_record(job.batch, "k.dcm")
    assert record is not None and (record.attempts, record.lost) == (2, 1)


def test_a_noted_return_of_redis_forgives_what_was_left_running_before_it(
    own_ledger: tuple[RedisServer, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ledger = own_ledger
    time.sleep(1.1)  # records from now on were written since the server's start
    before = Record(state="running", attempts=1, updated=int(time.time()))
    assert not ledger_outages.cut_off_by_an_outage(ledger, before)
    time.sleep(1.1)
    monkeypatch.setattr(ledger_outages, "_away_since", None)
    ledger_outages.note_if_back(ledger)  # this process saw no outage: nothing noted
    assert not ledger.redis.exists(Keys.ledger_back())
    ledger_outages.found_away()  # a call failed: the ledger did not answer
    assert ledger_outages.wait_until_back(ledger, 5)  # it answers: the return is noted
    assert ledger.redis.exists(Keys.ledger_back())
    assert ledger_outages.cut_off_by_an_outage(ledger, before)
    after = Record(state="running", attempts=1, updated=int(time.time()))
    assert not ledger_outages.cut_off_by_an_outage(ledger, after)  # the same second: after


def test_waiting_for_a_ledger_that_stays_away_gives_up_in_time(
    own_ledger: tuple[RedisServer, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ledger = own_ledger
    monkeypatch.setattr(ledger_outages, "_away_since", None)
    server.stop()
    ledger_outages.found_away()
    started = time.monotonic()
    assert not ledger_outages.wait_until_back(ledger, 2)
    assert time.monotonic() - started < 15  # redis-py's own retries included
    server.start()
    ledger_outages.note_if_back(ledger)  # the next delivery notes it
    assert ledger.redis.exists(Keys.ledger_back())
