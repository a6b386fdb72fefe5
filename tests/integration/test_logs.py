"""Worker logs: one JSON object per outcome, with its fields, and no secrets."""

from __future__ import annotations

import io
import json
import logging
import uuid
from pathlib import Path

import pytest

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from worker.runtime.ledger import Ledger
from worker.runtime.logs import JsonFormatter, wants_json

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_outcomes_are_logged_as_json_lines_without_secrets(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    env = {**stack_env, "DCMPRESS_QUEUE": f"logs-{uuid.uuid4().hex[:6]}",
           "DCMPRESS_LOG_FORMAT": "json"}  # fmt: skip
    client = s3_server.client()
    client.put_object(Bucket=source, Key="ok.dcm", Body=to_bytes(make_image(64, 64)))
    client.put_object(Bucket=source, Key="bad.txt", Body=b"text, not an image" * 5)
    batch = f"logs-{uuid.uuid4().hex[:6]}"
    with CeleryWorker({**env, "PYTHONPATH": str(ROOT)}, tmp_path, concurrency=1) as worker:
        assert run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
                       "--batch", batch, "--not-dicom", "fail").returncode == 0  # fmt: skip
        wait_for_batch(ledger, batch, 2)
    text = worker.log_path.read_text()
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    by_key = {e["key"]: e for e in entries if e.get("batch") == batch and "key" in e}
    assert by_key["ok.dcm"]["outcome"] == "done" and by_key["ok.dcm"]["code"] == "compressed"
    assert by_key["ok.dcm"]["bytes_out"] < by_key["ok.dcm"]["bytes_in"]
    failed = by_key["bad.txt"]
    assert (failed["level"], failed["code"], failed["stage"]) == ("WARNING", "not_dicom", "parse")
    assert failed["attempts"] == 1 and "seconds" in failed
    assert stack_env["AWS_SECRET_ACCESS_KEY"] not in text


def test_json_unless_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert wants_json("auto", io.StringIO()) and not wants_json("auto", Tty())
    assert wants_json("json", Tty()) and not wants_json("text", io.StringIO())
    record = logging.LogRecord("x", logging.INFO, "f", 1, "object %s", ("done",), None)
    record.dcmpress = {"batch": "b", "key": "k", "level": "forged"}
    assert json.loads(JsonFormatter().format(record)) | {"time": ""} == {
        "time": "", "level": "INFO", "logger": "x", "event": "object done",
        "batch": "b", "key": "k",
    }  # fmt: skip
