"""`dcmpress enqueue --manifest`: Batch Operations CSV, URL lists and S3 Inventory."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import producer.feeder as feeder_module
from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import SeaweedS3
from producer.feeder import Feeder, ManifestCursor, Step
from producer.sources import ObjectRef
from tests.conftest import run_cli, wait_for_batch
from worker.runtime.app import create_app
from worker.runtime.contract import BatchSpec, S3Location
from worker.runtime.ledger import Ledger
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration

KEYS = ["a/plain.dcm", "b/with space+plus.dcm", "c/ünï,comma.dcm"]


def _upload(s3: SeaweedS3, bucket: str) -> None:
    client = s3.client()
    for index, key in enumerate(KEYS):
        client.put_object(Bucket=bucket, Key=key, Body=to_bytes(make_image(48, 48, seed=index)))


def _reports(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_batch_operations_csv_with_encoded_keys_and_duplicates(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    celery_worker: Any, ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    _upload(s3_server, source)
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        for key in [*KEYS, KEYS[0]]:  # one line twice: one job
            writer.writerow([source, quote(key, safe="/")])
    proc = (
        run_cli(
            stack_env,
            "enqueue",
            "--manifest",
            str(manifest),
            "--dest",
            f"s3://{dest}/",
            "--min-ratio",
            "0",
        )
        if False
        else run_cli(stack_env, "enqueue", "--manifest", str(manifest), "--dest", f"s3://{dest}/")
    )
    assert proc.returncode == 0, proc.stderr
    (report,) = _reports(proc.stdout)
    assert (report["listed"], report["enqueued"], report["already_queued"]) == (4, 3, 1)
    counts = wait_for_batch(ledger, report["batch"], 3)
    assert sum(counts.get(s, 0) for s in ("done", "skipped", "failed")) == 3
    listed = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=dest)["Contents"]}
    assert listed == set(KEYS)
    again = run_cli(stack_env, "enqueue", "--manifest", str(manifest), "--dest", f"s3://{dest}/")
    assert _reports(again.stdout)[0]["enqueued"] == 0


def test_s3_inventory_manifest_read_from_the_bucket(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    celery_worker: Any, ledger: Ledger,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    _upload(s3_server, source)
    client = s3_server.client()
    inventory = f"inv-{uuid.uuid4().hex[:6]}"
    client.create_bucket(Bucket=inventory)
    rows = io.StringIO()
    writer = csv.writer(rows, quoting=csv.QUOTE_ALL)
    for key in KEYS:
        head = client.head_object(Bucket=source, Key=key)
        writer.writerow([source, quote(key, safe="/"), head["ContentLength"],
                         head["ETag"].strip('"')])  # fmt: skip
    data_key = f"{source}/daily/data/part-1.csv.gz"
    data = gzip.compress(rows.getvalue().encode())
    client.put_object(Bucket=inventory, Key=data_key, Body=data)
    manifest = {
        "sourceBucket": source, "destinationBucket": f"arn:aws:s3:::{inventory}",
        "version": "2016-11-30", "creationTimestamp": "1764115200000", "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, Size, ETag",
        "files": [{"key": data_key, "size": len(data),
                   "MD5checksum": hashlib.md5(data).hexdigest()}],
    }  # fmt: skip
    manifest_key = f"{source}/daily/2026-11-26T01-00Z/manifest.json"
    client.put_object(Bucket=inventory, Key=manifest_key, Body=json.dumps(manifest).encode())
    proc = run_cli(stack_env, "enqueue", "--manifest", f"s3://{inventory}/{manifest_key}",
                   "--dest", f"s3://{dest}/inv/")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (report,) = _reports(proc.stdout)
    assert report["enqueued"] == 3
    wait_for_batch(ledger, report["batch"], 3)
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=dest)["Contents"]}
    assert listed == {f"inv/{key}" for key in KEYS}


def test_an_interrupted_manifest_run_resumes_without_duplicates(
    settings: WorkerSettings, ledger: Ledger, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = f"mf-{uuid.uuid4().hex[:6]}"
    app = create_app(settings)
    batch = f"mf-{uuid.uuid4().hex[:6]}"
    spec = BatchSpec(batch=batch, source=S3Location(bucket="srcb"), dest=S3Location(bucket="dst"))
    ledger.save_batch(spec)
    monkeypatch.setattr(feeder_module, "CHUNK", 10)  # one page per step
    pages = [[ObjectRef("srcb", f"k{p}-{i}") for i in range(10)] for p in range(5)]

    def broken() -> Any:
        yield from pages[:3]
        raise ConnectionError("manifest read failed (injected)")

    first = Feeder(app, ledger, storage, spec, queue, 1000, ManifestCursor(broken(), skip=0))
    with pytest.raises(ConnectionError):
        first.run(lambda step: False)
    checkpoint = ledger.batch_info(batch)["checkpoint"]
    assert checkpoint == "manifest:30"
    cursor = ManifestCursor(iter(pages), skip=30)
    second = Feeder(app, ledger, storage, spec, queue, 1000, cursor, resuming=True)
    assert second.run(lambda step: False) is Step.FINISHED
    assert second.report.enqueued == 20
    assert ledger.redis.llen(queue) == 50  # every entry exactly once
    assert "listing_done" in ledger.batch_info(batch)
