"""`dcmpress demo` runs the whole main job with its own local stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from worker import procfs

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
    assert _processes_using(tmp_path) == []  # every service it started is gone
    assert (tmp_path / "redis").exists()  # --workdir is the user's: kept


def _processes_using(path: Path) -> list[int]:
    """PIDs of processes whose command line names ``path``."""
    return [
        process.pid
        for process in procfs.all_processes()
        if any(str(path) in argument for argument in procfs.command_line(process.pid))
    ]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DCMPRESS_", "AWS_"))}


def test_demo_by_default_removes_its_temporary_directory(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "dcmpress", "demo", "--workers", "1"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**_clean_env(), "TMPDIR": str(scratch), "COLUMNS": "80"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(scratch.iterdir()) == []  # no dcmpress-demo-* left behind
    assert _processes_using(scratch) == []
    # at 80 columns the outcome table keeps every state, code and ratio
    for line in proc.stdout.splitlines():
        if "examples/rt_plan" in line:
            assert "skipped" in line and "no_pixel_data" in line and "1.00" in line


@pytest.mark.parametrize(
    "stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_demo_keep_leaves_a_usable_stack_until_stopped(
    tmp_path: Path, stop: signal.Signals
) -> None:
    env = _clean_env()
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
        proc.send_signal(stop)  # Ctrl-C, a plain `kill`, or the terminal closing
        proc.communicate(timeout=60)  # drains and closes the pipe
    assert proc.returncode == 0
    assert _processes_using(tmp_path) == []  # redis-server, weed and celery stopped too
