"""Retries end in a record, with the defaults users get.

Celery's own retry limit (3) used to drop the message of an object whose fourth
attempt failed too: no record, `queued` for ever. These workers run with dcmpress's
defaults for retries and backoff (not the suite's shortened ones) and real
failures injected into their S3 fetches.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from tests.faults.injection import failures_seen, faulty_env
from worker.runtime.ledger import Ledger
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RETRY_SETTINGS = ("DCMPRESS_MAX_RETRIES", "DCMPRESS_RETRY_BACKOFF_MAX")


@pytest.fixture(autouse=True)
def _users_retry_defaults(settings: WorkerSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers inherit this process's environment (which ``settings`` filled in): no
    shortened retry settings in it."""
    for name in RETRY_SETTINGS:
        monkeypatch.delenv(name, raising=False)


def _defaults(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the suite's shortened retry settings: the users' defaults."""
    return {name: value for name, value in env.items() if name not in RETRY_SETTINGS}


def _enqueue(env: dict[str, str], source: str, dest: str, batch: str) -> None:
    proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", "--batch", batch)
    assert proc.returncode == 0, proc.stderr


def test_more_failures_than_celerys_default_limit_still_end_done(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    assert WorkerSettings.model_fields["max_retries"].default == 8  # what users get
    assert WorkerSettings.model_fields["retry_backoff_max"].default == 60
    source, dest = bucket_pair
    env = {**_defaults(stack_env), "DCMPRESS_QUEUE": f"retries-{uuid.uuid4().hex[:6]}"}
    s3_server.client().put_object(Bucket=source, Key="flaky.dcm", Body=to_bytes(make_image(64, 64)))
    batch = f"flaky-{uuid.uuid4().hex[:6]}"
    with CeleryWorker({**env, **faulty_env(tmp_path, ROOT, 5)}, tmp_path, concurrency=1):
        _enqueue(env, source, dest, batch)
        counts = wait_for_batch(ledger, batch, 1, timeout=150)
    assert failures_seen(tmp_path, "flaky.dcm") == 5  # five retries: Celery's 3 exceeded
    assert counts.get("done") == 1, counts
    record = ledger.get_record(batch, "flaky.dcm")
    assert record is not None and (record.state, record.attempts) == ("done", 6)


def test_retries_exhausted_is_recorded_not_dropped(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    # a lowered limit keeps this test short; the test above runs with the default
    source, dest = bucket_pair
    env = {**_defaults(stack_env), "DCMPRESS_QUEUE": f"retries-{uuid.uuid4().hex[:6]}",
           "DCMPRESS_MAX_RETRIES": "4", "DCMPRESS_RETRY_BACKOFF_MAX": "2"}  # fmt: skip
    s3_server.client().put_object(Bucket=source, Key="dead.dcm", Body=to_bytes(make_image(64, 64)))
    batch = f"dead-{uuid.uuid4().hex[:6]}"
    with CeleryWorker({**env, **faulty_env(tmp_path, ROOT, 1000)}, tmp_path, concurrency=1):
        _enqueue(env, source, dest, batch)
        counts = wait_for_batch(ledger, batch, 1, timeout=120)
    assert counts.get("failed") == 1, counts
    record = ledger.get_record(batch, "dead.dcm")
    assert record is not None and record.code == "retries_exhausted"
    assert "after 4 retries" in ledger.get_message(batch, "dead.dcm")
    assert failures_seen(tmp_path, "dead.dcm") == 5  # the first attempt and 4 retries


def test_waiting_for_a_held_claim_uses_no_retry(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    env = {**_defaults(stack_env), "DCMPRESS_QUEUE": f"claims-{uuid.uuid4().hex[:6]}",
           "DCMPRESS_MAX_RETRIES": "1", "DCMPRESS_RETRY_BACKOFF_MAX": "1"}  # fmt: skip
    s3_server.client().put_object(Bucket=source, Key="held.dcm", Body=to_bytes(make_image(64, 64)))
    batch = f"held-{uuid.uuid4().hex[:6]}"
    assert ledger.claim(source, "held.dcm", "another-host:1:live", 300)  # a live holder
    with CeleryWorker({**env, **faulty_env(tmp_path, ROOT, 1)}, tmp_path, concurrency=1) as worker:
        _enqueue(env, source, dest, batch)
        deadline = time.monotonic() + 120
        while worker.log_path.read_text().count("is being processed by") < 2:
            assert time.monotonic() < deadline, "the worker never waited for the claim"
            time.sleep(0.2)
        ledger.release(source, "held.dcm", "another-host:1:live")
        counts = wait_for_batch(ledger, batch, 1, timeout=120)
    # two waits and then one transient failure: within max_retries=1, so done
    assert failures_seen(tmp_path, "held.dcm") == 1
    assert counts.get("done") == 1, counts


def test_a_retry_that_cannot_be_published_is_not_dropped(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    # the broker refuses the retry message (Celery then rejects the delivery without
    # requeue): the delivery goes back to the queue instead and the object still ends
    source, dest = bucket_pair
    env = {**_defaults(stack_env), "DCMPRESS_QUEUE": f"publish-{uuid.uuid4().hex[:6]}"}
    s3_server.client().put_object(Bucket=source, Key="lost.dcm", Body=to_bytes(make_image(64, 64)))
    batch = f"lost-{uuid.uuid4().hex[:6]}"
    faults = faulty_env(tmp_path, ROOT, fetch_failures=1, retry_publish_failures=1)
    with CeleryWorker({**env, **faults}, tmp_path, concurrency=1) as worker:
        _enqueue(env, source, dest, batch)
        counts = wait_for_batch(ledger, batch, 1, timeout=120)
        log = worker.log_path.read_text()
    assert counts.get("done") == 1, counts
    assert "could not publish the retry" in log
