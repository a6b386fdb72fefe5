"""Configuration and credential errors are permanent at once, and said at start-up.

Every botocore error used to count as transient, so a worker without credentials
retried each object for tens of minutes before recording it.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import EndpointConnectionError, NoCredentialsError, NoRegionError

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from worker.errors import PermanentError, TransientError
from worker.runtime.ledger import Ledger
from worker.runtime.storage import classify

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_configuration_errors_are_permanent_and_network_errors_transient() -> None:
    for error in (NoCredentialsError(), NoRegionError()):
        classified = classify(error, "fetch s3://a/b")
        assert isinstance(classified, PermanentError)
        assert classified.code == "storage_misconfigured"
    unreachable = classify(EndpointConnectionError(endpoint_url="http://x"), "fetch s3://a/b")
    assert isinstance(unreachable, TransientError)


def test_a_worker_without_credentials_records_at_once_and_says_so_at_start(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    s3_server.client().put_object(Bucket=source, Key="a.dcm", Body=to_bytes(make_image(40, 40)))
    queue = f"nocreds-{uuid.uuid4().hex[:6]}"
    batch = f"nocreds-{uuid.uuid4().hex[:6]}"
    env = {**stack_env, "DCMPRESS_QUEUE": queue}
    proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", "--batch", batch)
    assert proc.returncode == 0, proc.stderr  # the producer has credentials
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    worker_env = {
        **{k: v for k, v in env.items() if not k.startswith("AWS_ACCESS")
           and not k.startswith("AWS_SECRET")},
        "PYTHONPATH": str(ROOT),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask a metadata service off loopback
    }  # fmt: skip
    with CeleryWorker(worker_env, tmp_path, concurrency=1) as worker:
        counts = wait_for_batch(ledger, batch, 1, timeout=60)
        log = worker.log_path.read_text()
    record = ledger.get_record(batch, "a.dcm")
    assert record is not None and (record.code, record.attempts) == ("storage_misconfigured", 1)
    assert counts.get("failed") == 1
    assert "no S3 credentials found" in log and "retrying" not in log


def test_only_the_prefork_pool_is_accepted() -> None:
    from celery.concurrency.prefork import TaskPool

    from worker.runtime.tasks import pool_refusal

    assert pool_refusal("prefork") is None
    assert pool_refusal(TaskPool) is None  # what the command line hands over
    assert pool_refusal("processes") is None
    for pool in ("threads", "solo", "celery.concurrency.thread:TaskPool"):
        refusal = pool_refusal(pool)
        assert refusal is not None and "prefork" in refusal


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_a_worker_started_with_another_pool_refuses_to_start(
    stack_env: dict[str, str], pool: str
) -> None:
    """Two JPEG 2000 encodes at once crash pylibjpeg-openjpeg; solo has no time limit."""
    env = {**stack_env, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", pool,
         "--concurrency", "2", "--loglevel", "INFO"],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"only with the prefork pool, not '{pool}'" in proc.stderr
    assert "ready." not in proc.stdout + proc.stderr
