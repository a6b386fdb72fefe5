"""A real ``celery -A worker flower`` for tests, and a tiny HTTP client for it.

Flower is started with the environment it is given (the workers' ``DCMPRESS_*``), on a
free loopback port, with basic auth, from an empty directory (no ``flowerconfig.py``
from the repository, no stray state files), and stopped at the end.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from dcmpress.stack.services import free_port

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "dcm", "press"  # Flower's basic auth unless a test gives its own
T = TypeVar("T")

# never the environment's proxies: every request here goes to 127.0.0.1
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Flower:
    """A running Flower child process and a tiny HTTP client for it."""

    def __init__(
        self, proc: subprocess.Popen[bytes], port: int, log_path: Path, auth: tuple[str, str]
    ) -> None:
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.auth = auth

    def get(self, path: str, *, auth: bool = True, **params: str) -> tuple[int, str]:
        """GET ``path`` and return (status, body); HTTP errors are returned, not raised."""
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(url)
        if auth:
            token = base64.b64encode(":".join(self.auth).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with _opener.open(request, timeout=10) as response:
                return int(response.status), response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode("utf-8", "replace")

    def log(self) -> str:
        """The end of Flower's output."""
        return self.log_path.read_text(errors="replace")[-4000:]

    def poll(self, what: str, probe: Callable[[], T | None], timeout: float = 60) -> T:
        """Call ``probe`` until it returns something; fail with Flower's log if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"flower exited ({self.proc.returncode}) before {what}:\n{self.log()}")
            with contextlib.suppress(OSError):  # not listening yet, connection reset...
                found = probe()
                if found is not None:
                    return found
            time.sleep(0.25)
        pytest.fail(f"flower: {what} not seen after {timeout:.0f} s; log:\n{self.log()}")


def ok(reply: tuple[int, str], needle: str = "") -> str | None:
    """The body if the reply is 200 (and contains ``needle``), else None."""
    status, body = reply
    return body if status == 200 and needle in body else None


@contextlib.contextmanager
def running_flower(
    env: dict[str, str],
    workdir: Path,
    *,
    worker: str | None = None,
    auth: tuple[str, str] = (USER, PASSWORD),
) -> Iterator[Flower]:
    """Flower with ``os.environ`` (no ``FLOWER_*``) plus ``env``, answering its API; with
    ``worker`` (a node name), also receiving that worker's events."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")},
        **env,
        "PYTHONPATH": str(ROOT),
    }
    argv = [
        sys.executable, "-m", "celery", "-A", "worker", "flower",
        "--address=127.0.0.1", f"--port={port}", f"--basic-auth={':'.join(auth)}",
    ]  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "flower.log"
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        server = Flower(proc, port, log_path, auth)
        server.poll("/api/workers answering", lambda: ok(server.get("/api/workers", refresh="1")))
        if worker is not None:
            # The event receiver runs in its own thread: wait for the worker's heartbeat
            # events (every 2 s) so that the task events that follow are not missed.
            online = f'flower_worker_online{{worker="{worker}"}} 1.0'
            server.poll("worker heartbeat events", lambda: ok(server.get("/metrics"), online))
        yield server
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
