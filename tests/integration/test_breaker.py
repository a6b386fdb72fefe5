"""The storage breaker's decision and probe, against the real Redis and S3 servers.

It opens when the latest attempts of several distinct objects failed and make most of
the objects tried most recently; never for one object failing again and again, nor
for a few failures among objects going through; and a probe closes it on any answer
of storage.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from dcmpress.stack.services import SeaweedS3, free_port
from worker.errors import TransientError
from worker.runtime.breaker import (
    Breaker,
    Outcome,
    Thresholds,
    probe,
    read_pause,
    storage_is_failing,
)
from worker.runtime.ledger import Keys, Ledger
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration
DEFAULTS = Thresholds(min_objects=5, failure_ratio=0.8, window=60)


@pytest.fixture
def breaker(ledger: Ledger, settings: WorkerSettings) -> Iterator[Breaker]:
    """The breaker with the default thresholds, closed before and after the test."""
    found = Breaker.from_settings(ledger.redis, settings)
    assert found.thresholds == DEFAULTS  # what users get
    found.close()
    yield found
    found.close()


def _fail(breaker: Breaker, objects: int, bucket: str = "b") -> object:
    """A failure of each of ``objects`` distinct objects; the last answer."""
    answer = None
    for index in range(objects):
        answer = breaker.failed(bucket, f"k{index}", f"fetch s3://{bucket}/k{index}: 503")
    return answer


def test_one_object_failing_again_and_again_never_opens_it(breaker: Breaker) -> None:
    for _ in range(30):
        assert breaker.failed("b", "flaky.dcm", "fetch: 503 SlowDown") is None
    assert breaker.pause() is None


def test_the_latest_attempts_of_several_objects_failing_open_it(breaker: Breaker) -> None:
    assert _fail(breaker, 4) is None  # four objects: not yet a pattern
    pause = breaker.failed("b", "k4", "fetch s3://b/k4: 503 ServiceUnavailable")
    assert pause is not None and pause == read_pause(breaker.redis, breaker.queue)
    assert (pause.bucket, pause.key) == ("b", "k4")  # what the probe will ask for
    assert "503 ServiceUnavailable" in pause.error and abs(pause.since - time.time()) < 5
    assert "storage failing since" in pause.describe()
    later = breaker.failed("b", "k9", "another error")
    assert later is not None and later.since == pause.since  # still the first opening


def test_objects_done_just_before_an_outage_outvote_it_only_briefly(breaker: Breaker) -> None:
    for index in range(50):
        breaker.succeeded("b", f"done{index}")
    # the newest ten objects are looked at: 6 failing of 10 is not most of them
    assert _fail(breaker, 6) is None
    assert _fail(breaker, 8) is not None  # 8 of the newest 10


def test_a_few_failures_among_objects_going_through_keep_it_closed(breaker: Breaker) -> None:
    for index in range(40):  # one object in four fails (a flaky network, truncated GETs)
        if index % 4:
            breaker.succeeded("b", f"k{index}")
        else:
            assert breaker.failed("b", f"k{index}", "fetch: IncompleteRead") is None
    assert breaker.pause() is None


def test_an_object_that_went_through_counts_by_its_latest_attempt() -> None:
    now = time.time()
    failed_then_done = [Outcome(now - 5, True, f"k{i}") for i in range(5)]
    failed_then_done.append(Outcome(now - 1, False, "k0"))  # k0 went through after all
    assert not storage_is_failing(failed_then_done, now, DEFAULTS)  # 4 failing of 5
    assert storage_is_failing([*failed_then_done, Outcome(now, True, "k5")], now, DEFAULTS)


def test_failures_older_than_the_window_do_not_count() -> None:
    now = time.time()
    old = [Outcome(now - 61, True, f"old{i}") for i in range(10)]
    recent = [Outcome(now - 1, True, f"new{i}") for i in range(4)]
    assert not storage_is_failing(old + recent, now, DEFAULTS)
    assert storage_is_failing([*old, *recent, Outcome(now, True, "new4")], now, DEFAULTS)


def test_closing_forgets_the_outage_s_failures(breaker: Breaker) -> None:
    assert _fail(breaker, 5) is not None
    breaker.close()
    assert breaker.pause() is None
    assert _fail(breaker, 1) is None  # the four before the close are forgotten


def test_min_objects_zero_turns_it_off(ledger: Ledger) -> None:
    off = Breaker(ledger.redis, Thresholds(min_objects=0, failure_ratio=0.8, window=60))
    off.close()
    for index in range(20):
        assert off.failed("b", f"k{index}", "503") is None
    assert not ledger.redis.exists(Keys.breaker_outcomes(off.queue))


def test_a_probe_closes_it_on_any_answer_of_storage(
    breaker: Breaker, settings: WorkerSettings, s3_server: SeaweedS3, bucket_pair: tuple[str, str]
) -> None:
    source, _ = bucket_pair
    assert _fail(breaker, 5, bucket=source) is not None
    unreachable = Storage(settings.model_copy(update={
        "s3_endpoint_url": f"http://127.0.0.1:{free_port()}", "s3_max_attempts": 1,
    }))  # fmt: skip
    error = probe(breaker, unreachable)
    pause = breaker.pause()
    assert error is not None and pause is not None and pause.probed > 0
    assert "Could not connect" in pause.error  # status shows the latest probe's error
    # the object the probe asks for does not exist: a 404 is an answer, storage works
    assert probe(breaker, Storage(settings)) is None
    assert breaker.pause() is None


def test_the_probe_lock_spaces_the_probes_of_all_workers(breaker: Breaker) -> None:
    breaker.redis.delete(Keys.breaker_probe_lock(breaker.queue))
    assert breaker.probe_lock(1).acquire()  # free: this worker probes
    assert not breaker.probe_lock(1).acquire()  # another worker, within the interval
    time.sleep(1.2)
    assert breaker.probe_lock(1).acquire()  # lapsed: the next probe
    breaker.redis.delete(Keys.breaker_probe_lock(breaker.queue))


def test_one_object_storage_cannot_serve_does_not_keep_it_open(
    breaker: Breaker, settings: WorkerSettings, s3_server: SeaweedS3,
    bucket_pair: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    source, _ = bucket_pair
    assert _fail(breaker, 5, bucket=source) is not None
    storage = Storage(settings)

    def broken_object(*args: object, **kwargs: object) -> None:
        raise TransientError(f"head s3://{source}/k4: 500 InternalError (injected)")

    monkeypatch.setattr(storage, "head", broken_object)
    assert probe(breaker, storage) is None  # its bucket answers a listing: storage works
    assert breaker.pause() is None
