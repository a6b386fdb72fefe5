"""Time limits are recorded as such, wherever they strike.

Celery's soft time limit raises SoftTimeLimitExceeded inside the task, usually while
the engine runs a codec; the engine's broad handlers used to record it as an internal
error or a verification failure.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from worker.runtime.ledger import Ledger

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_a_soft_time_limit_during_encoding_is_recorded_time_limit(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    env = {
        **stack_env, "DCMPRESS_QUEUE": f"limits-{uuid.uuid4().hex[:6]}",
        "DCMPRESS_TASK_SOFT_TIME_LIMIT": "1", "DCMPRESS_TASK_TIME_LIMIT": "60",
        "DCMPRESS_VISIBILITY_TIMEOUT": "120",
    }  # fmt: skip
    # JPEG 2000 of 13 MB of pixels takes well over a second on one core
    big = to_bytes(make_image(2560, 2560, bits_stored=12))
    s3_server.client().put_object(Bucket=source, Key="big.dcm", Body=big)
    batch = f"limit-{uuid.uuid4().hex[:6]}"
    with CeleryWorker({**env, "PYTHONPATH": str(ROOT)}, tmp_path, concurrency=1):
        proc = run_cli(env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
                       "--target", "j2k", "--batch", batch)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        counts = wait_for_batch(ledger, batch, 1, timeout=120)
    record = ledger.get_record(batch, "big.dcm")
    assert record is not None and (record.state, record.code) == ("failed", "time_limit"), (
        counts, ledger.get_message(batch, "big.dcm"),
    )  # fmt: skip
    assert "task_soft_time_limit=1s" in ledger.get_message(batch, "big.dcm")
    assert (record.attempts, record.lost) == (1, 0), record  # one delivery, which lived
    # failed because of what it is (too big to compress in time): copied unchanged
    assert record.copied and record.bytes_out == len(big)
    copied = s3_server.client().get_object(Bucket=dest, Key="big.dcm")
    assert copied["Body"].read() == big
    assert copied["Metadata"]["dcmpress-outcome"] == "failed/time_limit"
