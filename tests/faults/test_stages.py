"""kill -9 at every stage of an object's work: fetch, encode, verify, upload, record.

One object per stage, named ``stage-S.dcm``, stops at the start of stage S on its first
delivery (tests/faults/injection.py); once all five stand still, the pool processes -
or the whole worker, main process and pool - are killed with SIGKILL. Each object must
then be done exactly once, with the settings users get: its output stored once (the
fault proxy between the workers and S3 counts), the ledger counting it once, its pixels
the source's, nothing left queued.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dcmpress.stack.samples import make_image
from dcmpress.stack.services import CeleryWorker, SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from tests.faults.injection import STAGES, faulty_env, paused
from tests.faults.outputs import put_sources, tally
from tests.faults.proxy import FaultProxy
from worker import procfs
from worker.runtime.ledger import Ledger

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _start_batch(
    env: dict[str, str], s3_server: SeaweedS3, source: str, dest: str
) -> tuple[str, dict[str, Dataset]]:
    images = {f"stage-{stage}.dcm": make_image(96, 96, bits_stored=12, seed=i)
              for i, stage in enumerate(STAGES)}  # fmt: skip
    put_sources(s3_server, source, images)
    batch = f"stages-{uuid.uuid4().hex[:6]}"
    proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", "--batch", batch)
    assert proc.returncode == 0, proc.stderr
    return batch, images


def _stage_env(
    stack_env: dict[str, str], proxy: FaultProxy, tmp_path: Path
) -> tuple[str, dict[str, str], dict[str, str]]:
    """(queue, environment of the CLI, environment of workers that stop at each stage)."""
    queue = f"stages-{uuid.uuid4().hex[:6]}"
    env = {**stack_env, "DCMPRESS_QUEUE": queue}
    worker_env = {**env, "DCMPRESS_S3_ENDPOINT_URL": proxy.endpoint_url,
                  **faulty_env(tmp_path, ROOT, pause_seconds=600)}  # fmt: skip
    return queue, env, worker_env


def _assert_each_done_after_one_loss(
    ledger: Ledger, batch: str, images: dict[str, Dataset]
) -> None:
    for key in images:
        record = ledger.get_record(batch, key)
        assert record is not None and record.state == "done", (key, record)
        assert (record.attempts, record.lost) == (2, 1), (key, record)


def _wait_all_paused(workdir: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while paused(workdir) != set(STAGES):
        assert time.monotonic() < deadline, f"paused only at {sorted(paused(workdir))}"
        time.sleep(0.1)
    time.sleep(0.5)  # the last one is asleep, not only marked


def test_pool_processes_killed_at_every_stage_lose_and_duplicate_nothing(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, proxy: FaultProxy, tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    queue, env, worker_env = _stage_env(stack_env, proxy, tmp_path)
    with CeleryWorker(worker_env, tmp_path, concurrency=len(STAGES)) as worker:
        batch, images = _start_batch(env, s3_server, source, dest)
        _wait_all_paused(tmp_path)
        assert worker.pid is not None
        children = procfs.children(worker.pid)
        assert len(children) == len(STAGES)
        for child in children:
            os.kill(child, signal.SIGKILL)
        wait_for_batch(ledger, batch, len(images), timeout=180)
        time.sleep(2)  # a duplicate message would show up now
        found = tally(s3_server, ledger, batch, queue, dest, images, proxy)
    assert found.clean, found
    _assert_each_done_after_one_loss(ledger, batch, images)


def test_a_whole_worker_killed_at_every_stage_is_healed_by_another(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, proxy: FaultProxy, tmp_path: Path,
) -> None:  # fmt: skip
    # the settings users get: the messages come back after the visibility timeout (120 s)
    source, dest = bucket_pair
    queue, env, worker_env = _stage_env(stack_env, proxy, tmp_path)
    doomed = CeleryWorker(worker_env, tmp_path / "a", concurrency=len(STAGES))
    with doomed:
        batch, images = _start_batch(env, s3_server, source, dest)
        _wait_all_paused(tmp_path)
        assert doomed.pid is not None
        os.killpg(doomed.pid, signal.SIGKILL)
        killed_at = time.monotonic()
    with CeleryWorker(worker_env, tmp_path / "b", concurrency=2):  # at once: a spare worker
        wait_for_batch(ledger, batch, len(images), timeout=240)
        healed = time.monotonic() - killed_at
        time.sleep(2)
        found = tally(s3_server, ledger, batch, queue, dest, images, proxy)
    assert found.clean, found
    assert healed < 180, f"healed in {healed:.0f} s"
    _assert_each_done_after_one_loss(ledger, batch, images)
    print(f"\nfive objects killed at {', '.join(STAGES)}: all done {healed:.0f} s later")
