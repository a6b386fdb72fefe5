"""Objects no message will ever finish are found and sent again by `dcmpress reconcile`.

The faults are made directly in the real Redis: the queue emptied under a batch (a
broker restarted without persistence, a message dropped), and a `running` record whose
worker and message are both gone.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from worker.runtime.ledger import Ledger
from worker.runtime.records import Record

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_lost_messages_are_found_and_sent_again(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    queue = f"orphans-{uuid.uuid4().hex[:6]}"
    env = {**stack_env, "DCMPRESS_QUEUE": queue}
    client = s3_server.client()
    for index in range(5):
        client.put_object(Bucket=source, Key=f"o/{index}.dcm",
                          Body=to_bytes(make_image(48, 48, seed=index)))  # fmt: skip
    batch = f"orphans-{uuid.uuid4().hex[:6]}"
    proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", "--batch", batch)
    assert proc.returncode == 0, proc.stderr
    assert ledger.redis.llen(queue) == 5
    ledger.redis.delete(queue)  # the messages are gone; the ledger still says queued
    # and one object whose worker died after its message was lost: running, no claim
    ledger.transition(batch, "o/4.dcm", Record(state="running", attempts=1).stamped())

    dry = run_cli(env, "reconcile", batch, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    found = json.loads(dry.stdout.strip().splitlines()[-1])
    assert (len(found["queued_orphans"]), found["running_orphans"], found["sent"]) == (
        4, ["o/4.dcm"], 0)  # fmt: skip
    assert ledger.redis.llen(queue) == 0  # a dry run sends nothing

    sent = json.loads(run_cli(env, "reconcile", batch).stdout.strip().splitlines()[-1])
    assert sent["sent"] == 5
    again = json.loads(run_cli(env, "reconcile", batch).stdout.strip().splitlines()[-1])
    assert (again["orphans"], again["sent"], again["with_message"]) == (0, 0, 5)

    with CeleryWorker({**env, "PYTHONPATH": str(ROOT)}, tmp_path, concurrency=1):
        counts = wait_for_batch(ledger, batch, 5, timeout=120)
    assert counts.get("done") == 5, counts
    dead = ledger.get_record(batch, "o/4.dcm")
    assert dead is not None and (dead.attempts, dead.lost) == (2, 1)  # its death counted


def test_an_object_a_live_worker_holds_is_no_orphan(
    stack_env: dict[str, str], ledger: Ledger, bucket_pair: tuple[str, str]
) -> None:
    source, dest = bucket_pair
    batch = f"held-{uuid.uuid4().hex[:6]}"
    env = {**stack_env, "DCMPRESS_QUEUE": f"held-{uuid.uuid4().hex[:6]}"}
    from worker.runtime.contract import BatchSpec, S3Location

    ledger.save_batch(BatchSpec(batch=batch, source=S3Location(bucket=source),
                                dest=S3Location(bucket=dest)))  # fmt: skip
    ledger.transition(batch, "busy.dcm", Record(state="running", attempts=1).stamped())
    assert ledger.claim(source, "busy.dcm", "someone:1:alive", 60)
    report = json.loads(run_cli(env, "reconcile", batch).stdout.strip().splitlines()[-1])
    assert (report["orphans"], report["with_message"], report["sent"]) == (0, 1, 0)


def _orphaned_batch(
    env: dict[str, str], s3_server: SeaweedS3, source: str, dest: str, ledger: Ledger,
    objects: int,
) -> str:  # fmt: skip
    """A batch whose messages are all lost, with one object left running by a dead worker."""
    client = s3_server.client()
    for index in range(objects):
        client.put_object(Bucket=source, Key=f"o/{index}.dcm",
                          Body=to_bytes(make_image(48, 48, seed=index)))  # fmt: skip
    batch = f"auto-{uuid.uuid4().hex[:6]}"
    proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", "--batch", batch)
    assert proc.returncode == 0, proc.stderr
    ledger.redis.delete(env["DCMPRESS_QUEUE"])
    ledger.transition(batch, "o/0.dcm", Record(state="running", attempts=1).stamped())
    return batch


def test_the_workers_send_lost_objects_again_by_themselves(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    # a shortened idle time keeps the test short; the next test checks the default is on
    env = {**stack_env, "DCMPRESS_QUEUE": f"auto-{uuid.uuid4().hex[:6]}",
           "DCMPRESS_RECONCILE_AFTER": "8"}  # fmt: skip
    batch = _orphaned_batch(env, s3_server, *bucket_pair, ledger, objects=4)
    worker = CeleryWorker({**env, "PYTHONPATH": str(ROOT)}, tmp_path, concurrency=1)
    with worker:
        counts = wait_for_batch(ledger, batch, 4, timeout=120)  # no manual step
    assert counts.get("done") == 4, counts
    info = ledger.batch_info(batch)
    assert info["reconciled_sent"] == "4"
    log = worker.log_path.read_text()
    assert "4 object(s) had no live message or worker and were sent again" in log
    status = run_cli(env, "status", batch)
    assert "re-sent" in status.stdout and "4 object(s) had lost their message" in status.stdout


def test_the_automatic_check_is_on_with_the_defaults(celery_worker: CeleryWorker) -> None:
    from worker.settings import WorkerSettings

    assert WorkerSettings.model_fields["reconcile_after"].default == 300
    assert "automatic reconcile: batches with no activity for 300 s" in (
        celery_worker.log_path.read_text()
    )  # the session's worker runs with the users' settings


def test_the_automatic_check_sends_nothing_for_live_work(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    from tests.faults.injection import faulty_env

    source, dest = bucket_pair
    env = {**stack_env, "DCMPRESS_QUEUE": f"live-{uuid.uuid4().hex[:6]}",
           "DCMPRESS_RECONCILE_AFTER": "5"}  # fmt: skip
    client = s3_server.client()
    for index in range(3):
        client.put_object(Bucket=source, Key=f"slow/{index}.dcm",
                          Body=to_bytes(make_image(48, 48, seed=index)))  # fmt: skip
    batch = f"live-{uuid.uuid4().hex[:6]}"
    # each object takes 12 s: the batch is idle for longer than 5 s while one runs
    # (claimed) and the others wait in the queue
    worker_env = {**env, **faulty_env(tmp_path, ROOT, slow_seconds=12)}
    with CeleryWorker(worker_env, tmp_path, concurrency=1):
        proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
                       "--batch", batch)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        counts = wait_for_batch(ledger, batch, 3, timeout=150)
    assert counts.get("done") == 3, counts
    info = ledger.batch_info(batch)
    assert "reconciled_at" in info  # the check did run meanwhile
    assert info.get("reconciled_sent", "0") == "0"  # and found every object alive
    records = [ledger.get_record(batch, f"slow/{index}.dcm") for index in range(3)]
    assert all(r is not None and r.attempts == 1 for r in records)  # one delivery each


def test_the_automatic_check_waits_for_a_long_queue_and_runs_once_at_a_time(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, settings: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from worker.runtime import reconcile
    from worker.runtime.app import create_app

    env = {**stack_env, "DCMPRESS_QUEUE": f"long-{uuid.uuid4().hex[:6]}"}
    batch = _orphaned_batch(env, s3_server, *bucket_pair, ledger, objects=3)
    app = create_app(settings)
    queue = env["DCMPRESS_QUEUE"]
    later = time.time() + 3600  # as if an hour passed with no activity
    ledger.redis.rpush(queue, *[b"{}"] * 3)  # other work waiting
    monkeypatch.setattr(reconcile, "AUTOMATIC_QUEUE_LIMIT", 2)
    assert batch in reconcile.stalled_batches(ledger, queue, 300, later)
    # the workers of another queue leave it alone: its live messages are not theirs
    assert batch not in reconcile.stalled_batches(ledger, "other-queue", 300, later)
    # (other batches of the session may be stalled too: only this one is looked at)
    reconcile.reconcile_stalled(app, ledger, queue, 300, later)
    assert "reconciled_at" not in ledger.batch_info(batch)  # the queue was not read yet
    ledger.redis.delete(queue)
    with ledger.reconcile_lock(timeout=30):  # another worker is checking
        assert reconcile.reconcile_stalled(app, ledger, queue, 300, later) == 0
    assert "reconciled_at" not in ledger.batch_info(batch)
    assert reconcile.reconcile_stalled(app, ledger, queue, 300, later) >= 3
    assert ledger.batch_info(batch)["reconciled_sent"] == "3"
    assert batch not in reconcile.stalled_batches(ledger, queue, 300, later)  # checked now
    ledger.redis.delete(queue)


def test_a_worker_stopping_during_its_check_lets_it_finish_and_release_the_lock(
    ledger: Ledger, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check killed with its worker kept the lock, and every other worker's check
    waited for it to expire (300 s with the defaults)."""
    import threading
    from types import SimpleNamespace

    from worker.runtime import reconcile, watchdog
    from worker.runtime.ledger import Keys

    running = threading.Event()

    def slow_check(app: Any, _: Ledger, queue: str, idle_after: float) -> int:
        lock = ledger.reconcile_lock(timeout=300)  # the default's expiry
        assert lock.acquire(blocking=False)
        running.set()
        try:
            time.sleep(1.5)  # a check that takes a while (many batches)
        finally:
            lock.release()
        return 0

    monkeypatch.setattr(reconcile, "reconcile_stalled", slow_check)
    conf = SimpleNamespace(dcmpress_settings=settings.model_copy(update={"reconcile_after": 5}))
    parent = SimpleNamespace(app=SimpleNamespace(conf=conf))
    step = watchdog.ReconcileWatch(parent)
    step.start(parent)
    assert running.wait(30)
    step.stop(parent)  # the worker shuts down meanwhile
    assert step.thread is not None and not step.thread.is_alive()
    assert ledger.redis.get(Keys.reconcile_lock()) is None  # released, not left to lapse


def test_a_worker_stopping_between_checks_stops_its_watch_with_the_defaults(
    settings: Any,
) -> None:
    """With the users' settings (a check a minute) the watch thread ends at once on
    stop: the wait between checks is what stop interrupts."""
    from types import SimpleNamespace

    from worker.runtime import watchdog

    assert settings.reconcile_after == 300  # the default, not lowered here
    parent = SimpleNamespace(app=SimpleNamespace(conf=SimpleNamespace(dcmpress_settings=settings)))
    step = watchdog.ReconcileWatch(parent)
    step.start(parent)
    assert step.thread is not None and step.thread.is_alive()
    step.stop(parent)
    assert not step.thread.is_alive()
