"""Faults through the real Celery worker: dead pool processes, an unreachable S3."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3, free_port
from tests.conftest import run_cli, wait_for_batch
from worker import procfs
from worker.runtime.ledger import Ledger

pytestmark = pytest.mark.integration


def test_a_killed_pool_process_does_not_lose_its_object(
    stack_env: dict[str, str],
    s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    source, dest = bucket_pair
    env = {**stack_env, "DCMPRESS_QUEUE": f"kill-{os.getpid()}"}
    # J2K of a large image takes long enough to be killed mid-task
    s3_server.client().put_object(
        Bucket=source, Key="slow.dcm", Body=to_bytes(make_image(1536, 1536, bits_stored=12))
    )
    root = Path(__file__).resolve().parents[2]
    with CeleryWorker({**env, "PYTHONPATH": str(root)}, tmp_path, concurrency=1) as worker:
        proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
                       "--target", "j2k", "--batch", f"kill-{source}")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        batch = f"kill-{source}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record = ledger.get_record(batch, "slow.dcm")
            if record is not None and record.state == "running":
                break
            time.sleep(0.05)
        assert worker.pid is not None
        children = procfs.children(worker.pid)
        assert children, "no pool process found"
        for child in children:
            os.kill(child, signal.SIGKILL)  # the pool process dies mid-encode
        counts = wait_for_batch(ledger, batch, 1)
    assert counts.get("done") == 1, counts
    record = ledger.get_record(batch, "slow.dcm")
    assert record is not None and record.attempts == 2 and record.lost == 1


def test_an_unreachable_s3_is_retried_then_recorded_retries_exhausted(
    stack_env: dict[str, str],
    s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    source, dest = bucket_pair
    queue = f"nos3-{os.getpid()}"
    s3_server.client().put_object(Bucket=source, Key="a.dcm", Body=to_bytes(make_image(40, 40)))
    closed = free_port()  # nothing listens there: connection refused, a transient error
    worker_env = {
        **stack_env,
        "DCMPRESS_QUEUE": queue,
        "DCMPRESS_S3_ENDPOINT_URL": f"http://127.0.0.1:{closed}",
        "DCMPRESS_S3_MAX_ATTEMPTS": "1",
        # shortened to keep the test short; tests/faults/test_retries.py has the defaults
        "DCMPRESS_MAX_RETRIES": "3",
        "DCMPRESS_RETRY_BACKOFF_MAX": "2",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    with CeleryWorker(worker_env, tmp_path, concurrency=1):
        proc = run_cli({**stack_env, "DCMPRESS_QUEUE": queue}, "enqueue", f"s3://{source}/",
                       "--dest", f"s3://{dest}/", "--batch", f"nos3-{source}")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        counts = wait_for_batch(ledger, f"nos3-{source}", 1, timeout=120)
    assert counts.get("failed") == 1, counts
    report: Any = run_cli(stack_env, "report", f"nos3-{source}", "--format", "ndjson")
    row = json.loads(report.stdout.splitlines()[0])
    assert row["code"] == "retries_exhausted"
    assert "after 3 retries" in row["message"]


def test_a_malformed_job_message_is_dropped_not_redelivered(
    settings: Any, celery_worker: CeleryWorker, ledger: Ledger
) -> None:
    from worker.runtime.app import create_app

    app = create_app(settings)
    app.send_task("dcmpress.compress_object", args=[{"no": "batch"}], queue=settings.queue)
    deadline = time.monotonic() + 30
    logged = False
    while time.monotonic() < deadline and not logged:
        time.sleep(0.2)
        logged = "malformed job message dropped" in celery_worker.log_path.read_text()
    assert logged
    time.sleep(1)  # the acknowledgement follows the log line
    assert (ledger.redis.llen(settings.queue), ledger.redis.hlen("unacked")) == (0, 0)
