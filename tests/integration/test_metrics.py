"""Prometheus metrics scraped from a real prefork worker (two pool processes)."""

from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3, free_port
from tests.conftest import run_cli, wait_for_batch
from worker.runtime.ledger import Ledger

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the worker's /metrics, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_a_prefork_worker_exports_one_coherent_view(
    stack_env: dict[str, str], s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    ledger: Ledger, tmp_path: Path,
) -> None:  # fmt: skip
    source, dest = bucket_pair
    port = free_port()
    env = {
        **stack_env,
        "DCMPRESS_QUEUE": f"metrics-{uuid.uuid4().hex[:6]}",
        "DCMPRESS_METRICS_PORT": str(port),
        "DCMPRESS_METRICS_ADDRESS": "127.0.0.1",
    }
    client = s3_server.client()
    for index in range(6):
        client.put_object(
            Bucket=source,
            Key=f"m/{index}.dcm",
            Body=to_bytes(make_image(64, 64, bits_stored=12, seed=index)),
        )
    client.put_object(Bucket=source, Key="m/notes.txt", Body=b"not dicom" * 10)
    batch = f"metrics-{uuid.uuid4().hex[:6]}"
    with CeleryWorker({**env, "PYTHONPATH": str(ROOT)}, tmp_path, concurrency=2):
        assert (
            run_cli(
                env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/", "--batch", batch
            ).returncode
            == 0
        )
        counts = wait_for_batch(ledger, batch, 7)
        deadline = time.monotonic() + 30
        samples = scrape(port)
        key = ("dcmpress_objects_total", (("code", "compressed"), ("outcome", "done")))
        while samples.get(key) != 6 and time.monotonic() < deadline:
            time.sleep(0.2)
            samples = scrape(port)
    assert counts.get("done") == 6
    assert samples[key] == 6  # summed over both pool processes
    not_dicom = ("dcmpress_objects_total", (("code", "not_dicom"), ("outcome", "skipped")))
    assert samples[not_dicom] == 1  # copied unchanged by default
    bytes_in = samples[("dcmpress_bytes_in_total", (("target", "jpeg-ls"),))]
    bytes_out = samples[("dcmpress_bytes_out_total", (("target", "jpeg-ls"),))]
    assert 0 < bytes_out < bytes_in
    for stage in ("fetch", "parse", "decode", "encode", "verify", "upload", "record"):
        assert samples[("dcmpress_stage_seconds_count", (("stage", stage),))] >= 6, stage
    assert samples[("dcmpress_tasks_in_flight", ())] == 0
