"""A whole batch through a faulty network, on the real stack with the settings users get.

The fault proxy sits between the Celery workers and the S3 server and breaks a share
of every kind of request: downloads cut short, writes stored but their answer lost,
writes that never arrive, connections reset before a HEAD, answers later than the read
timeout. Every object must end done, its output stored once, its pixels the source's,
the ledger counting it once, nothing left queued (tests/faults/outputs.py).
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from dcmpress.stack.samples import make_image
from dcmpress.stack.services import CeleryWorker, SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from tests.faults.outputs import put_sources, tally
from tests.faults.proxy import FaultProxy, mixture
from worker.runtime.ledger import Ledger

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _run_batch(
    env: dict[str, str], worker_env: dict[str, str], s3_server: SeaweedS3,
    bucket_pair: tuple[str, str], ledger: Ledger, proxy: FaultProxy, tmp_path: Path,
    objects: int,
) -> Counter[str]:  # fmt: skip
    source, dest = bucket_pair
    images = {f"n/{index:03}.dcm": make_image(64, 64, bits_stored=12, seed=index)
              for index in range(objects)}  # fmt: skip
    put_sources(s3_server, source, images)
    batch = f"net-{uuid.uuid4().hex[:6]}"
    with CeleryWorker(worker_env, tmp_path, concurrency=2):
        proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
                       "--batch", batch)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        counts = wait_for_batch(ledger, batch, objects, timeout=300)
    assert counts.get("done") == objects, counts
    found = tally(s3_server, ledger, batch, env["DCMPRESS_QUEUE"], dest, images, proxy)
    assert found.clean, found
    injected = Counter(f"{e.method} {e.fault}" for e in proxy.log if e.fault != "pass")
    print(f"\n{objects} objects, faults injected: {dict(injected)}; {found}")
    return injected


def test_truncated_downloads_and_lost_writes_leave_every_object_done_once(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, proxy: FaultProxy, tmp_path: Path,
) -> None:  # fmt: skip
    env = {**stack_env, "DCMPRESS_QUEUE": f"net-{uuid.uuid4().hex[:6]}"}
    # nothing changed but the endpoint: the retries, timeouts and attempts users get
    worker_env = {**env, "DCMPRESS_S3_ENDPOINT_URL": proxy.endpoint_url, "PYTHONPATH": str(ROOT)}
    proxy.rule = mixture({
        "GET": [("truncate", 0.3)],
        "PUT": [("reset_after", 0.3), ("reset_before", 0.1)],
        "HEAD": [("reset_before", 0.1)],
    })  # fmt: skip
    injected = _run_batch(env, worker_env, s3_server, bucket_pair, ledger, proxy, tmp_path, 40)
    assert injected["GET truncate"] >= 5 and injected["PUT reset_after"] >= 5, injected


def test_answers_later_than_the_read_timeout_write_nothing_twice(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, proxy: FaultProxy, tmp_path: Path,
) -> None:  # fmt: skip
    env = {**stack_env, "DCMPRESS_QUEUE": f"net-{uuid.uuid4().hex[:6]}"}
    # a read timeout shorter than the delays (the default is 120 s: no delay reaches it)
    worker_env = {**env, "DCMPRESS_S3_ENDPOINT_URL": proxy.endpoint_url,
                  "DCMPRESS_S3_READ_TIMEOUT": "2", "PYTHONPATH": str(ROOT)}  # fmt: skip
    proxy.rule = mixture({"PUT": [("delay:4", 0.3)], "GET": [("delay:4", 0.1)]})
    injected = _run_batch(env, worker_env, s3_server, bucket_pair, ledger, proxy, tmp_path, 20)
    assert injected["PUT delay:4"] >= 3, injected
