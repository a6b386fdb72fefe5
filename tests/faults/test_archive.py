"""The archiver stopped between writing a shard and taking its records out of Redis:
killed (SIGKILL) or failing at the commit. Run again, every object is in exactly one
committed shard or in Redis, and the counters never change."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from dcmpress.reports import report_rows
from tests.faults.proxy import FaultProxy
from tests.integration.test_archive import PREFIX, archive_now, fill, new_batch, shard_rows
from worker.errors import DcmpressError
from worker.runtime import scripts
from worker.runtime.archive import progress, shard_key
from worker.runtime.ledger import Keys, Ledger
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# archives with shards of 5 records, and dies (SIGKILL) right after the PUT of the
# second shard, before its commit
KILLED_AFTER_SECOND_PUT = textwrap.dedent("""
    import os, signal, sys
    import worker.runtime.archive as archive
    from worker.runtime.ledger import Ledger
    from worker.runtime.storage import Storage
    from worker.settings import WorkerSettings

    real_put = archive.put_shard
    def put_then_die(*args):
        size = real_put(*args)
        if args[2] == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return size
    archive.put_shard = put_then_die
    settings = WorkerSettings()
    ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds)
    archive.archive_batch(ledger, Storage(settings), sys.argv[1], report_prefix=sys.argv[2],
                          shard_size=5, keep=60)
""")


def everything(ledger: Ledger, storage: Storage, batch: str) -> Counter[str]:
    """How often each key appears in the batch's committed shards and in Redis."""
    return Counter(row["key"] for row in report_rows(ledger, batch, storage))


def test_an_archiver_killed_between_the_put_and_the_commit_loses_and_doubles_nothing(
    stack_env: dict[str, str], ledger: Ledger, storage: Storage, s3_server: Any,
    bucket_pair: tuple[str, str],
) -> None:  # fmt: skip
    spec = new_batch(ledger, bucket_pair)
    keys = [f"img/{i:02d}.dcm" for i in range(12)]
    fill(ledger, spec.batch, keys, time.time() - 700)
    ledger.mark_listing_done(spec.batch, len(keys))
    counts = ledger.counts(spec.batch)

    proc = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_SECOND_PUT, spec.batch, PREFIX],
        env={**os.environ, **stack_env, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert proc.returncode == -9, proc.stderr
    done = progress(ledger, spec.batch)
    assert done.shards == 1 and done.at is not None  # the second shard was not committed
    orphan = shard_rows(s3_server, done.at.bucket, shard_key(done.at, 1))
    assert [row["key"] for row in orphan] == keys[5:10]  # ... though it was written
    assert everything(ledger, storage, spec.batch) == Counter(keys)  # it is not read
    # meanwhile one of its objects is sent again: the rerun's shard 1 differs
    assert ledger.counts(spec.batch) == counts
    ledger.queue_many(spec.batch, [(keys[6], f"{6:012x}")], True, True)
    counts = ledger.counts(spec.batch)

    run = archive_now(ledger, storage, spec.batch, shard_size=5)

    assert (run.shards, run.archived, run.dropped) == (2, 6, 1)
    rewritten = shard_rows(s3_server, done.at.bucket, shard_key(done.at, 1))
    assert [row["key"] for row in rewritten] == keys[5:6] + keys[7:10]  # overwritten
    assert everything(ledger, storage, spec.batch) == Counter(keys)
    record = ledger.get_record(spec.batch, keys[6])
    assert record is not None and record.state == "queued"
    assert ledger.counts(spec.batch) == counts


@pytest.mark.parametrize("committed", [False, True], ids=["commit-failed", "answer-lost"])
def test_a_commit_that_fails_or_loses_its_answer_is_safe_to_run_again(
    ledger: Ledger, storage: Storage, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch, committed: bool,
) -> None:  # fmt: skip
    spec = new_batch(ledger, bucket_pair)
    keys = [f"k/{uuid.uuid4().hex[:6]}-{i}.dcm" for i in range(8)]
    fill(ledger, spec.batch, keys, time.time() - 700)
    ledger.mark_listing_done(spec.batch, len(keys))
    counts = ledger.counts(spec.batch)
    real_register = ledger.redis.register_script

    def register(script: str) -> Any:
        real = real_register(script)
        if script != scripts.ARCHIVE:
            return real

        def commit(keys: list[str], args: list[Any]) -> Any:
            if committed:  # Redis ran it, the reply never came back
                real(keys=keys, args=args)
            raise redis.ConnectionError("Connection reset by peer")

        return commit

    monkeypatch.setattr(ledger.redis, "register_script", register)
    with pytest.raises(redis.ConnectionError):
        archive_now(ledger, storage, spec.batch, shard_size=5)
    monkeypatch.undo()
    assert progress(ledger, spec.batch).shards == int(committed)

    archive_now(ledger, storage, spec.batch, shard_size=5)

    assert progress(ledger, spec.batch).shards == 2
    assert progress(ledger, spec.batch).archived == 8
    assert everything(ledger, storage, spec.batch) == Counter(keys)
    assert list(ledger.iter_records(spec.batch)) == []
    assert ledger.redis.llen(Keys.outbox(spec.batch)) == 0
    assert ledger.counts(spec.batch) == counts


def test_a_shard_the_storage_refuses_leaves_every_record_in_redis(
    ledger: Ledger, bucket_pair: tuple[str, str], proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("DCMPRESS_S3_ENDPOINT_URL", proxy.endpoint_url)
    proxy.rule = lambda request: "status:403" if request.method == "PUT" else "pass"
    spec = new_batch(ledger, bucket_pair)
    keys = [f"x/{i}.dcm" for i in range(3)]
    fill(ledger, spec.batch, keys, time.time() - 700)
    ledger.mark_listing_done(spec.batch, len(keys))

    with pytest.raises(DcmpressError, match="write shard s3:"):
        archive_now(ledger, Storage(WorkerSettings()), spec.batch)

    assert sorted(key for key, _, _ in ledger.iter_records(spec.batch)) == keys
    assert ledger.redis.llen(Keys.outbox(spec.batch)) == 3
    assert progress(ledger, spec.batch).shards == 0
