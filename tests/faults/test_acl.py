"""The whole job as a least-privilege Redis user, and a missing permission in one line.

A ``redis-server`` of the test's own, with the default user off, an ``admin`` user
for the test and a ``dcmpress`` user holding exactly the rules of
:func:`worker.runtime.acl.acl_rules` (what the docs tell operators to set). The
producer, a worker as deployed (gossip and mingle on), ``status``, ``report``,
``retry``, ``reconcile``, the listener's webhook and Flower all run as that user, and
the server's ACL LOG must show no refusal but the one the rules make on purpose.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3, find_redis_server, free_port
from tests import docs
from tests.conftest import run_cli, wait_for_batch
from tests.flower import ok, running_flower
from tests.integration.test_listen import minio_event, post
from worker.runtime.acl import COMMANDS, KEY_PATTERNS, acl_rules, channel_patterns
from worker.runtime.ledger import Ledger

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SECURITY = "TLS, Redis users, secrets"  # the docs' section that quotes the rules
QUEUE = "dcmpress"  # the default, so that the rules are exactly the documented ones
# Left out, and done without: the workers' persistence check (CONFIG GET), redis-py's
# naming of its connections (CLIENT SETINFO). Redis 6.2 logs commands, 7.x subcommands.
DELIBERATE = {"config", "config|get", "client", "client|setinfo"}


@dataclass
class AclRedis:
    """A redis-server whose ``dcmpress`` user has the documented rules."""

    admin: redis.Redis
    url: str  # the dcmpress user's

    def set_user(self, *rules: str) -> None:
        """``ACL SETUSER dcmpress`` with ``rules``, by the admin."""
        self.admin.execute_command("ACL", "SETUSER", "dcmpress", *rules)  # type: ignore[no-untyped-call]

    def refusals(self) -> set[str]:
        """What the server's ACL LOG says it refused (commands, keys, channels)."""
        return {str(entry["object"]) for entry in self.admin.acl_log()}


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    admin_password, password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    port = free_port()
    argv = [find_redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path), "--user", "default", "off",
            "--user", "admin", "on", f">{admin_password}", "~*", "&*", "+@all"]  # fmt: skip
    with (tmp_path / "redis.log").open("wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    admin = redis.Redis(port=port, username="admin", password=admin_password, decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if admin.ping():
                    break
            assert server.poll() is None and time.monotonic() < deadline, "redis-server"
            time.sleep(0.05)
        acl = AclRedis(admin, f"redis://dcmpress:{password}@127.0.0.1:{port}/0")
        acl.set_user("reset", "on", f">{password}", *acl_rules(QUEUE).split())
        yield acl
    finally:
        admin.close()
        server.terminate()
        server.wait(10)


class DeployedWorker(CeleryWorker):
    """``celery -A worker worker`` with gossip and mingle on, as the image runs it."""

    def _argv(self) -> list[str]:
        return [a for a in super()._argv() if a not in ("--without-gossip", "--without-mingle")]


@contextlib.contextmanager
def listening(env: dict[str, str], dest: str, workdir: Path) -> Iterator[str]:
    """``dcmpress listen --http`` on a free loopback port; yields its base URL."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "listen.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dcmpress", "listen", "--http", f"127.0.0.1:{port}",
             "--dest", f"s3://{dest}/events/", "--batch", "acl"],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while b"ready" not in (workdir / "listen.log").read_bytes():
            assert proc.poll() is None, (workdir / "listen.log").read_text()
            assert time.monotonic() < deadline, (workdir / "listen.log").read_text()
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def test_the_docs_quote_the_rules_the_tests_use() -> None:
    section = docs.section(SECURITY)
    assert f"ACL SETUSER dcmpress reset on >PASSWORD {acl_rules()}\n" in section
    counts = f"{len(COMMANDS)} commands, {len(KEY_PATTERNS)} key patterns and "
    assert counts + f"{len(channel_patterns())} channels" in " ".join(section.split())
    assert "~orders*" in acl_rules("orders") and "+select" in acl_rules(db=2)
    assert "&/2.celery.pidbox" in acl_rules(db=2) and "~orders*" not in acl_rules()


def test_the_whole_job_runs_as_the_least_privilege_user(
    acl_redis: AclRedis, stack_env: dict[str, str], s3_server: SeaweedS3,
    bucket_pair: tuple[str, str], tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    env = {**stack_env, "DCMPRESS_REDIS_URL": acl_redis.url, "DCMPRESS_QUEUE": QUEUE}
    client = s3_server.client()
    client.put_object(Bucket=source, Key="a.dcm", Body=to_bytes(make_image(64, 64)))
    client.put_object(Bucket=source, Key="notes.txt", Body=b"not dicom" * 8)
    head = client.head_object(Bucket=source, Key="a.dcm")
    client.close()
    batch = f"acl-{uuid.uuid4().hex[:6]}"
    ledger = Ledger.from_url(acl_redis.url, 3600)
    worker = DeployedWorker({**env, "PYTHONPATH": str(ROOT)}, tmp_path / "w", concurrency=1)
    with worker, running_flower(env, tmp_path / "flower", worker=worker.hostname) as flower:
        proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
                       "--batch", batch, "--not-dicom", "fail")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        counts = wait_for_batch(ledger, batch, 2)
        assert (counts.get("done"), counts.get("failed")) == (1, 1), counts
        for args in (("status", batch), ("batches",), ("report", batch, "--format", "ndjson"),
                     ("retry", batch), ("reconcile", batch)):  # fmt: skip
            proc = run_cli(env, *args)
            assert proc.returncode == 0, (args, proc.stderr)
        wait_for_batch(ledger, batch, 2)  # the retried object failed again

        with listening(env, dest, tmp_path / "listen") as url:
            etag = head["ETag"].strip('"')
            status, reply = post(url, minio_event(source, "a.dcm", head["ContentLength"], etag),
                                 token=None)  # fmt: skip
            assert (status, reply["enqueued"]) == (200, 1), reply
            [event_batch] = reply["batches"]
            assert wait_for_batch(ledger, event_batch, 1).get("done") == 1

        status, body = flower.get("/api/queues/length")
        assert status == 200 and QUEUE in {q["name"] for q in json.loads(body)["active_queues"]}
        assert ok(flower.get("/broker"), QUEUE), flower.log()
        assert ok(flower.get("/api/workers", refresh="1"), worker.hostname), flower.log()
        flower.poll(f"a succeeded task of {batch}",
                    lambda: ok(flower.get("/api/tasks", state="SUCCESS"), batch))  # fmt: skip
        worker_log = worker.log_path.read_text()
    ledger.redis.close()
    assert acl_redis.refusals() <= DELIBERATE, acl_redis.refusals()
    assert "NOPERM" not in worker_log and "no permissions" not in worker_log
    assert "NOPERM" not in flower.log()


@pytest.mark.parametrize(
    ("change", "refused", "todo"),
    [
        (["-evalsha"], "the 'evalsha' command", r"ACL SETUSER dcmpress \+evalsha"),
        (["-hset"], "the 'hset' command", r"ACL SETUSER dcmpress \+hset"),
        # called only by the ledger's Lua script: Redis 7.0 does not name it, later ones do
        (["-hincrby"], "the 'hincrby' command|a command of a Lua script",
         r"ACL SETUSER dcmpress \+hincrby|the server's ACL LOG names the command it refused"),
        (["resetkeys", *(f"~{k}" for k in KEY_PATTERNS if k != "dcmpress*")], "a key",
         "key and channel patterns"),
    ],
    ids=["evalsha", "hset", "in-a-script", "ledger-keys"],
)  # fmt: skip
def test_a_missing_permission_is_one_line_naming_it_and_the_fix(
    acl_redis: AclRedis, stack_env: dict[str, str], s3_server: SeaweedS3,
    bucket_pair: tuple[str, str], change: list[str], refused: str, todo: str,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    client = s3_server.client()
    client.put_object(Bucket=source, Key="a.dcm", Body=to_bytes(make_image(8, 8)))
    client.close()
    acl_redis.set_user(*change)
    env = {**stack_env, "DCMPRESS_REDIS_URL": acl_redis.url, "DCMPRESS_QUEUE": QUEUE}
    proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) <= 3, proc.stderr  # at most the batch's name and the spinner before
    [line] = [line for line in lines if line.startswith("error:")]
    assert line.startswith("error: Redis at redis://dcmpress:***@127.0.0.1:"), line
    assert re.search(f"refused ({refused}) to user dcmpress", line), line
    page = docs.where(SECURITY).relative_to(docs.ROOT)
    assert re.search(todo, line) and f"'{SECURITY}' ({page};" in line, line
    assert acl_redis.url.split(":")[2].split("@")[0] not in line  # the password
