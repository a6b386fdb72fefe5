"""A sender that never retries, while Redis is away, hung, and the listener killed.

The SeaweedFS filer's webhook is such a sender: an event answered 503 (or refused) is
dead-lettered at once. The real filer posts to the real ``dcmpress listen`` here, with
its own Redis (AOF) that is stopped, then frozen with SIGSTOP, while objects are
uploaded; the listener is killed with a non-empty spool and started again. Every
upload must become exactly one job (one record, one message), and the jobs real ones:
a worker compresses them all. A full Redis (OOM) is spooled the same way. Then a
re-upload while the first version is being compressed: the output in the end is the
new version's.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, RedisServer, SeaweedS3, free_port
from producer.listen import EventFilter, EventIntake
from producer.spool import Spool
from producer.webhook import serve_http
from tests.conftest import queued_keys, wait_for_batch
from tests.faults.injection import faulty_env
from tests.faults.test_redis_restart import AofRedis
from tests.integration.test_listen import minio_event
from worker.codec.options import CompressionOptions
from worker.runtime.app import create_app
from worker.runtime.contract import S3Location
from worker.runtime.ledger import Ledger
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
OUTAGE_SECONDS = 30  # each outage; the drain backs off to its longest wait (10 s) in it
SOURCE, DEST, BATCH = "hook-src", "hook-dst", "outage"


@contextmanager
def _listener(
    env: dict[str, str], port: int, spool: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``dcmpress listen`` on ``port`` with ``spool``, ready when yielded."""

    def readies() -> int:
        return log.read_bytes().splitlines().count(b"ready") if log.exists() else 0

    before = readies()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dcmpress", "listen", "--http", f"127.0.0.1:{port}",
             "--dest", f"s3://{DEST}/", "--batch", BATCH, "--spool-dir", str(spool)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        _wait(lambda: readies() > before or proc.poll() is not None, 30, "listener ready")
        assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def _wait(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not {what} after {timeout} s"
        time.sleep(0.2)


def _records(ledger: Ledger, batch: str) -> dict[str, str]:
    return {key: record.state for key, record, _ in ledger.iter_records(batch)}


def _weed(tmp_path: Path, port: int) -> SeaweedS3:
    """A SeaweedFS whose filer posts every event to the listener's port, never retrying."""
    weed_dir = tmp_path / "weed"
    weed_dir.mkdir()
    (weed_dir / "notification.toml").write_text(
        "[notification.webhook]\nenabled = true\n"
        f'endpoint = "http://127.0.0.1:{port}/events"\n'
        "max_retries = 0\n"
    )
    return SeaweedS3(weed_dir)


def test_a_sender_that_never_retries_loses_nothing_while_redis_is_away_or_hung(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    port, queue = free_port(), f"outage-{uuid.uuid4().hex[:6]}"
    spool, log = tmp_path / "spool", tmp_path / "listener.log"
    redis = AofRedis(tmp_path / "redis", port=free_port())
    with redis, _weed(tmp_path, port) as s3:
        env = {**os.environ, **stack_env, **s3.env(), "DCMPRESS_REDIS_URL": redis.url,
               "DCMPRESS_QUEUE": queue, "PYTHONPATH": str(ROOT)}  # fmt: skip
        ledger = Ledger.from_url(redis.url, 86400)
        batch = f"{BATCH}-{SOURCE}"
        client = s3.client()
        client.create_bucket(Bucket=SOURCE)
        client.create_bucket(Bucket=DEST)
        images = {f"o/{n:02}.dcm": to_bytes(make_image(32, 32, bits_stored=12, seed=n))
                  for n in range(16)}  # fmt: skip
        keys = sorted(images)

        def upload(first: int, last: int) -> None:
            for key in keys[first:last]:
                client.put_object(Bucket=SOURCE, Key=key, Body=images[key])

        with _listener(env, port, spool, log) as listener:
            upload(0, 3)
            _wait(lambda: len(_records(ledger, batch)) == 3, 30, "3 records")
            # Redis away: the listener spools what the filer posts, and answers 200
            redis.stop()
            upload(3, 7)
            time.sleep(OUTAGE_SECONDS)
            redis.start()
            _wait(lambda: len(_records(ledger, batch)) == 7, 60, "7 records")
            # Redis hung: each call gives up within seconds; then the same
            os.kill(redis._proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            try:
                upload(7, 12)
                time.sleep(OUTAGE_SECONDS)
                listener.kill()  # with its spool holding the events: started again below
                listener.wait()
            finally:
                os.kill(redis._proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        assert b"spooling them" in log.read_bytes()
        assert len(_records(ledger, batch)) < 12  # some only in the spool
        with _listener(env, port, spool, log):
            _wait(lambda: len(_records(ledger, batch)) == 12, 60, "12 records")
            upload(12, 16)
            _wait(lambda: len(_records(ledger, batch)) == 16, 60, "16 records")
            assert set(_records(ledger, batch).values()) == {"queued"}
            per_key = Counter(queued_keys(ledger, queue))
            assert per_key == Counter({key: 1 for key in keys}), per_key  # one job each
            assert b"waiting" in log.read_bytes()  # the restart said what it replays
            with CeleryWorker(env, tmp_path / "worker", concurrency=1):
                counts = wait_for_batch(ledger, batch, len(keys))
        assert counts.get("done") == len(keys), counts
        assert ledger.redis.llen(queue) == 0


def test_a_re_upload_while_the_first_version_runs_ends_with_the_new_version(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    port, queue = free_port(), f"reupload-{uuid.uuid4().hex[:6]}"
    with _weed(tmp_path, port) as s3:
        env = {**os.environ, **stack_env, **s3.env(), "DCMPRESS_QUEUE": queue,
               **faulty_env(tmp_path, ROOT, slow_seconds=6)}  # fmt: skip
        ledger = Ledger.from_url(env["DCMPRESS_REDIS_URL"], 86400)
        batch = f"{BATCH}-{SOURCE}"
        client = s3.client()
        client.create_bucket(Bucket=SOURCE)
        client.create_bucket(Bucket=DEST)
        first, second = (make_image(48, 48, bits_stored=12, seed=seed) for seed in (1, 2))
        with _listener(env, port, tmp_path / "spool", tmp_path / "listener.log"), \
                CeleryWorker(env, tmp_path / "worker", concurrency=1):  # fmt: skip
            old = client.put_object(Bucket=SOURCE, Key="scan.dcm", Body=to_bytes(first))["ETag"]

            def running() -> bool:
                record = ledger.get_record(batch, "scan.dcm")
                return record is not None and record.state == "running"

            _wait(running, 60, "running")  # the first version is being compressed (6 s)
            new = client.put_object(Bucket=SOURCE, Key="scan.dcm", Body=to_bytes(second))["ETag"]
            assert new != old

            def finished_new() -> bool:
                record = ledger.get_record(batch, "scan.dcm")
                return record is not None and record.terminal and record.etag == new.strip('"')[:12]

            _wait(finished_new, 120, "the new version done")
        record = ledger.get_record(batch, "scan.dcm")
        assert record is not None and (record.state, record.code) == ("done", "compressed")
        counts = ledger.counts(batch)
        assert (counts.get("done"), counts.get("queued"), counts.get("running")) == (1, 0, 0)
        output = client.get_object(Bucket=DEST, Key="scan.dcm")
        assert output["Metadata"]["dcmpress-source-etag"].strip('"') == new.strip('"')
        decoded = dcmread(io.BytesIO(output["Body"].read())).pixel_array
        assert (decoded == second.pixel_array).all()


def test_a_full_redis_spools_the_event_and_it_is_enqueued_once_there_is_room(
    stack_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis at ``maxmemory`` with ``noeviction`` refuses every write (OOM): the webhook
    answers 200 with the message spooled, and enqueues it once Redis has room."""
    queue = f"full-{uuid.uuid4().hex[:6]}"
    with RedisServer(tmp_path / "redis", port=free_port()) as redis:
        for name, value in {**stack_env, "DCMPRESS_REDIS_URL": redis.url}.items():
            monkeypatch.setenv(name, value)
        settings = WorkerSettings()
        ledger = Ledger.for_events(redis.url, 86400, 3.0)
        with Spool(tmp_path / "spool", 1 << 20) as spool:
            intake = EventIntake(
                create_app(settings), ledger, Storage(settings), queue,
                S3Location(bucket=DEST), False, CompressionOptions(), EventFilter(),
                batch_name=BATCH, spool=spool,
            )  # fmt: skip
            stop = threading.Event()
            drain = threading.Thread(target=intake.drain_spool, args=(stop,), daemon=True)
            drain.start()
            server = serve_http(intake, "127.0.0.1", 0, None, lambda: True)
            admin = Ledger.from_url(redis.url, 86400).redis
            try:
                admin.config_set("maxmemory", 1)  # full: every write refused
                request = urllib.request.Request(
                    f"http://127.0.0.1:{server.server_port}/", method="POST",
                    data=json.dumps(minio_event(SOURCE, "full.dcm", 10, "e1")).encode(),
                )  # fmt: skip
                with urllib.request.urlopen(request, timeout=30) as reply:
                    assert reply.status == 200
                    assert json.loads(reply.read())["spooled"] == 1
                assert spool.size > 0
                admin.config_set("maxmemory", 0)  # room again
                _wait(lambda: spool.size == 0, 30, "drained")
                record = ledger.get_record(f"{BATCH}-{SOURCE}", "full.dcm")
                assert record is not None and record.state == "queued"
                assert Counter(queued_keys(ledger, queue)) == Counter({"full.dcm": 1})
            finally:
                admin.config_set("maxmemory", 0)
                server.shutdown()
                stop.set()
                drain.join(timeout=10)
