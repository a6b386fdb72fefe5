"""A storage outage longer than the retry budget fails nothing, with the defaults.

A real worker (two processes) runs a batch through the fault proxy; mid-batch storage
goes away for longer than the default retry budget: first every request is answered
503, then every connection is reset. The workers run with every setting users get (the
S3 endpoint aside, which is the proxy); the outage is minutes instead of the 30 the
promise names, and that is enough because the defaults decide: an object failing all
along would have spent its retries (``DCMPRESS_MAX_RETRIES``, backoff capped at
``DCMPRESS_RETRY_BACKOFF_MAX``) well within it. The breaker must pause the workers
instead: 0 failed, 0 lost, 0 duplicated, 0 stuck, and work resumes within a minute of
storage answering again.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from dcmpress.stack.samples import make_image
from dcmpress.stack.services import CeleryWorker, SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from tests.faults.injection import faulty_env
from tests.faults.outputs import put_sources, tally
from tests.faults.proxy import FaultProxy, Request, passes
from worker.runtime.breaker import read_pause
from worker.runtime.ledger import Ledger
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
OBJECTS = 24
# one try of an object in the outage: its requests and botocore's own quick retries (a
# 503 or a reset is tried again after tens of milliseconds); generous
TRY_SECONDS = 2.0
SETTLE_SECONDS = 20.0  # after the breaker opens: deliveries under way give their message back


def retry_budget() -> float:
    """The longest an object failing on every try is retried before it is recorded
    failed/retries_exhausted, with the defaults: every backoff wait at its longest
    (full jitter waits less), plus each try's own time."""
    defaults = WorkerSettings.model_fields
    retries, cap = defaults["max_retries"].default, defaults["retry_backoff_max"].default
    waits = sum(min(cap, 2 ** (retry - 1)) for retry in range(1, retries + 1))
    return waits + (retries + 1) * TRY_SECONDS


def _finished(ledger: Ledger, batch: str) -> int:
    counts = ledger.counts(batch)
    return int(sum(counts.get(state, 0) for state in ("done", "skipped", "failed")))


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition``; the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.2)
    return time.monotonic() - started


def test_a_storage_outage_longer_than_the_retry_budget_fails_nothing(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, proxy: FaultProxy, tmp_path: Path,
) -> None:  # fmt: skip
    assert (WorkerSettings.model_fields["max_retries"].default,
            WorkerSettings.model_fields["retry_backoff_max"].default) == (8, 60)  # fmt: skip
    budget = retry_budget()  # 183 s of waits + 18 s of tries = 201 s
    outage = math.ceil(budget) + 30
    source, dest = bucket_pair
    images = {f"o/{index:02}.dcm": make_image(64, 64, bits_stored=12, seed=index)
              for index in range(OBJECTS)}  # fmt: skip
    put_sources(s3_server, source, images)
    batch = f"outage-{uuid.uuid4().hex[:6]}"
    env = {**stack_env, "DCMPRESS_QUEUE": f"outage-{uuid.uuid4().hex[:6]}"}
    # the defaults but the endpoint; objects take half a second more, so some are under
    # way when storage goes away
    worker_env = {**env, "DCMPRESS_S3_ENDPOINT_URL": proxy.endpoint_url,
                  **faulty_env(tmp_path, ROOT, slow_seconds=0.5)}  # fmt: skip
    fault = ["status:503"]

    def outage_rule(request: Request) -> str:
        return fault[0]

    with CeleryWorker(worker_env, tmp_path / "worker", concurrency=2) as worker:
        proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
                       "--batch", batch)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        _wait(lambda: _finished(ledger, batch) >= OBJECTS // 4, 120, "first objects done")
        before = _finished(ledger, batch)
        proxy.rule = outage_rule
        outage_started = time.monotonic()
        opened_after = _wait(
            lambda: read_pause(ledger.redis, env["DCMPRESS_QUEUE"]) is not None, 120, "breaker open"
        )
        status = run_cli(env, "status", batch)
        time.sleep(SETTLE_SECONDS)
        log_offset = worker.log_path.stat().st_size
        requests_offset = len(proxy.log)
        paused_from = time.monotonic()
        time.sleep(max(0.0, outage / 2 - (time.monotonic() - outage_started)))
        fault[0] = "reset_before"  # the second half: storage unreachable
        time.sleep(max(0.0, outage - (time.monotonic() - outage_started)))
        paused_for = time.monotonic() - paused_from
        received_while_paused = worker.log_path.read_bytes()[log_offset:].count(b"] received")
        while_paused = proxy.log[requests_offset:]
        failed_in_outage = int(ledger.counts(batch).get("failed", 0))
        during = _finished(ledger, batch)
        proxy.rule = passes
        back_at = time.monotonic()
        closed_after = _wait(
            lambda: read_pause(ledger.redis, env["DCMPRESS_QUEUE"]) is None, 60, "breaker closed"
        )
        _wait(lambda: _finished(ledger, batch) > during, 60, "work resumed")
        resumed_after = time.monotonic() - back_at
        counts = wait_for_batch(ledger, batch, OBJECTS, timeout=180)
        time.sleep(2)  # any message left behind would show now
        found = tally(s3_server, ledger, batch, env["DCMPRESS_QUEUE"], dest, images, proxy)
        log = worker.log_path.read_text()
    assert failed_in_outage == 0 and counts.get("failed", 0) == 0, counts
    assert counts.get("done") == OBJECTS, counts
    assert found.clean, found
    assert "paused" in status.stdout and "storage failing since" in status.stdout, status.stdout
    # paused means paused: no message taken, storage left alone but for the probes
    assert received_while_paused == 0
    # a probe: a HEAD of the object that failed last, then a one-key listing of its bucket
    listings = [e for e in while_paused if e.method == "GET" and "max-keys=1" in e.query]
    assert not [e for e in while_paused if e.method != "HEAD" and e not in listings]
    probes = len(while_paused) - len(listings)
    interval = WorkerSettings.model_fields["breaker_probe_interval"].default
    assert probes <= paused_for / interval + 2, (probes, paused_for)
    assert resumed_after < 60
    retried = log.count("transient error, retrying")
    print(f"\n{before} of {OBJECTS} objects done, then storage away {outage} s (retry budget "
          f"{budget:.0f} s): breaker open after {opened_after:.0f} s, {probes} probe(s) in "
          f"{paused_for:.0f} s paused, {retried} retries spent; storage back: breaker closed "
          f"after {closed_after:.0f} s, next object done {resumed_after:.0f} s after; "
          f"{found}")  # fmt: skip
