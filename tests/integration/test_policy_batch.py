"""A policy through the whole stack: stored with the batch by `enqueue` (and by the
event intake), applied by the real Celery worker object by object, and named by the
ledger record, the report, `status`, the output's metadata and the task result."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, JPEGLSNearLossless

from dcmpress.report_html import chart_data, render_html
from dcmpress.reports import report_rows
from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import SeaweedS3
from producer.listen import EventFilter, EventIntake
from tests.conftest import run_cli, wait_for_batch
from tests.integration.test_pipeline import upload
from tests.support import read
from tests.synthetic import segmentation
from worker.codec.options import CompressionOptions
from worker.runtime import contract
from worker.runtime.app import create_app
from worker.runtime.contract import S3Location
from worker.runtime.ledger import Ledger
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration

POLICY = """
[[rule]]
name = "copy reports"
when = { Modality = ["SR", "DOC"] }
action = "copy"

[[rule]]
name = "never lossy for SEG"
when = { Modality = "SEG" }
target = ["jpeg-ls", "rle"]

[[rule]]
name = "scouts untouched"
when = { key = { glob = "scout/*" } }
action = "skip"

[[rule]]
name = "near-lossless big CR"
when = { Modality = "CR", size = { min = "300KB" } }
target = ["jpeg-ls-near"]
options = { jls_error = 2 }

[[rule]]
name = "J2K for mammography"
when = { Modality = "MG" }
target = ["j2k"]

[[rule]]
name = "default"
target = ["jpeg-ls"]
"""


def image(modality: str, size: int = 64, seed: int = 0) -> bytes:
    ds = make_image(size, size, bits_stored=12, seed=seed)
    ds.Modality = modality
    return to_bytes(ds)


def report_sr() -> bytes:
    ds = make_image(8, 8)
    del ds.PixelData
    ds.Modality = "SR"
    return to_bytes(ds)


def seg() -> bytes:
    return to_bytes(segmentation())


# key -> (make, state, code, target, rule, transfer syntax of the output or None)
CASES: dict[str, tuple[Any, str, str, str, str, str | None]] = {
    "a/sr.dcm": (report_sr, "skipped", "policy_copy", "", "copy reports", "copy"),
    "a/seg.dcm": (seg, "done", "compressed", "jpeg-ls", "never lossy for SEG", JPEGLSLossless),
    "scout/ct.dcm": (lambda: image("CT", seed=1), "skipped", "policy_skip", "",
                     "scouts untouched", None),
    "a/cr.dcm": (lambda: image("CR", 512, seed=2), "done", "compressed", "jpeg-ls-near",
                 "near-lossless big CR", JPEGLSNearLossless),
    "a/small cr.dcm": (lambda: image("CR", 64, seed=3), "done", "compressed", "jpeg-ls",
                       "default", JPEGLSLossless),
    "a/mg.dcm": (lambda: image("MG", 128, seed=4), "done", "compressed", "j2k",
                 "J2K for mammography", JPEG2000Lossless),
    "a/ct.dcm": (lambda: image("CT", seed=5), "done", "compressed", "jpeg-ls", "default",
                 JPEGLSLossless),
}  # fmt: skip


def test_a_mixed_bucket_under_a_policy_ends_with_each_rules_outcome(
    stack_env: dict[str, str],
    s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
    celery_worker: Any,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    source, dest = bucket_pair
    sources = {key: case[0]() for key, case in CASES.items()}
    upload(s3_server, source, sources)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    args = ("enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", "--policy", str(policy))
    proc = run_cli(stack_env, *args)
    assert proc.returncode == 0, proc.stderr
    batch = json.loads(proc.stdout.strip().splitlines()[-1])["batch"]
    assert f"{source}-policy-" in batch  # the default id says a policy decides
    spec = ledger.get_batch(batch)
    assert spec is not None and spec.policy == POLICY  # every worker applies the same
    counts = wait_for_batch(ledger, batch, len(CASES))
    rules = spec.rules()
    assert rules is not None
    names = [rule.name for rule in rules.rule]

    report = run_cli(stack_env, "report", batch, "--format", "ndjson")
    assert report.returncode == 0, report.stderr
    rows = {row["key"]: row for row in map(json.loads, report.stdout.splitlines())}
    client = s3_server.client()
    for key, (_, state, code, target, rule, syntax) in CASES.items():
        row = rows[key]
        assert (row["state"], row["code"], row["target"], row["rule"]) == (
            state, code, target, rule,
        ), (key, row)  # fmt: skip
        if syntax is None:  # skipped without output
            assert client.list_objects_v2(Bucket=dest, Prefix=key).get("KeyCount") == 0
            continue
        got = client.get_object(Bucket=dest, Key=key)
        body = got["Body"].read()
        assert got["Metadata"][contract.META_RULE] == str(names.index(rule) + 1)
        if syntax == "copy":
            assert body == sources[key]
        else:
            assert read(body).file_meta.TransferSyntaxUID == syntax
    client.close()

    # the counters per rule, as `status` shows them
    assert counts["rule:1"] == 1 and counts["rule:6"] == 2
    assert counts["rule_in:6"] > counts["rule_out:6"] > 0
    shown = run_cli(stack_env, "status", batch)
    assert shown.returncode == 0, shown.stderr
    assert "rule: default" in shown.stdout and "2 objects" in shown.stdout
    assert "rule: copy reports" in shown.stdout
    listed = run_cli(stack_env, "batches")
    assert listed.returncode == 0, listed.stderr
    assert any(batch in line and "policy" in line.replace(batch, "")
               for line in listed.stdout.splitlines()), listed.stdout  # fmt: skip

    # the HTML report's savings per rule: every object a rule decided, copies included
    data = chart_data(report_rows(ledger, batch), ledger.counts(batch))
    assert {item["label"]: item["objects"] for item in data["by_rule"]} == {
        "copy reports": 1, "never lossy for SEG": 1, "scouts untouched": 1,
        "near-lossless big CR": 1, "J2K for mammography": 1, "default": 2,
    }  # fmt: skip
    assert "Savings by policy rule" in render_html(batch, data)

    # the same command again: every object is already done (the digest is the same)
    again = run_cli(stack_env, *args)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["already_done"] == len(CASES)
    # another policy under the same batch id is refused, not mixed in
    other = tmp_path / "other.toml"
    other.write_text('[[rule]]\nname = "all RLE"\ntarget = ["rle"]\n')
    refused = run_cli(
        stack_env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", "--policy",
        str(other), "--batch", batch,
    )  # fmt: skip
    assert refused.returncode == 2 and "options/policy" in refused.stderr


def test_a_bad_policy_stops_enqueue_before_anything_is_queued(
    stack_env: dict[str, str], bucket_pair: tuple[str, str], ledger: Ledger, tmp_path: Path
) -> None:
    source, dest = bucket_pair
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "d"\ntarget = ["nope"]\n')
    batch = f"bad-{uuid.uuid4().hex[:6]}"
    proc = run_cli(
        stack_env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", "--policy",
        str(bad), "--batch", batch,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "bad.toml:3: rule 1 ('d'), field target" in proc.stderr
    assert ledger.get_batch(batch) is None


def test_the_event_intake_stores_the_policy_and_a_new_one_gets_its_own_batch(
    settings: WorkerSettings, ledger: Ledger, bucket_pair: tuple[str, str]
) -> None:
    source, dest = bucket_pair
    name = f"ev-{uuid.uuid4().hex[:6]}"

    def intake(policy: str | None) -> EventIntake:
        return EventIntake(
            create_app(settings), ledger, Storage(settings), settings.queue,
            S3Location(bucket=dest), False, CompressionOptions(), EventFilter(),
            batch_name=name, policy=policy,
        )  # fmt: skip

    first = intake(POLICY)._enqueuer(source).spec
    assert first.batch == f"{name}-{source}" and first.policy == POLICY
    stored = ledger.get_batch(first.batch)
    assert stored is not None and stored.policy == POLICY
    # restarted with the same policy: the same batch
    assert intake(POLICY)._enqueuer(source).spec.batch == first.batch
    # restarted with another policy: its events never run under the old one
    changed = intake('[[rule]]\nname = "d"\ntarget = ["rle"]\n')._enqueuer(source).spec
    assert changed.batch != first.batch and changed.batch.startswith(first.batch)
    assert changed.policy is not None and "rle" in changed.policy
    unchanged = ledger.get_batch(first.batch)
    assert unchanged is not None and unchanged.policy == POLICY


def test_a_policy_the_worker_cannot_read_is_recorded_not_guessed(
    settings: WorkerSettings,
    stack_env: dict[str, str],
    s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
    celery_worker: Any,
    ledger: Ledger,
) -> None:
    """A batch stored by a newer release whose policy this worker cannot parse: each
    object ends failed/invalid_policy (never compressed under the plain options)."""
    from producer.enqueue import Enqueuer
    from producer.sources import ObjectRef
    from worker.runtime.contract import BatchSpec

    source, dest = bucket_pair
    upload(s3_server, source, {"a.dcm": image("CT")})
    spec = BatchSpec(
        batch=f"newer-{uuid.uuid4().hex[:6]}", source=S3Location(bucket=source),
        dest=S3Location(bucket=dest), created=1.0,
        policy='[[rule]]\nname = "d"\ntarget = ["jpeg-ls"]\nfuture_field = 1\n',
    )  # fmt: skip
    ledger.save_batch(spec)
    Enqueuer(create_app(settings), ledger, spec, settings.queue).enqueue(
        [ObjectRef(source, "a.dcm")], resend_queued=False
    )
    counts = wait_for_batch(ledger, spec.batch, 1)
    assert counts.get("code:invalid_policy") == 1, counts
    record = ledger.get_record(spec.batch, "a.dcm")
    assert record is not None and record.state == "failed"
    message = ledger.get_message(spec.batch, "a.dcm")
    assert "future_field" in message
    assert s3_server.client().list_objects_v2(Bucket=dest).get("KeyCount") == 0
    # the operator's views still work, for this batch and for every other one
    for args in (("status", spec.batch), ("batches",), ("report", spec.batch)):
        shown = run_cli(stack_env, *args)
        assert shown.returncode == 0, (args, shown.stderr)
    assert "invalid_policy" in run_cli(stack_env, "report", spec.batch).stdout
