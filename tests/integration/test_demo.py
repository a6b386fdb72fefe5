"""`dcmpress demo` runs the whole main job with its own local stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_compresses_the_sample_bucket_and_cleans_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DCMPRESS_", "AWS_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "dcmpress", "demo", "--workdir", str(tmp_path), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "COLUMNS": "200"},
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "enqueued   15 jobs" in out
    for expected in ("compressed", "already_compressed", "no_pixel_data", "not_dicom"):
        assert expected in out
    assert "complete" in out
    # every service it started is gone: no process still has the workdir open
    leftovers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(tmp_path) in cmdline.read_text():
                leftovers.append(cmdline.parent.name)
        except OSError:
            continue
    assert leftovers == []


def test_demo_keep_leaves_a_usable_stack_until_interrupted(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DCMPRESS_", "AWS_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcmpress", "demo", "--keep", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "COLUMNS": "200"},
    )
    exports: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip().startswith("export "):
                name, _, value = line.strip().removeprefix("export ").partition("=")
                exports[name] = value
            if line.startswith("stack ready"):
                break
        assert {"DCMPRESS_REDIS_URL", "DCMPRESS_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"} <= set(
            exports
        )
        status = subprocess.run(
            [sys.executable, "-m", "dcmpress", "status", "demo"],
            capture_output=True, text=True, timeout=60, env={**env, **exports}, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "15 / 15" in status.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)  # drains and closes the pipe
    assert proc.returncode == 0
