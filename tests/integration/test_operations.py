"""Operating a batch: retry failures, cancel and resume, through the real stack."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from dcmpress.reports import write_bundle
from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from worker.runtime.contract import BatchSpec, S3Location
from worker.runtime.ledger import Ledger
from worker.runtime.records import Record

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_retry_requeues_failed_objects_by_code(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    celery_worker: Any, ledger: Ledger,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    client = s3_server.client()
    client.put_object(Bucket=source, Key="good.dcm", Body=to_bytes(make_image(64, 64)))
    client.put_object(Bucket=source, Key="late.dcm", Body=b"still uploading" * 10)
    batch = f"retry-{uuid.uuid4().hex[:6]}"
    assert run_cli(stack_env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
                   "--batch", batch, "--not-dicom", "fail").returncode == 0  # fmt: skip
    counts = wait_for_batch(ledger, batch, 2)
    assert (counts.get("done"), counts.get("failed")) == (1, 1)
    # the object is fixed at the source; only that failure code is retried
    client.put_object(Bucket=source, Key="late.dcm", Body=to_bytes(make_image(64, 64, seed=2)))
    assert "0 failed" in run_cli(stack_env, "retry", batch, "--code", "io_error").stdout
    proc = run_cli(stack_env, "retry", batch, "--code", "not_dicom")
    assert proc.returncode == 0 and "1 failed object(s)" in proc.stdout, proc.stderr
    counts = wait_for_batch(ledger, batch, 2)
    assert (counts.get("done"), counts.get("failed", 0)) == (2, 0)
    record = ledger.get_record(batch, "late.dcm")
    assert record is not None and record.attempts == 2


def test_cancel_records_queued_objects_and_resume_finishes_them(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    env = {**stack_env, "DCMPRESS_QUEUE": f"cancel-{uuid.uuid4().hex[:6]}"}
    client = s3_server.client()
    for index in range(4):
        client.put_object(Bucket=source, Key=f"{index}.dcm",
                          Body=to_bytes(make_image(48, 48, seed=index)))  # fmt: skip
    batch = f"cancel-{uuid.uuid4().hex[:6]}"
    # no worker consumes this queue yet: everything stays queued
    assert run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
                   "--batch", batch).returncode == 0  # fmt: skip
    assert "cancelled" in run_cli(env, "cancel", batch).stdout
    with CeleryWorker({**env, "PYTHONPATH": str(ROOT)}, tmp_path, concurrency=1):
        counts = wait_for_batch(ledger, batch, 4)
        assert counts.get("skipped") == 4 and counts.get("code:cancelled") == 4
        assert "Contents" not in client.list_objects_v2(Bucket=dest)  # no work was done
        proc = run_cli(env, "resume", batch)
        assert "4 cancelled object(s) queued again" in proc.stdout, proc.stderr
        counts = wait_for_batch(ledger, batch, 4)
    assert counts.get("code:cancelled") == 0
    assert counts.get("done", 0) + counts.get("skipped", 0) == 4
    assert len(client.list_objects_v2(Bucket=dest)["Contents"]) == 4


def test_report_set_in_batch_operations_shape_locally_and_on_s3(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    celery_worker: Any, ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    client = s3_server.client()
    client.put_object(Bucket=source, Key="a b.dcm", Body=to_bytes(make_image(64, 64)))
    client.put_object(Bucket=source, Key="notes.txt", Body=b"no image here" * 5)
    batch = f"report-{uuid.uuid4().hex[:6]}"
    assert run_cli(stack_env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
                   "--batch", batch, "--not-dicom", "fail").returncode == 0  # fmt: skip
    wait_for_batch(ledger, batch, 2)
    proc = run_cli(stack_env, "report", batch, "--out", str(tmp_path / "rep"), "--html")
    assert proc.returncode == 0, proc.stderr
    assert 'id="chart-data"' in (tmp_path / "rep" / "report.html").read_text()
    completion = (tmp_path / "rep" / "completion.csv").read_text().splitlines()
    assert sorted(completion) == sorted([
        f"{source},a%20b.dcm,,succeeded,,200,done/compressed: jpeg-ls/pyjpegls",
        f"{source},notes.txt,,failed,not_dicom,,failed/not_dicom: "
        "no DICM prefix and no recognisable DICOM data set",
    ])  # fmt: skip
    failure = [
        json.loads(x) for x in (tmp_path / "rep" / "failure.ndjson").read_text().splitlines()
    ]
    assert [(r["key"], r["code"], r["batch"]) for r in failure] == [
        ("notes.txt", "not_dicom", batch)
    ]
    success = json.loads((tmp_path / "rep" / "success.ndjson").read_text())
    assert {
        "key",
        "state",
        "code",
        "bytes_in",
        "bytes_out",
        "ratio",
        "target",
        "plugin",
        "attempts",
        "seconds",
        "worker",
        "etag",
        "updated",
        "modality",
    } <= set(success)
    assert success["modality"] == "CT"
    on_s3 = run_cli(stack_env, "report", batch, "--out", f"s3://{dest}/reports/")
    assert on_s3.returncode == 0, on_s3.stderr
    body = client.get_object(Bucket=dest, Key="reports/completion.csv")["Body"].read().decode()
    assert body.splitlines() == completion


def test_report_rows_are_one_line_and_quoted(ledger: Ledger, tmp_path: Path) -> None:
    batch = f"quoting-{uuid.uuid4().hex[:6]}"
    ledger.save_batch(BatchSpec(batch=batch, source=S3Location(bucket="archive")))
    message = 'cannot parse: With tag (0009,1010), "odd"\nTraceback (most recent call last):\n x'
    failed = Record(state="failed", code="invalid_dicom").stamped()
    ledger.transition(batch, "a,b.dcm", failed, message)
    write_bundle(ledger, batch, tmp_path)
    text = (tmp_path / "completion.csv").read_text()
    assert len(text.splitlines()) == 1  # one physical line per object
    [row] = list(csv.reader(io.StringIO(text)))
    assert row[:5] == ["archive", "a%2Cb.dcm", "", "failed", "invalid_dicom"]
    assert row[6] == (
        'failed/invalid_dicom: cannot parse: With tag (0009,1010), "odd" '
        "Traceback (most recent call last): x"
    )
    assert ledger.get_message(batch, "a,b.dcm") == row[6].split(": ", 1)[1]
