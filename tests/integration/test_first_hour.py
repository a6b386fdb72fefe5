"""The operator's first hour: what `dcmpress` says when the world is not ready.

Expected failures (Redis down, S3 unreachable, credentials missing or wrong, a mistyped
target or batch) are one line that says what to do, and a non-zero exit: never a
traceback. Tables keep identifiers whole at 80 columns.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import SeaweedS3
from tests.conftest import run_cli
from worker.runtime.contract import BatchSpec, S3Location
from worker.runtime.ledger import Ledger

pytestmark = pytest.mark.integration


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def assert_one_line_error(proc: object, *needles: str, code: int = 1) -> str:
    """The command failed with ``code`` and one ``error:`` line, without a traceback."""
    returncode, stdout, stderr = (getattr(proc, n) for n in ("returncode", "stdout", "stderr"))
    assert returncode == code, stdout + stderr
    assert "Traceback" not in stdout + stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr  # other lines may say what was being done
    for needle in needles:
        assert needle in lines[0], lines[0]
    return str(lines[0])


@pytest.mark.parametrize(
    "args",
    [
        ("status", "any"),
        ("batches",),
        ("report", "any"),
        ("retry", "any"),
        ("enqueue", "s3://archive/", "--dest", "s3://out/"),
    ],
    ids=["status", "batches", "report", "retry", "enqueue"],
)
def test_no_redis_is_one_line_naming_the_url_and_the_fix(args: tuple[str, ...]) -> None:
    url = f"redis://:s3cret@127.0.0.1:{closed_port()}/0"
    proc = run_cli({"DCMPRESS_REDIS_URL": url}, *args, timeout=120)
    line = assert_one_line_error(
        proc, "cannot reach Redis at", url.replace("s3cret", "***"), "DCMPRESS_REDIS_URL",
        "dcmpress demo --keep",
    )  # fmt: skip
    assert "s3cret" not in line


def test_debug_shows_the_traceback() -> None:
    proc = run_cli({"DCMPRESS_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"},
                   "--debug", "batches")  # fmt: skip
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_unreachable_s3_endpoint_is_one_line(stack_env: dict[str, str]) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    proc = run_cli(
        {**stack_env, "DCMPRESS_S3_ENDPOINT_URL": endpoint, "DCMPRESS_S3_MAX_ATTEMPTS": "1"},
        "enqueue", f"s3://nowhere-{uuid.uuid4().hex[:6]}/", "--dest", "s3://out/",
    )  # fmt: skip
    assert_one_line_error(proc, "cannot reach the S3 endpoint", endpoint, "resume")


def test_wrong_s3_credentials_are_one_line(
    stack_env: dict[str, str], bucket_pair: tuple[str, str]
) -> None:
    source, dest = bucket_pair
    env = {**stack_env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/")
    line = assert_one_line_error(proc, "S3 rejected the credentials", "AWS_SECRET_ACCESS_KEY")
    assert "not-the-secret" not in line


def test_missing_s3_credentials_are_one_line(
    stack_env: dict[str, str], tmp_path: Path, bucket_pair: tuple[str, str]
) -> None:
    env = {
        **{k: v for k, v in stack_env.items() if not k.startswith("AWS_")},
        "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask a metadata service off loopback
    }  # fmt: skip
    source, dest = bucket_pair
    proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/")
    assert_one_line_error(proc, "no usable S3 credentials", "AWS_ACCESS_KEY_ID")


def test_an_unknown_target_is_named_without_pydantic_noise(tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(to_bytes(make_image(32, 32)))
    proc = run_cli({}, "compress", str(tmp_path / "a.dcm"), "--out", str(tmp_path / "o"),
                   "--target", "jpg")  # fmt: skip
    line = assert_one_line_error(proc, "unknown target 'jpg'", "jpeg-ls", code=2)
    assert "Value error" not in line and "validation error" not in line


def _batches(ledger: Ledger, prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        ledger.save_batch(BatchSpec(batch=f"{prefix}-{name}", source=S3Location(bucket="a")))


def test_a_unique_start_of_a_batch_id_is_enough(stack_env: dict[str, str], ledger: Ledger) -> None:
    prefix = f"fh{uuid.uuid4().hex[:6]}"
    _batches(ledger, prefix, ("alpha-one", "alpha-two", "beta-only"))
    found = run_cli(stack_env, "status", f"{prefix}-beta")
    assert found.returncode == 0, found.stderr
    assert f"batch {prefix}-beta-only" in found.stdout
    ambiguous = run_cli(stack_env, "status", f"{prefix}-alpha")
    assert_one_line_error(ambiguous, "2 batches", f"{prefix}-alpha-one", f"{prefix}-alpha-two")
    typo = run_cli(stack_env, "report", f"{prefix}-betta-only")
    assert_one_line_error(typo, f"no batch '{prefix}-betta-only'", f"nearest: {prefix}-beta-only")


def test_batches_keeps_ids_whole_at_80_columns(stack_env: dict[str, str], ledger: Ledger) -> None:
    prefix = f"wide{uuid.uuid4().hex[:6]}"
    names = ("dicom-archive-2019-jpeg-ls-rle-1c9e2f0a", "events-dicom-archive-20261201")
    _batches(ledger, prefix, names)
    proc = run_cli({**stack_env, "COLUMNS": "80"}, "batches")
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80
    for name in names:
        assert any(f"{prefix}-{name}" in line for line in proc.stdout.splitlines()), name


def test_doctor_keeps_uids_whole_at_80_columns() -> None:
    proc = run_cli({"COLUMNS": "80"}, "doctor")
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80
    for uid in ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"):
        assert uid in proc.stdout
    assert "python-gdcm" not in proc.stdout or 'pip install "dcmpress[gdcm]"' in proc.stdout


def test_report_set_says_what_it_wrote(
    stack_env: dict[str, str], ledger: Ledger, tmp_path: Path, s3_server: SeaweedS3
) -> None:
    batch = f"said-{uuid.uuid4().hex[:6]}"
    ledger.save_batch(BatchSpec(batch=batch, source=S3Location(bucket="a")))
    proc = run_cli(stack_env, "report", batch, "--out", str(tmp_path / "rep"), "--html")
    assert proc.returncode == 0, proc.stderr
    assert f"report set of {batch} written to {tmp_path / 'rep'}/" in proc.stderr
    assert "completion.csv: 0 row(s), one per object" in proc.stderr
    assert "report.html: charts and tables" in proc.stderr
    assert "row(s)" not in proc.stderr.split("report.html")[1]
