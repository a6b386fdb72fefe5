"""The distributed pipeline against real Redis, SeaweedFS and a real Celery worker."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import pytest
from pydicom import examples
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from tests.support import independent_decode, read, source_pixels
from tests.synthetic import mr_with_embedded_overlays, private_part10, with_syntax
from worker.codec.frames import FRAMES_ABOVE
from worker.runtime import contract
from worker.runtime.ledger import Ledger

pytestmark = pytest.mark.integration


def upload(s3: SeaweedS3, bucket: str, objects: dict[str, bytes]) -> None:
    """Put ``objects`` (key -> bytes) into ``bucket``."""
    client = s3.client()
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


def enqueue(env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run ``dcmpress enqueue`` and return its JSON report."""
    proc = run_cli(env, "enqueue", *args)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


IMAGES = {
    "study/ct.dcm": lambda: to_bytes(make_image(96, 96, bits_stored=12, seed=1)),
    "study/rgb.dcm": lambda: to_bytes(make_image(64, 80, bits_allocated=8, samples=3)),
    "study/multi frame.dcm": lambda: to_bytes(make_image(64, 64, frames=3, bits_stored=12)),
    "pydicom/mr.dcm": lambda: to_bytes(examples.mr),
}


@pytest.mark.parametrize("target", ["jpeg-ls", "jpeg-ls-near", "j2k", "j2k-lossy", "rle"])
def test_every_target_end_to_end(
    target: str,
    stack_env: dict[str, str],
    s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
    celery_worker: Any,
    ledger: Ledger,
) -> None:
    source, dest = bucket_pair
    objects = {key: make() for key, make in IMAGES.items()}
    upload(s3_server, source, objects)
    report = enqueue(
        stack_env, f"s3://{source}/", "--dest", f"s3://{dest}/out/", "--target", target,
        "--min-size", "1",
    )  # fmt: skip
    assert report["enqueued"] == len(objects)
    counts = wait_for_batch(ledger, report["batch"], len(objects))
    assert counts.get("done") == len(objects), counts
    client = s3_server.client()
    for key, data in objects.items():
        response = client.get_object(Bucket=dest, Key=f"out/{key}")
        output = response["Body"].read()
        metadata = response["Metadata"]
        assert metadata[contract.META_MARKER] == "1"
        assert metadata[contract.META_SOURCE_ETAG]
        assert int(metadata[contract.META_BYTES_IN]) == len(data)
        assert int(metadata[contract.META_BYTES_OUT]) == len(output)
        out = read(output)
        assert out.file_meta.TransferSyntaxUID == metadata[contract.META_TRANSFER_SYNTAX]
        source_ds = read(data)
        decoded = independent_decode(output)
        if target in ("jpeg-ls", "j2k", "rle"):
            np.testing.assert_array_equal(decoded, source_pixels(source_ds))
            assert out.SOPInstanceUID == source_ds.SOPInstanceUID
        else:
            assert out.SOPInstanceUID != source_ds.SOPInstanceUID
    # the source is never modified
    for key, data in objects.items():
        assert client.get_object(Bucket=source, Key=key)["Body"].read() == data


def test_a_large_volume_end_to_end_with_the_defaults(
    stack_env: dict[str, str],
    s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
    celery_worker: Any,
    ledger: Ledger,
) -> None:
    """A volume above FRAMES_ABOVE goes through the real worker as users run it:
    downloaded to a file, compressed a group of frames at a time, uploaded from a
    temporary file; the output decodes identical."""
    source, dest = bucket_pair
    ds = make_image(512, 512, frames=FRAMES_ABOVE // (512 * 512 * 2) + 4, bits_stored=12)
    data = to_bytes(ds)
    upload(s3_server, source, {"volume.dcm": data})
    report = enqueue(stack_env, f"s3://{source}/", "--dest", f"s3://{dest}/", "--target", "jpeg-ls")
    counts = wait_for_batch(ledger, report["batch"], 1)
    assert counts.get("done") == 1, counts
    response = s3_server.client().get_object(Bucket=dest, Key="volume.dcm")
    output = response["Body"].read()
    assert int(response["Metadata"][contract.META_BYTES_OUT]) == len(output)
    assert read(output).NumberOfFrames == ds.NumberOfFrames
    np.testing.assert_array_equal(independent_decode(output), source_pixels(ds))


def _private_only() -> bytes:
    item = Dataset()
    item.add_new(Tag(0x0009, 0x1002), "LO", "x")
    ds = Dataset()
    ds.add_new(Tag(0x0009, 0x1001), "SQ", [item])
    return private_part10(ds)


def test_mixed_bucket_ends_with_every_object_in_one_terminal_state(
    stack_env: dict[str, str],
    s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
    celery_worker: Any,
    ledger: Ledger,
) -> None:
    source, dest = bucket_pair
    good = to_bytes(make_image(64, 64, bits_stored=12))
    objects = {
        "a/good.dcm": good,
        "a/plan.dcm": to_bytes(examples.rt_plan),
        "a/already.dcm": to_bytes(examples.jpeg2k),
        "b/notes.txt": b"not an image at all\n" * 10,
        "b/truncated.dcm": good[: len(good) // 2],
        "b/one-bit.dcm": _one_bit(),
        "c/ünïcode key+plus.dcm": to_bytes(make_image(48, 48, seed=5)),
        "d/overlay-mr.dcm": to_bytes(mr_with_embedded_overlays((12, 15))[0]),
        "d/DICOMDIR": to_bytes(examples.dicomdir),
        "d/private-syntax.dcm": with_syntax(make_image(32, 32), "1.2.840.113619.5.2"),
        "e/private-only.dcm": _private_only(),
    }
    upload(s3_server, source, objects)
    report = enqueue(stack_env, f"s3://{source}/", "--dest", f"s3://{dest}/", "--target", "jpeg-ls")
    batch = report["batch"]
    counts = wait_for_batch(ledger, batch, len(objects))
    assert sum(counts.get(s, 0) for s in ("done", "skipped", "failed")) == len(objects)
    rows = _report(stack_env, batch)
    assert sorted(rows) == sorted(objects)
    states = {key: (row["state"], row["code"]) for key, row in rows.items()}
    assert states == {
        "a/good.dcm": ("done", "compressed"),
        "a/plan.dcm": ("skipped", "no_pixel_data"),
        "a/already.dcm": ("skipped", "already_compressed"),
        "b/notes.txt": ("skipped", "not_dicom"),
        "b/truncated.dcm": ("failed", states["b/truncated.dcm"][1]),
        "b/one-bit.dcm": ("skipped", "unsupported_bits_allocated"),
        "c/ünïcode key+plus.dcm": ("done", "compressed"),
        "d/overlay-mr.dcm": ("done", "compressed"),
        "d/DICOMDIR": ("skipped", "media_directory"),
        "d/private-syntax.dcm": ("skipped", "unknown_transfer_syntax"),
        "e/private-only.dcm": ("skipped", "not_an_instance"),
    }
    assert states["b/truncated.dcm"][1] in ("invalid_dicom", "invalid_pixel_data")
    assert rows["b/notes.txt"]["message"]
    # a done object's notices are kept in its record
    assert "moved to Overlay Data" in rows["d/overlay-mr.dcm"]["message"]
    client = s3_server.client()
    # skipped objects are copied unchanged, with the source's syntax; so are failed ones
    # (failed_output=copy): the destination is a complete archive
    copied = client.get_object(Bucket=dest, Key="a/already.dcm")
    assert copied["Body"].read() == objects["a/already.dcm"]
    assert copied["Metadata"][contract.META_OUTCOME] == "skipped/already_compressed"
    assert copied["Metadata"][contract.META_TRANSFER_SYNTAX] == "1.2.840.10008.1.2.4.90"
    assert copied["Metadata"][contract.META_COPIED] == "1"
    for key in ("b/notes.txt", "d/DICOMDIR", "d/private-syntax.dcm", "b/one-bit.dcm",
                "e/private-only.dcm", "b/truncated.dcm"):  # fmt: skip
        body = client.get_object(Bucket=dest, Key=key)["Body"].read()
        assert body == objects[key], key
        assert rows[key]["copied"] in (True, "True"), key
    failed = client.head_object(Bucket=dest, Key="b/truncated.dcm")["Metadata"]
    assert failed[contract.META_OUTCOME] == "failed/" + states["b/truncated.dcm"][1]
    assert failed[contract.META_COPIED] == "1"
    assert rows["b/truncated.dcm"]["message"].endswith("copied unchanged")
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=dest).get("Contents", [])}
    assert listed == set(objects)  # every source object, compressed or copied
    assert rows["a/good.dcm"]["copied"] in (False, "False")
    compressed = client.get_object(Bucket=dest, Key="d/overlay-mr.dcm")
    assert compressed["Metadata"][contract.META_TRANSFER_SYNTAX] == "1.2.840.10008.1.2.4.80"


def _one_bit() -> bytes:
    ds = make_image(16, 16, bits_allocated=8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = np.packbits(np.arange(256) % 2, bitorder="little").tobytes()
    return to_bytes(ds)


def _report(env: dict[str, str], batch: str) -> dict[str, dict[str, str]]:
    proc = run_cli(env, "report", batch, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    return {row["key"]: row for row in csv.DictReader(io.StringIO(proc.stdout))}


def test_re_enqueue_is_a_no_op_and_force_reprocesses(
    stack_env: dict[str, str],
    s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
    celery_worker: Any,
    ledger: Ledger,
) -> None:
    source, dest = bucket_pair
    objects = {f"s/{i}.dcm": to_bytes(make_image(64, 64, bits_stored=12, seed=i)) for i in range(4)}
    upload(s3_server, source, objects)
    args = (f"s3://{source}/", "--dest", f"s3://{dest}/", "--target", "jpeg-ls")
    first = enqueue(stack_env, *args)
    wait_for_batch(ledger, first["batch"], 4)
    again = enqueue(stack_env, *args)
    assert again["batch"] == first["batch"]  # the same command is the same batch
    assert (again["enqueued"], again["already_done"]) == (0, 4)
    forced = enqueue(stack_env, *args, "--force")
    assert forced["enqueued"] == 4
    counts = wait_for_batch(ledger, first["batch"], 4)
    assert counts["done"] == 4  # counters stay exact across reprocessing
    attempts = {key: ledger.get_record(first["batch"], key) for key in objects}
    assert all(r is not None and r.attempts == 2 for r in attempts.values())


def test_status_shows_counts_bytes_saved_and_failures(
    stack_env: dict[str, str],
    s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
    celery_worker: Any,
    ledger: Ledger,
) -> None:
    source, dest = bucket_pair
    upload(s3_server, source, {
        "x/1.dcm": to_bytes(make_image(64, 64, bits_stored=12)),
        "x/2.txt": b"nope" * 10,
    })  # fmt: skip
    report = enqueue(
        stack_env, f"s3://{source}/", "--dest", f"s3://{dest}/", "--batch", "st",
        "--not-dicom", "fail",
    )  # fmt: skip
    wait_for_batch(ledger, "st", 2)
    proc = run_cli(stack_env, "status", "st")
    assert proc.returncode == 0, proc.stderr
    assert report["batch"] == "st"
    for text in ("done", "failed: not_dicom", "e.g. x/2.txt", "saved", "complete", "MB/s"):
        assert text in proc.stdout
    watch = run_cli(stack_env, "status", "st", "--watch", "--interval", "0.2")
    assert watch.returncode == 0 and "ETA" in watch.stdout
    listing = run_cli(stack_env, "batches")
    row = next(line for line in listing.stdout.splitlines() if "│ st " in line)
    assert "complete" in row
    ndjson = run_cli(stack_env, "report", "st", "--format", "ndjson")
    rows = [json.loads(line) for line in ndjson.stdout.splitlines()]
    assert {row["key"] for row in rows} == {"x/1.dcm", "x/2.txt"}


def test_unknown_batch_and_bad_urls_are_clear_errors(stack_env: dict[str, str]) -> None:
    assert "no batch" in run_cli(stack_env, "status", "nope").stderr
    bad = run_cli(stack_env, "enqueue", "/local/path", "--dest", "s3://x/")
    assert bad.returncode == 2 and "not an s3://" in bad.stderr
    both = run_cli(stack_env, "enqueue", "s3://x/", "--dest", "s3://y/", "--in-place")
    assert both.returncode == 2 and "exactly one" in both.stderr
