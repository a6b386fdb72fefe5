"""Real servers for the integration tests: Redis, SeaweedFS S3, a Celery worker.

Each is started once per test session on 127.0.0.1 with free ports, by the same code
``dcmpress demo`` uses (producer/stack.py), and stopped at the end. Tests isolate
themselves with their own buckets and batch ids.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dcmpress.stack.services import CeleryWorker, RedisServer, SeaweedS3, dcmpress_env
from worker.runtime.ledger import Ledger
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

# the readers' fixtures: OHIF's loader (Node) and a PACS (Orthanc)
pytest_plugins = ["tests.viewer", "tests.pacs"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throwaway redis-server."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A throwaway SeaweedFS S3 server."""
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="session")
def stack_env(
    redis_server: RedisServer, s3_server: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment pointing dcmpress (CLI, worker, settings) at the test servers."""
    return {
        **dcmpress_env(redis_server, s3_server),
        "DCMPRESS_QUEUE": f"dcmpress-test-{uuid.uuid4().hex[:6]}",
        # state (the listener's spool) under the session's temporary directory, never ~
        "XDG_STATE_HOME": str(tmp_path_factory.mktemp("state")),
        # done records stay in Redis, where tests read them while the session's worker
        # runs for minutes (tests/integration/test_archive.py turns the archive on)
        "DCMPRESS_ARCHIVE": "false",
        # nothing else: the time limits, retries and backoff users get by default
        # (a test that shortens one says so next to it)
    }


@pytest.fixture
def settings(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> WorkerSettings:
    """WorkerSettings for in-process use, from the same environment."""
    for name, value in stack_env.items():
        monkeypatch.setenv(name, value)
    return WorkerSettings()


@pytest.fixture
def ledger(settings: WorkerSettings) -> Iterator[Ledger]:
    """A ledger client on the test Redis."""
    ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds)
    yield ledger
    ledger.redis.close()


@pytest.fixture
def storage(settings: WorkerSettings) -> Storage:
    """A Storage client on the test S3 server, as a pool process has it."""
    return Storage(settings, serves_objects=True)


@pytest.fixture
def bucket_pair(s3_server: SeaweedS3) -> Iterator[tuple[str, str]]:
    """A fresh source and destination bucket, removed afterwards.

    SeaweedFS gives every bucket volumes of its own, from a number set by the free disk
    space: a session that kept its buckets ran out of them (PUT: InternalError).
    """
    client = s3_server.client()
    suffix = uuid.uuid4().hex[:8]
    source, dest = f"src-{suffix}", f"dst-{suffix}"
    client.create_bucket(Bucket=source)
    client.create_bucket(Bucket=dest)
    yield source, dest
    for bucket in (source, dest):
        _remove_bucket(client, bucket)
    client.close()


def _remove_bucket(client: Any, bucket: str) -> None:
    """Delete every object of ``bucket``, then the bucket (best effort)."""
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=bucket)
    except Exception:  # a test may have removed it, or the server is gone already
        pass


@pytest.fixture(scope="session")
def celery_worker(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    """One real `celery -A worker worker` with two processes for the whole session."""
    root = Path(__file__).resolve().parents[1]
    env = {**stack_env, "PYTHONPATH": str(root)}
    worker = CeleryWorker(env, tmp_path_factory.mktemp("celery"), concurrency=2)
    with worker:
        yield worker


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``dcmpress`` in a child process with ``env`` added."""
    return subprocess.run(
        [sys.executable, "-m", "dcmpress", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "160", **env},
        check=False,
    )


def message_keys(raws: list[bytes]) -> list[str]:
    """Object keys of Celery messages as Redis holds them (kombu envelopes)."""
    keys = []
    for raw in raws:
        envelope = json.loads(raw)
        args, _, _ = json.loads(base64.b64decode(envelope["body"]))
        keys.append(args[0]["key"])
    return keys


def queued_keys(ledger: Ledger, queue: str) -> list[str]:
    """Object keys of the Celery messages waiting in ``queue`` (read from Redis)."""
    return message_keys(ledger.redis.lrange(queue, 0, -1))  # type: ignore[arg-type]


def wait_for_batch(
    ledger: Ledger, batch: str, expected: int, timeout: float = 180
) -> dict[str, Any]:
    """Poll the ledger until ``expected`` objects of ``batch`` are finished."""
    deadline = time.monotonic() + timeout
    counts: dict[str, float] = {}
    while time.monotonic() < deadline:
        counts = ledger.counts(batch)
        finished = sum(counts.get(state, 0) for state in ("done", "skipped", "failed"))
        pending = counts.get("queued", 0) + counts.get("running", 0)
        if finished >= expected and pending == 0:
            return counts
        time.sleep(0.2)
    raise AssertionError(f"batch {batch} did not finish in {timeout}s: {counts}")
