"""`dcmpress listen`: events from a real SQS endpoint (moto server) and real webhooks
(SeaweedFS's filer, plus MinIO- and Ceph-shaped posts) become compressed outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3, free_port
from producer.listen import POISON_KEY, EventFilter, EventIntake, SqsListener
from producer.webhook import serve_http
from tests.conftest import wait_for_batch
from worker.codec.options import CompressionOptions
from worker.runtime.app import create_app
from worker.runtime.contract import S3Location
from worker.runtime.ledger import Ledger
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def make_intake(settings: WorkerSettings, ledger: Ledger, dest: str, queue: str) -> EventIntake:
    """An intake writing into ``dest`` through ``queue``."""
    return EventIntake(
        create_app(settings), ledger, Storage(settings), queue, S3Location(bucket=dest),
        False, CompressionOptions(target=["jpeg-ls"]), EventFilter(),
        batch_name=f"ev-{uuid.uuid4().hex[:6]}",
    )  # fmt: skip


@pytest.fixture
def webhook(
    settings: WorkerSettings, ledger: Ledger, bucket_pair: tuple[str, str], celery_worker: Any
) -> Iterator[tuple[str, EventIntake]]:
    """The webhook server (token 's3cret') in a thread, feeding the session worker."""
    intake = make_intake(settings, ledger, bucket_pair[1], settings.queue)
    server = serve_http(intake, "127.0.0.1", 0, "s3cret", lambda: bool(ledger.redis.ping()))
    yield f"http://127.0.0.1:{server.server_port}", intake
    server.shutdown()


def post(url: str, body: Any, token: str | None = "s3cret") -> tuple[int, dict[str, Any]]:
    """POST JSON; return (status, JSON reply)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/events", data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def minio_event(bucket: str, key: str, size: int, etag: str) -> dict[str, Any]:
    """A MinIO webhook body (records in AWS shape, 's3:' event names, top-level Key)."""
    quoted = urllib.parse.quote_plus(key, safe="")
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{bucket}/{key}",
        "Records": [{
            "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
            "eventTime": "2026-11-26T10:00:00.000Z", "eventName": "s3:ObjectCreated:Put",
            "userIdentity": {"principalId": "minioadmin"},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
                   "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                   "object": {"key": quoted, "size": size, "eTag": etag,
                              "contentType": "application/dicom", "sequencer": "1"}},
        }],
    }  # fmt: skip


def ceph_event(bucket: str, key: str, size: int, etag: str) -> dict[str, Any]:
    """A Ceph RGW push body (size as a string, raw key, opaqueData)."""
    return {"Records": [{
        "eventVersion": "2.2", "eventSource": "ceph:s3", "awsRegion": "default",
        "eventTime": "2026-11-26T10:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "dcmpress",
               "bucket": {"name": bucket, "id": "1", "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": key, "size": str(size), "eTag": etag, "versionId": "",
                          "sequencer": "F7E6D75DC742D108", "metadata": [], "tags": []}},
        "opaqueData": "",
    }]}  # fmt: skip


def test_minio_and_ceph_events_become_compressed_outputs_once(
    webhook: tuple[str, EventIntake], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger,
) -> None:  # fmt: skip
    url, intake = webhook
    source, dest = bucket_pair
    client = s3_server.client()
    for key in ("minio/a b+c.dcm", "ceph/x.dcm"):
        client.put_object(Bucket=source, Key=key, Body=to_bytes(make_image(64, 64, seed=3)))
    heads = {k: client.head_object(Bucket=source, Key=k) for k in ("minio/a b+c.dcm", "ceph/x.dcm")}
    size = lambda k: int(heads[k]["ContentLength"])  # noqa: E731
    etag = lambda k: heads[k]["ETag"].strip('"')  # noqa: E731
    status, reply = post(url, minio_event(source, "minio/a b+c.dcm", size("minio/a b+c.dcm"),
                                          etag("minio/a b+c.dcm")))  # fmt: skip
    assert (status, reply["enqueued"]) == (200, 1), reply
    status, reply = post(url, ceph_event(source, "ceph/x.dcm", size("ceph/x.dcm"),
                                         etag("ceph/x.dcm")))  # fmt: skip
    assert (status, reply["enqueued"]) == (200, 1), reply
    # at-least-once delivery: the same event again is absorbed
    status, reply = post(url, ceph_event(source, "ceph/x.dcm", size("ceph/x.dcm"),
                                         etag("ceph/x.dcm")))  # fmt: skip
    assert (status, reply["enqueued"], reply["duplicates"]) == (200, 0, 1)
    batch = intake.batch_for(source)
    wait_for_batch(ledger, batch, 2)
    assert ledger.counts(batch)["done"] == 2
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=dest)["Contents"]}
    assert listed == {"minio/a b+c.dcm", "ceph/x.dcm"}


def test_webhook_auth_health_and_poison_messages(
    webhook: tuple[str, EventIntake], ledger: Ledger
) -> None:
    url, _ = webhook
    assert post(url, {"Records": []}, token=None)[0] == 401
    assert post(url, {"Records": []}, token="wrong")[0] == 401
    with urllib.request.urlopen(url + "/healthz", timeout=10) as response:
        assert response.status == 200
    before = ledger.redis.llen(POISON_KEY)
    status, reply = post(url, b"{not json")
    assert status == 202 and "rejected" in reply  # accepted so the sender stops retrying
    assert ledger.redis.llen(POISON_KEY) == before + 1
    entry = json.loads(ledger.redis.lindex(POISON_KEY, 0))  # type: ignore[arg-type]
    assert entry["body"] == "{not json" and entry["source"].startswith("http:")


def test_seaweedfs_filer_webhook_drives_the_listener_for_real(
    stack_env: dict[str, str], ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    queue = f"weedhook-{uuid.uuid4().hex[:6]}"
    # the listener first (the filer posts to it), then a SeaweedFS configured to post
    env = {**stack_env, "DCMPRESS_QUEUE": queue}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    weed_dir = tmp_path / "weed2"
    weed_dir.mkdir()
    s3 = SeaweedS3(weed_dir)
    settings = WorkerSettings()
    intake = make_intake(settings, ledger, "hook-dst", queue)
    server = serve_http(intake, "127.0.0.1", 0, "t0ken", lambda: True)
    (weed_dir / "notification.toml").write_text(
        "[notification.webhook]\nenabled = true\n"
        f'endpoint = "http://127.0.0.1:{server.server_port}/events"\n'
        'bearer_token = "t0ken"\n'
    )
    try:
        with s3:
            s3_env = {**env, **s3.env()}
            for name, value in s3_env.items():
                monkeypatch.setenv(name, value)
            intake.storage = Storage(WorkerSettings())
            client = s3.client()
            client.create_bucket(Bucket="hook-src")
            client.create_bucket(Bucket="hook-dst")
            with CeleryWorker({**s3_env, "PYTHONPATH": str(ROOT)}, tmp_path / "w", concurrency=1):
                client.put_object(Bucket="hook-src", Key="in/scan 1.dcm",
                                  Body=to_bytes(make_image(64, 64, bits_stored=12)))  # fmt: skip
                batch = intake.batch_for("hook-src")
                deadline = time.monotonic() + 60
                while ledger.get_batch(batch) is None and time.monotonic() < deadline:
                    time.sleep(0.2)
                counts = wait_for_batch(ledger, batch, 1)
                assert counts.get("done") == 1, counts
                # our own output raised filer events too: none may become a job
                time.sleep(2)
                assert ledger.counts(batch).get("done") == 1
                assert intake.batch_for("hook-dst") not in ledger.batch_ids()
            head = client.head_object(Bucket="hook-dst", Key="in/scan 1.dcm")
            assert head["Metadata"]["dcmpress-output"] == "1"
    finally:
        server.shutdown()


@pytest.fixture
def moto_server() -> Iterator[str]:
    """moto's S3 + SQS emulator on 127.0.0.1 (a real HTTP server, in-process)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_sqs_s3_notifications_end_to_end_with_sns_eventbridge_and_poison(
    moto_server: str, stack_env: dict[str, str], ledger: Ledger, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import boto3

    queue = f"sqs-{uuid.uuid4().hex[:6]}"
    env = {
        **stack_env, "DCMPRESS_QUEUE": queue, "DCMPRESS_S3_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = WorkerSettings()
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    queue_url = sqs.create_queue(QueueName="dicom-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    s3.create_bucket(Bucket="moto-src")
    s3.create_bucket(Bucket="moto-dst")
    s3.put_bucket_notification_configuration(
        Bucket="moto-src",
        NotificationConfiguration={"QueueConfigurations": [{
            "QueueArn": arn["Attributes"]["QueueArn"], "Events": ["s3:ObjectCreated:*"],
        }]},
    )  # fmt: skip
    intake = make_intake(settings, ledger, "moto-dst", queue)
    listener = SqsListener(sqs, queue_url, intake, wait_seconds=1, visibility_timeout=2)

    def drain() -> None:
        for _ in range(5):
            listener.poll_once()

    drain()  # moto's s3:TestEvent, if any, is acknowledged and deleted
    with CeleryWorker({**env, "PYTHONPATH": str(ROOT)}, tmp_path, concurrency=1):
        data = to_bytes(make_image(64, 64, bits_stored=12))
        s3.put_object(Bucket="moto-src", Key="a/one two.dcm", Body=data)
        # a listener that dies before enqueueing loses nothing: SQS shows it again
        real_handle = intake.handle_body
        monkeypatch.setattr(intake, "handle_body", lambda body, source: (_ for _ in ()).throw(
            RuntimeError("redis down (injected)")))  # fmt: skip
        assert listener.poll_once() == 1
        monkeypatch.setattr(intake, "handle_body", real_handle)
        time.sleep(2.5)  # the visibility timeout passes
        drain()
        batch = intake.batch_for("moto-src")
        wait_for_batch(ledger, batch, 1)
        # the same object announced again through SNS and EventBridge: no second job
        etag = s3.head_object(Bucket="moto-src", Key="a/one two.dcm")["ETag"].strip('"')
        record = {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "eventName": "ObjectCreated:Put",
            "s3": {
                "bucket": {"name": "moto-src"},
                "object": {"key": "a/one+two.dcm", "size": len(data), "eTag": etag},
            },
        }
        sns = {
            "Type": "Notification",
            "MessageId": "1",
            "TopicArn": "arn:aws:sns:x",
            "Message": json.dumps({"Records": [record]}),
        }
        bridge = {
            "version": "0",
            "source": "aws.s3",
            "detail-type": "Object Created",
            "detail": {
                "bucket": {"name": "moto-src"},
                "object": {"key": "a/one two.dcm", "size": len(data), "etag": etag},
            },
        }
        for body in (sns, bridge, "not json at all"):
            sqs.send_message(
                QueueUrl=queue_url, MessageBody=body if isinstance(body, str) else json.dumps(body)
            )
        drain()  # fmt: skip
        counts = wait_for_batch(ledger, batch, 1)
    assert counts.get("done") == 1 and counts.get("queued", 0) == 0
    output = s3.get_object(Bucket="moto-dst", Key="a/one two.dcm")
    assert output["Metadata"]["dcmpress-output"] == "1"
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"  # everything handled and deleted
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    assert json.loads(ledger.redis.lindex(POISON_KEY, 0))["body"] == "not json at all"  # type: ignore[arg-type]


def test_the_listen_command_serves_the_webhook_until_sigterm(
    stack_env: dict[str, str], ledger: Ledger, bucket_pair: tuple[str, str], tmp_path: Path
) -> None:
    source, dest = bucket_pair
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nname = "default"\ntarget = ["rle"]\n')
    port = free_port()
    batch = f"cli-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "COLUMNS": "160",
        **stack_env,
        "DCMPRESS_QUEUE": f"cli-listen-{uuid.uuid4().hex[:6]}",
    }  # no worker: jobs stay
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcmpress", "listen", "--http", f"127.0.0.1:{port}",
         "--token", "t0k", "--dest", f"s3://{dest}/", "--batch", batch,
         "--policy", str(policy)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "ready":
                break
        record = {
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "eventName": "s3:ObjectCreated:Put",
            "s3": {
                "bucket": {"name": source},
                "object": {"key": "cli/one.dcm", "size": 10, "eTag": "e1"},
            },
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/minio",
            data=json.dumps({"Records": [record]}).encode(),
            method="POST",
            headers={"Authorization": "Bearer t0k"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert json.loads(reply.read())["enqueued"] == 1
        found = ledger.get_record(f"{batch}-{source}", "cli/one.dcm")
        assert found is not None and found.state == "queued"
        spec = ledger.get_batch(f"{batch}-{source}")
        assert spec is not None and spec.policy == policy.read_text()  # stored with it
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "stopped" in output
