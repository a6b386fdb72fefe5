"""``python -m benchmarks.control_plane`` at a tiny size: it prints every number it
promises, and the control plane it drives (feeder, queue, ledger, archiver, report)
records and reports every object exactly once.

No wall-clock assertions: the numbers are measured, only their presence is checked.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from benchmarks.control_plane import object_key
from benchmarks.harness.stub_worker import is_failed

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OBJECTS = 3_000
SHARD_SIZE = 1_000  # three shards, and the failed records in Redis beside them
FAILED_SHARE = 0.01


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    """One run at 3,000 objects: its JSON, its tables (stderr) and the reported keys."""
    keys_file = tmp_path_factory.mktemp("control-plane") / "reported.tsv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DCMPRESS_", "AWS_"))}
    proc = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.control_plane",
            "--objects", str(OBJECTS), "--shard-size", str(SHARD_SIZE),
            "--failed-share", str(FAILED_SHARE), "--per-object-sample", "300",
            "--listing-objects", "100", "--json", "--report-keys", str(keys_file),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr, keys_file


def test_every_object_is_reported_exactly_once_in_the_state_it_was_recorded(
    tiny_run: tuple[dict[str, Any], str, Path],
) -> None:
    _, _, keys_file = tiny_run
    rows = [line.split("\t") for line in keys_file.read_text().splitlines()]
    reported = Counter(key for key, _ in rows)
    expected = {object_key(index) for index in range(OBJECTS)}
    assert set(reported) == expected
    assert max(reported.values()) == 1, [key for key, n in reported.items() if n > 1][:5]
    failed = {key for key, state in rows if state == "failed"}
    assert failed == {key for key in expected if is_failed(key, FAILED_SHARE)}
    assert failed and {state for _, state in rows} == {"done", "failed"}


def test_every_object_is_recorded_once_and_every_done_record_left_redis_for_a_shard(
    tiny_run: tuple[dict[str, Any], str, Path],
) -> None:
    results, _, _ = tiny_run
    for run in (results["runs"][0]["control_plane"], results["per_object"]):
        checks, objects = run["checks"], run["objects"]
        assert checks["fed"] == checks["messages"] == objects, checks
        # a running and a final record per object, none superseded or set twice
        assert checks["transitions"] == 2 * objects, checks
        assert checks["done"] + checks["failed"] == objects, checks
        assert checks["queued"] == checks["running"] == 0, checks
        # done rows come from the shards, the failed ones from Redis: each once
        assert checks["archived"] == checks["done"] == checks["report_states"]["done"]
        assert checks["report_states"].get("failed", 0) == checks["failed"]
        assert checks["report_keys_match"] and checks["status_complete"] and checks["ok"]
        assert run["shards"]["count"] == math.ceil(checks["done"] / SHARD_SIZE)


def test_the_promised_numbers_are_measured_and_printed(
    tiny_run: tuple[dict[str, Any], str, Path],
) -> None:
    results, tables, _ = tiny_run
    for kind in ("manifest", "listing_stream"):
        feeder = results["runs"][0]["feeder"][kind]
        assert feeder["keys"] == OBJECTS and feeder["keys_per_s"] > 0
        assert feeder["high_water"] == 10_000  # the default mark
    run = results["runs"][0]["control_plane"]
    assert run["redis"]["peak_sampled_mb"] > run["redis"]["empty_mb"] > 0
    assert run["redis"]["used_memory_peak_mb"] >= run["redis"]["peak_sampled_mb"]
    assert run["redis"]["end_mb"] > 0 and run["redis"]["commands_per_object"]
    cpu = run["cpu_us_per_object"]
    for part in ("feeder", "stub recording", "archiver", "status and report", "redis"):
        assert cpu[part] > 0, (part, cpu)
    assert cpu["total"] == pytest.approx(sum(v for k, v in cpu.items() if k != "total"), 0.01)
    assert run["shards"]["bytes_per_object"] > 0 and run["report"]["rows_per_s"] > 0
    assert run["report"]["rows"] == OBJECTS and run["status_ms"] > 0
    assert results["seaweed_listing"]["list_keys_per_s"] > 0
    sizes = results["record_bytes"]
    for state in ("queued_at_mark", "done", "failed", "skipped", "failed_hashtable"):
        assert sizes[state] > 0, (state, sizes)
    assert [row["objects"] for row in results["capacity"]] == [1e8, 1e9]
    for row in results["capacity"]:
        assert row["redis_mb"] > 0 and row["shard_gb"] > 0 and row["feeder_hours"] > 0
    for title in ("Feeder alone", "Control plane", "Control-plane CPU per object",
                  "Redis bytes per object", "Capacity model", "shard B/object",
                  "report rows/s", "Redis peak MB"):  # fmt: skip
        assert title in tables, title
