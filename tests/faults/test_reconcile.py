"""Objects no message will ever finish are found and sent again by `dcmpress reconcile`.

The faults are made directly in the real Redis: the queue emptied under a batch (a
broker restarted without persistence, a message dropped), and a `running` record whose
worker and message are both gone.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from worker.runtime.ledger import Ledger, Record

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
