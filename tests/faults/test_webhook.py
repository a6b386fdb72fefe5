"""The webhook under abuse, through raw sockets against the real uvicorn server.

Malformed lengths, short or endless bodies, trickling headers, floods of connections,
a missing token, partly bad messages: each gets a clear answer (or a closed
connection) and nothing is lost or enqueued wrongly. Timeouts are shortened here; the
defaults users get are asserted as values.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import SeaweedS3, free_port
from producer.listen import POISON_KEY, EventFilter, EventIntake
from producer.webhook import WebhookLimits, WebhookServer, serve_http
from tests.conftest import run_cli
from worker import procfs
from worker.codec.options import CompressionOptions
from worker.runtime.app import create_app
from worker.runtime.contract import S3Location
from worker.runtime.ledger import Ledger
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration
TOKEN = "s3cret"
FAST = WebhookLimits(max_body_bytes=64 * 1024, header_timeout=1.0, body_timeout=1.0,
                     max_concurrency=8)  # fmt: skip


@pytest.fixture
def intake(settings: WorkerSettings, ledger: Ledger, bucket_pair: tuple[str, str]) -> EventIntake:
    """An intake into its own queue (no worker consumes it: jobs stay countable)."""
    return EventIntake(
        create_app(settings), ledger, Storage(settings), f"hook-{uuid.uuid4().hex[:6]}",
        S3Location(bucket=bucket_pair[1]), False, CompressionOptions(), EventFilter(),
        batch_name=f"hook-{uuid.uuid4().hex[:6]}",
    )  # fmt: skip


@pytest.fixture
def server(intake: EventIntake, ledger: Ledger) -> Iterator[WebhookServer]:
    """The webhook with short timeouts and a small body limit."""
    webhook = serve_http(intake, "127.0.0.1", 0, TOKEN, lambda: True, FAST)
    yield webhook
    webhook.shutdown()


def raw(server: WebhookServer, data: bytes, wait: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers before closing."""
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def status_of(reply: bytes) -> int:
    """The status code of a raw HTTP reply (0 if the connection closed without one)."""
    line = reply.split(b"\r\n", 1)[0]
    return int(line.split()[1]) if line.startswith(b"HTTP/") else 0


def request(body: bytes, headers: dict[str, str] | None = None, path: str = "/events") -> bytes:
    """A raw POST with Content-Length, authorised."""
    lines = [f"POST {path} HTTP/1.1", "Host: listener", f"Authorization: Bearer {TOKEN}",
             f"Content-Length: {len(body)}", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def s3_event(bucket: str, key: str, etag: str | None = "abc123") -> dict[str, Any]:
    """An AWS-shaped record."""
    obj: dict[str, Any] = {"key": key, "size": 1000, "sequencer": "0A1B"}
    if etag:
        obj["eTag"] = etag
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": bucket}, "object": obj}}  # fmt: skip


def reply_json(reply: bytes) -> dict[str, Any]:
    """The JSON body of a raw reply."""
    return dict(json.loads(reply.split(b"\r\n\r\n", 1)[1] or b"{}"))


def test_the_defaults_users_get() -> None:
    assert WebhookLimits() == WebhookLimits(
        max_body_bytes=4 * 1024 * 1024, header_timeout=10.0, body_timeout=30.0,
        max_concurrency=64, max_connections=1024, keep_alive=5,
    )  # fmt: skip


@pytest.mark.parametrize("length", ["abc", "1e12", "-1", "12, 13"])
def test_a_malformed_content_length_is_400(server: WebhookServer, length: str) -> None:
    data = (f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {length}\r\n\r\n{{}}").encode()  # fmt: skip
    assert status_of(raw(server, data)) == 400


def test_a_huge_declared_body_is_413_without_reading_it(server: WebhookServer) -> None:
    data = (f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Length: 1000000000000\r\n\r\n").encode()  # fmt: skip
    started = time.monotonic()
    assert status_of(raw(server, data)) == 413
    assert time.monotonic() - started < FAST.body_timeout  # answered at once


def test_a_body_over_the_limit_is_413_chunked_or_not(server: WebhookServer) -> None:
    big = b"x" * (FAST.max_body_bytes + 1)
    assert status_of(raw(server, request(big))) == 413
    chunked = (f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode()  # fmt: skip
    for _ in range(3):
        piece = b"y" * (FAST.max_body_bytes // 2)
        chunked += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    assert status_of(raw(server, chunked + b"0\r\n\r\n")) == 413


def test_a_body_shorter_than_its_length_is_408_not_a_hang(server: WebhookServer) -> None:
    data = (f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Length: 500\r\n\r\n{\"Records\": [").encode()  # fmt: skip
    started = time.monotonic()
    assert status_of(raw(server, data)) == 408
    assert time.monotonic() - started < FAST.body_timeout + 2


def test_headers_that_never_end_close_the_connection(server: WebhookServer) -> None:
    started = time.monotonic()
    reply = raw(server, b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ", wait=10)
    assert reply == b"" and time.monotonic() - started < FAST.header_timeout + 2


def test_sockets_that_send_no_headers_hold_no_event_slot(
    server: WebhookServer, bucket_pair: tuple[str, str]
) -> None:
    """100 connections sending nothing or half a header, more than the 8 event slots:
    uvicorn's own limit counts open connections, so it must not be the event limit."""
    held = []
    try:
        for number in range(100):
            sock = socket.create_connection(("127.0.0.1", server.server_port))
            if number % 2:
                sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")  # headers still coming
            held.append(sock)
        body = json.dumps({"Records": [s3_event(bucket_pair[0], "busy.dcm")]}).encode()
        reply = raw(server, request(body))
        assert status_of(reply) == 200 and reply_json(reply)["enqueued"] == 1
    finally:
        for sock in held:
            sock.close()


def test_requests_beyond_the_64_in_flight_get_503_until_one_ends(intake: EventIntake) -> None:
    """The documented limit with its default (docs/guides/events.md): 64 requests being
    handled (their headers in, their bodies still coming), the 65th answered 503; a
    request without the token is answered 401 whatever the load, holding no slot."""
    limits = WebhookLimits(max_body_bytes=64 * 1024, header_timeout=1.0, body_timeout=2.0)
    webhook = serve_http(intake, "127.0.0.1", 0, TOKEN, lambda: True, limits)
    held = []
    try:
        for _ in range(limits.max_concurrency):
            sock = socket.create_connection(("127.0.0.1", webhook.server_port), timeout=10)
            sock.sendall(request(b"0123456789")[:-10])  # the headers, then a stalled body
            held.append(sock)
        time.sleep(0.5)
        assert status_of(raw(webhook, request(b"{}"))) == 503
        unauthorised = request(b"{}").replace(f"Bearer {TOKEN}".encode(), b"Bearer guess")
        assert status_of(raw(webhook, unauthorised)) == 401
        assert [status_of(sock.recv(65536)) for sock in held] == [408] * len(held)
        assert status_of(raw(webhook, request(b""))) == 200  # their slots are free again
    finally:
        for sock in held:
            sock.close()
        webhook.shutdown()


def test_a_token_is_required(server: WebhookServer) -> None:
    data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert status_of(raw(server, data)) == 401
    by_query = data.replace(b"POST / ", f"POST /?token={TOKEN} ".encode())
    assert status_of(raw(server, by_query)) == 200  # Pub/Sub push puts it in the URL
    wrong = data.replace(b"POST / ", b"POST /?token=guess ")
    assert status_of(raw(server, wrong)) == 401


def test_listening_beyond_loopback_without_a_token_is_refused(stack_env: dict[str, str]) -> None:
    proc = run_cli({k: v for k, v in stack_env.items() if k != "DCMPRESS_WEBHOOK_TOKEN"},
                   "listen", "--http", "0.0.0.0:0", "--dest", "s3://out/")  # fmt: skip
    assert proc.returncode == 2
    assert "give --token" in proc.stderr


def test_one_bad_record_is_poisoned_alone_and_the_rest_enqueued(
    server: WebhookServer, intake: EventIntake, ledger: Ledger, bucket_pair: tuple[str, str]
) -> None:
    source = bucket_pair[0]
    bad = {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"bucket": {}}}
    body = json.dumps({"Records": [s3_event(source, "good.dcm"), bad]}).encode()
    before = ledger.redis.llen(POISON_KEY)
    reply = raw(server, request(body))
    assert status_of(reply) == 200
    assert reply_json(reply) | {"batches": []} == {
        "enqueued": 1, "duplicates": 0, "ignored": 0, "rejected": 1, "spooled": 0,
        "batches": [],
    }  # fmt: skip
    assert ledger.redis.llen(POISON_KEY) == before + 1
    entry = json.loads(ledger.redis.lindex(POISON_KEY, 0))  # type: ignore[arg-type]
    assert entry["reason"].startswith("1 records rejected: Records[1]:")
    assert json.loads(entry["body"]) == [bad]


def test_the_rejected_records_of_one_message_are_one_poison_entry(
    server: WebhookServer, intake: EventIntake, ledger: Ledger, bucket_pair: tuple[str, str]
) -> None:
    """One good record beside 9,999 empty ones (the most records a message may hold):
    one entry (a count and the first reasons), not one entry, log line and Redis round
    trip per record."""
    body = json.dumps({"Records": [s3_event(bucket_pair[0], "good2.dcm")] + [{}] * 9_999})
    before = ledger.redis.llen(POISON_KEY)
    reply = raw(server, request(body.encode()), wait=60)
    assert status_of(reply) == 200
    assert reply_json(reply)["enqueued"] == 1 and reply_json(reply)["rejected"] == 9_999
    assert ledger.redis.llen(POISON_KEY) == before + 1
    entry = json.loads(ledger.redis.lindex(POISON_KEY, 0))  # type: ignore[arg-type]
    assert entry["reason"].startswith("9,999 records rejected: Records[1]:")
    assert entry["reason"].endswith("(and 9,996 more)") and len(json.loads(entry["body"])) == 3


def test_poison_while_redis_is_away_is_503_so_the_sender_retries(
    server: WebhookServer, intake: EventIntake, monkeypatch: pytest.MonkeyPatch
) -> None:
    def away(*_: Any) -> None:
        raise ConnectionError("Redis is away")

    monkeypatch.setattr(intake, "record_poison", away)
    reply = raw(server, request(b'{"not": "an event"}'))
    assert status_of(reply) == 503


@pytest.mark.parametrize(
    ("head", "status"),
    [
        # both framings: a proxy and the listener could read different bodies (smuggling)
        ("POST /e HTTP/1.1\r\nHost: l\r\nContent-Length: 5\r\n"
         "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n", 400),
        # HTTP/1.0 without a length: the body would end only when the connection does
        ("POST /e HTTP/1.0\r\nHost: l\r\n\r\n", 411),
    ],
)  # fmt: skip
def test_ambiguous_framing_is_refused(server: WebhookServer, head: str, status: int) -> None:
    headers = head.replace("Host: l\r\n", f"Host: l\r\nAuthorization: Bearer {TOKEN}\r\n")
    assert status_of(raw(server, headers.encode())) == status


def test_a_failure_to_enqueue_is_503_without_internal_detail(
    server: WebhookServer, intake: EventIntake, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    def broken(*_: Any) -> Any:
        raise RuntimeError("redis://:hunter2@10.0.0.5 refused (internal detail)")

    monkeypatch.setattr(intake, "handle_body", broken)
    body = json.dumps({"Records": [s3_event(bucket_pair[0], "k.dcm")]}).encode()
    reply = raw(server, request(body))
    assert status_of(reply) == 503
    assert b"hunter2" not in reply and b"internal" not in reply


def _pubsub_push(bucket: str, key: str, data: bytes) -> dict[str, Any]:
    resource = {"kind": "storage#object", "bucket": bucket, "name": key, "size": str(len(data)),
                "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
                "generation": "1700000000000001"}  # fmt: skip
    return {
        "message": {
            "attributes": {"eventType": "OBJECT_FINALIZE", "bucketId": bucket, "objectId": key,
                           "objectGeneration": "1700000000000001",
                           "payloadFormat": "JSON_API_V1"},
            "data": base64.b64encode(json.dumps(resource).encode()).decode(),
            "messageId": "1", "publishTime": "2026-12-01T00:00:00Z",
        },
        "subscription": "projects/p/subscriptions/dcmpress-push",
    }  # fmt: skip


def test_cloud_storage_pubsub_push_and_cloudevents_become_jobs(
    server: WebhookServer, intake: EventIntake, ledger: Ledger, bucket_pair: tuple[str, str]
) -> None:
    source = bucket_pair[0]
    data = b"DICM" * 10
    pushed = raw(server, request(json.dumps(_pubsub_push(source, "gcs/a b.dcm", data)).encode()))
    assert reply_json(pushed)["enqueued"] == 1, pushed
    resource = {"bucket": source, "name": "gcs/c.dcm", "size": "40",
                "md5Hash": base64.b64encode(hashlib.md5(b"c").digest()).decode()}  # fmt: skip
    structured = {"specversion": "1.0", "type": "google.cloud.storage.object.v1.finalized",
                  "source": f"//storage.googleapis.com/projects/_/buckets/{source}",
                  "subject": "objects/gcs/c.dcm", "id": "9", "data": resource}  # fmt: skip
    assert reply_json(raw(server, request(json.dumps(structured).encode())))["enqueued"] == 1
    binary_headers = {
        "ce-specversion": "1.0",
        "ce-id": "10",
        "ce-type": "google.cloud.storage.object.v1.finalized",
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{source}",
        "ce-subject": "objects/gcs/d.dcm",
        "Content-Type": "application/json",
    }
    binary = json.dumps({**resource, "name": "gcs/d.dcm"}).encode()  # fmt: skip
    assert reply_json(raw(server, request(binary, binary_headers)))["enqueued"] == 1
    batch = intake.batch_for(source)
    record = ledger.get_record(batch, "gcs/a b.dcm")
    assert record is not None and record.etag == hashlib.md5(data).hexdigest()[:12]


def test_a_re_upload_without_an_etag_in_its_event_is_not_dropped(
    server: WebhookServer, intake: EventIntake, ledger: Ledger, s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
) -> None:  # fmt: skip
    source = bucket_pair[0]
    client = s3_server.client()
    key_only = {"EventName": "s3:ObjectCreated:Put", "Key": f"{source}/scan.dcm"}  # MinIO
    client.put_object(Bucket=source, Key="scan.dcm", Body=to_bytes(make_image(32, 32, seed=1)))
    assert reply_json(raw(server, request(json.dumps(key_only).encode())))["enqueued"] == 1
    again = raw(server, request(json.dumps(key_only).encode()))
    assert reply_json(again)["duplicates"] == 1  # the same upload, announced twice
    client.put_object(Bucket=source, Key="scan.dcm", Body=to_bytes(make_image(32, 32, seed=2)))
    assert reply_json(raw(server, request(json.dumps(key_only).encode())))["enqueued"] == 1
    etag = client.head_object(Bucket=source, Key="scan.dcm")["ETag"].strip('"')
    record = ledger.get_record(intake.batch_for(source), "scan.dcm")
    assert record is not None and record.etag == etag[:12]


# --- memory: a real listener process under hostile bodies --------------------------------

MIB = 1024 * 1024


def hostile_requests() -> list[tuple[bytes, dict[str, str]]]:
    """4 MiB poison bodies, then the costliest shapes tried under the JSON-value bound
    (each a poison message too): (body, headers)."""
    size = 4 * MIB
    binary_cloudevent = {"ce-specversion": "1.0", "ce-type": "com.example.other"}
    return [
        (b"[" + b",".join([b"{}"] * ((size - 2) // 3)) + b"]", {}),  # 1.4 million objects
        (json.dumps({"Records": [{}] * ((size - 20) // 4)}, separators=(",", ":")).encode(), {}),
        (b"[" + b",".join(b'{"%d":1.5}' % n for n in range(83_000)) + b"]", {}),
        # one character outside the BMP: Python keeps 4 bytes for every one of the text
        (('{"Records":[{"eventSource":"' + "a" * (size - 100) + '\U0001f600"}]}').encode(), {}),
        # its body was parsed on the event loop, outside the bound on parses at once
        (b"{" + b",".join(b'"%d":{"a":1.5}' % n for n in range(60_000)) + b"}",
         binary_cloudevent),
    ]  # fmt: skip


@contextlib.contextmanager
def listener_process(env: dict[str, str], dest: str, spool: Path) -> Iterator[tuple[int, int]]:
    """``dcmpress listen --http`` in a child process with the default limits: (pid, port)."""
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "dcmpress", "listen", "--http", f"127.0.0.1:{port}",
         "--token", TOKEN, "--dest", f"s3://{dest}/", "--spool-dir", str(spool)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env},
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        # one log line per poison body: read them, or a full pipe would stop the listener
        drain = threading.Thread(target=proc.stdout.read, daemon=True)
        try:
            for line in proc.stdout:
                if line.strip() == "ready":
                    break
            drain.start()
            yield proc.pid, port
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if drain.is_alive():
                drain.join(timeout=10)


def post(port: int, body: bytes, headers: dict[str, str] | None = None) -> int:
    """The status of an authorised POST of ``body`` (0: closed without an answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request(body, headers))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return status_of(b"".join(chunks))


def test_hostile_bodies_keep_the_listener_within_its_memory_bound(
    stack_env: dict[str, str], bucket_pair: tuple[str, str], tmp_path: Path
) -> None:
    """The documented bound (docs/guides/events.md): whatever the bodies within the
    limits (4 MiB, 64 at once), the listener's RSS never grows more than 512 MiB (twice
    64 bodies of 4 MiB) over an idle one's. Before the bound, 200 sequential and 2 x 60
    concurrent ``[{},{},...]`` bodies took it from 128 MB to a peak of 10 GB, and left
    it at 1 GB."""
    with listener_process(stack_env, bucket_pair[1], tmp_path / "spool") as (pid, port):
        assert post(port, b'{"Records": []}') == 200  # what every request needs is loaded
        idle = procfs.peak_rss(pid)
        assert idle is not None
        hostile = hostile_requests()
        for number in range(200):
            assert post(port, *hostile[number % 2]) == 202
        for _ in range(2):
            with ThreadPoolExecutor(60) as pool:
                statuses = list(pool.map(lambda n: post(port, *hostile[n % 5]), range(60)))
            assert statuses == [202] * 60
        peak = procfs.peak_rss(pid)
    assert peak is not None and peak - idle < 512 * MIB
