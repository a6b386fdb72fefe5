"""Faults through the real Celery worker: dead pool processes, an unreachable S3."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from tests.faults.proxy import FaultProxy, passes
from worker import procfs
from worker.runtime.breaker import read_pause
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


def test_an_unreachable_s3_pauses_a_lone_object_instead_of_failing_it(
    stack_env: dict[str, str],
    s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    """One object, too few to open the breaker by their failures: at its last retry
    the worker lists the bucket, finds storage away (every connection reset), and
    pauses instead of recording failed/retries_exhausted; once storage answers, the
    object is done. (A single object's own failure, storage answering, still ends
    retries_exhausted: tests/faults/test_retries.py.)"""
    source, dest = bucket_pair
    queue = f"nos3-{os.getpid()}"
    batch = f"nos3-{source}"
    s3_server.client().put_object(Bucket=source, Key="a.dcm", Body=to_bytes(make_image(40, 40)))
    with FaultProxy(s3_server.endpoint_url) as proxy:
        proxy.rule = lambda request: "reset_before"  # storage unreachable
        worker_env = {
            **stack_env,
            "DCMPRESS_QUEUE": queue,
            "DCMPRESS_S3_ENDPOINT_URL": proxy.endpoint_url,
            "DCMPRESS_S3_MAX_ATTEMPTS": "1",
            # shortened to keep the test short; tests/faults/test_retries.py has the defaults
            "DCMPRESS_MAX_RETRIES": "3",
            "DCMPRESS_RETRY_BACKOFF_MAX": "2",
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        }
        with CeleryWorker(worker_env, tmp_path, concurrency=1):
            proc = run_cli({**stack_env, "DCMPRESS_QUEUE": queue}, "enqueue", f"s3://{source}/",
                           "--dest", f"s3://{dest}/", "--batch", batch)  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            deadline = time.monotonic() + 120
            while read_pause(ledger.redis, queue) is None:
                assert time.monotonic() < deadline, ledger.counts(batch)
                time.sleep(0.2)
            time.sleep(3)
            assert ledger.counts(batch).get("failed", 0) == 0
            status = run_cli({**stack_env, "DCMPRESS_QUEUE": queue}, "status", batch)
            assert "storage failing since" in " ".join(status.stdout.split()), status.stdout
            proxy.rule = passes  # storage is back
            counts = wait_for_batch(ledger, batch, 1, timeout=180)
    assert (counts.get("done"), counts.get("failed", 0)) == (1, 0), counts
    assert read_pause(ledger.redis, queue) is None


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
