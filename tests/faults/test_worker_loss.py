"""A whole worker lost (main process and pool, SIGKILL) is healed in minutes, with the
settings users get: its unacknowledged message comes back after the visibility
timeout (120 s) and kombu's 5 s sweep, the dead worker's claim has lapsed by then, and
another worker - running already, or started later - finishes the object once.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from tests.faults.injection import faulty_env
from worker.runtime.ledger import Ledger
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _wait_running(ledger: Ledger, batch: str, key: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = ledger.get_record(batch, key)
        if record is not None and record.state == "running":
            return
        time.sleep(0.05)
    raise AssertionError(f"{key} never started")


def test_a_killed_worker_s_object_is_done_within_three_minutes_by_defaults(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    defaults = WorkerSettings.model_fields
    assert (defaults["visibility_timeout"].default, defaults["claim_ttl"].default) == (120, 60)
    source, dest = bucket_pair
    env = {**stack_env, "DCMPRESS_QUEUE": f"loss-{uuid.uuid4().hex[:6]}",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    # JPEG 2000 of a large image: seconds of work, so the kill lands mid-task
    s3_server.client().put_object(
        Bucket=source, Key="slow.dcm", Body=to_bytes(make_image(2560, 2560, bits_stored=12))
    )
    batch = f"loss-{uuid.uuid4().hex[:6]}"
    doomed = CeleryWorker(env, tmp_path / "a", concurrency=1)
    with doomed:
        proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
                       "--target", "j2k", "--batch", batch)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        _wait_running(ledger, batch, "slow.dcm")
        assert doomed.pid is not None
        os.killpg(doomed.pid, signal.SIGKILL)  # the whole worker: main process and pool
        killed_at = time.monotonic()
    # a new worker comes up only after the visibility timeout has passed: it restores
    # the message at once on start-up
    time.sleep(max(0.0, 125 - (time.monotonic() - killed_at)))
    started_at = time.monotonic()
    with CeleryWorker(env, tmp_path / "b", concurrency=1):
        counts = wait_for_batch(ledger, batch, 1, timeout=120)
        done_at = time.monotonic()
        time.sleep(3)  # any duplicate message would show up now
        queued = ledger.redis.llen(env["DCMPRESS_QUEUE"])
    assert counts.get("done") == 1, counts
    record = ledger.get_record(batch, "slow.dcm")
    assert record is not None and (record.attempts, record.lost) == (2, 1)
    assert done_at - killed_at < 180, f"healed in {done_at - killed_at:.0f} s"
    assert done_at - started_at < 60, f"{done_at - started_at:.0f} s after the new worker"
    assert queued == 0  # no message left behind, none multiplied
    print(f"\nhealed {done_at - killed_at:.0f} s after SIGKILL, "
          f"{done_at - started_at:.0f} s after the new worker started")  # fmt: skip


def test_a_task_longer_than_the_visibility_timeout_runs_once(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    # shortened timeouts (the default of 120 s would make this test minutes long): the
    # message comes back while its task still runs, and must wait, not work twice
    source, dest = bucket_pair
    env = {**stack_env, "DCMPRESS_QUEUE": f"long-{uuid.uuid4().hex[:6]}",
           "DCMPRESS_VISIBILITY_TIMEOUT": "12", "DCMPRESS_CLAIM_TTL": "8",
           "DCMPRESS_RETRY_BACKOFF_MAX": "4"}  # fmt: skip
    s3_server.client().put_object(Bucket=source, Key="long.dcm", Body=to_bytes(make_image(64, 64)))
    batch = f"long-{uuid.uuid4().hex[:6]}"
    faults = faulty_env(tmp_path, ROOT, slow_seconds=30)
    with CeleryWorker({**env, **faults}, tmp_path, concurrency=2) as worker:
        proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
                       "--batch", batch)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        counts = wait_for_batch(ledger, batch, 1, timeout=120)
        time.sleep(5)  # the waiting delivery finds the object done and stops
        log = worker.log_path.read_text()
        queued = ledger.redis.llen(env["DCMPRESS_QUEUE"])
    assert counts.get("done") == 1, counts
    record = ledger.get_record(batch, "long.dcm")
    assert record is not None and (record.attempts, record.lost) == (1, 0)  # worked once
    assert "is being processed by" in log  # the second delivery did come, and waited
    assert log.count('"object finished"') == 1
    assert queued == 0
