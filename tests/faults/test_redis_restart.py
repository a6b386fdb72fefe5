"""Redis restarted in the middle of a batch, with and without persistence.

Each test has a Redis of its own on a fixed port (the workers reconnect to the same
address), restarted while a real Celery worker runs the batch:

- with AOF (``appendfsync everysec``), stopped with SIGTERM: queue, unacknowledged
  messages and ledger come back; the deliveries whose acknowledgement or record the
  outage swallowed return after the visibility timeout, find their object and finish.
  The outage spends nothing of any object: no retry, and no attempt of
  ``DCMPRESS_MAX_ATTEMPTS`` (a delivery cut off by it is no dead worker).
- without persistence: queue and ledger are gone. Running the same ``enqueue`` again is
  the whole recovery; every output written before is recognised, none written again.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dcmpress.stack.samples import make_image
from dcmpress.stack.services import CeleryWorker, RedisServer, SeaweedS3, free_port
from tests.conftest import run_cli, wait_for_batch
from tests.faults.injection import faulty_env
from tests.faults.outputs import put_sources, tally
from tests.faults.proxy import FaultProxy
from worker.runtime.ledger import Ledger

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
OBJECTS = 24
# longer than redis-py's own retries (10, backoff up to 1 s: about 5 s at most), so the
# deliveries under way really lose the ledger
DOWN_SECONDS = 12


class AofRedis(RedisServer):
    """A redis-server that keeps an append-only file, fsynced every second."""

    def _argv(self) -> list[str]:
        argv = super()._argv()
        argv[argv.index("--appendonly") + 1] = "yes"
        return [*argv, "--appendfsync", "everysec"]


def _env(stack_env: dict[str, str], redis: RedisServer) -> dict[str, str]:
    return {**stack_env, "DCMPRESS_REDIS_URL": redis.url,
            "DCMPRESS_QUEUE": f"restart-{uuid.uuid4().hex[:6]}"}  # fmt: skip


def _images() -> dict[str, Dataset]:
    return {f"r/{index:02}.dcm": make_image(64, 64, bits_stored=12, seed=index)
            for index in range(OBJECTS)}  # fmt: skip


def _wait_finished(ledger: Ledger, batch: str, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        counts = ledger.counts(batch)
        if sum(counts.get(state, 0) for state in ("done", "skipped", "failed")) >= at_least:
            return
        assert time.monotonic() < deadline, counts
        time.sleep(0.05)


@pytest.mark.parametrize("persistent", [True, False], ids=["aof", "no-persistence"])
def test_redis_restarted_mid_batch_loses_and_duplicates_nothing(
    persistent: bool, stack_env: dict[str, str], s3_server: SeaweedS3,
    bucket_pair: tuple[str, str], proxy: FaultProxy, tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    server_type = AofRedis if persistent else RedisServer
    redis = server_type(tmp_path / "redis", port=free_port())
    images = _images()
    put_sources(s3_server, source, images)
    batch = f"restart-{uuid.uuid4().hex[:6]}"
    with redis:
        env = _env(stack_env, redis)
        worker_env = {**env, "DCMPRESS_S3_ENDPOINT_URL": proxy.endpoint_url,
                      **faulty_env(tmp_path, ROOT, slow_seconds=0.4)}  # fmt: skip
        ledger = Ledger.from_url(redis.url, 86400)
        enqueue = ("enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", "--batch", batch)
        with CeleryWorker(worker_env, tmp_path / "worker", concurrency=2) as worker:
            proc = run_cli(env, *enqueue)
            assert proc.returncode == 0, proc.stderr
            _wait_finished(ledger, batch, OBJECTS // 3)
            redis.stop()  # SIGTERM: with AOF, everything written is kept
            time.sleep(DOWN_SECONDS)  # the workers lose Redis mid-task
            redis.start()
            restarted_at = time.monotonic()
            if not persistent:
                assert ledger.counts(batch).get("queued", 0) == 0  # all gone: the ledger too
                status = run_cli(env, "status", batch)
                assert "run the batch's `dcmpress enqueue` again" in status.stderr
                proc = run_cli(env, *enqueue)  # the recovery: the same command again
                assert proc.returncode == 0, proc.stderr
            # with AOF, deliveries whose acknowledgement the outage swallowed come back
            # after the visibility timeout (120 s); every other object finishes at once
            wait_for_batch(ledger, batch, OBJECTS, timeout=300)
            healed = time.monotonic() - restarted_at
            time.sleep(2)
            log = worker.log_path.read_text()
            found = tally(s3_server, ledger, batch, env["DCMPRESS_QUEUE"], dest,
                          images, proxy)  # fmt: skip
            records = [ledger.get_record(batch, key) for key in images]
        ledger.redis.close()
    assert found.clean, found
    warned = "keeps nothing on disk" in log
    cut_off = log.count("s at most, no retry used")  # tasks._give_back
    assert cut_off > 0  # deliveries under way did lose the ledger
    forgiven = log.count("not counted as a lost worker")
    # ... and spent nothing: no retry, no attempt counted as a lost worker
    assert "transient error, retrying" not in log
    assert [record.lost for record in records if record is not None] == [0] * OBJECTS
    assert warned is not persistent  # the worker said at start-up what a restart would lose
    heads = proxy.requests("HEAD", f"/{dest}/")
    recognised = {e.path for e in heads if e.status == 200}
    if not persistent:  # what was written before the restart was found, not written again
        assert len(recognised) >= OBJECTS // 3, recognised
    print(f"\nRedis down {DOWN_SECONDS} s after {OBJECTS // 3}+ of {OBJECTS} objects: "
          f"{found}; {cut_off} deliveries cut off, {forgiven} record(s) left running by "
          f"them not counted lost; {len(recognised)} "
          f"output(s) found written already; healed {healed:.0f} s after the restart")  # fmt: skip
