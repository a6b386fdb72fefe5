"""Usable cores: the affinity mask capped by a cgroup CPU quota; worker concurrency."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.cores import cgroup_quota, usable_cores
from worker.runtime.app import create_app
from worker.settings import WorkerSettings

AFFINITY = len(os.sched_getaffinity(0))


def v2(tmp_path: Path, text: str) -> Path:
    (tmp_path / "cpu.max").write_text(text + "\n")
    return tmp_path


def v1(tmp_path: Path, quota: int, period: int) -> Path:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


def test_a_cgroup_v2_quota_caps_the_cores(tmp_path: Path) -> None:
    root = v2(tmp_path, "100000 100000")
    assert cgroup_quota(root) == 1.0 and usable_cores(root) == 1
    assert usable_cores(v2(tmp_path, "150000 100000")) == min(2, AFFINITY)  # rounded up
    assert usable_cores(v2(tmp_path, "6400000 100000")) == AFFINITY  # never above affinity
    assert cgroup_quota(v2(tmp_path, "max 100000")) is None
    assert usable_cores(v2(tmp_path, "max 100000")) == AFFINITY


def test_a_cgroup_v1_quota_caps_the_cores_and_minus_one_is_none(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert usable_cores(v1(tmp_path / "a", 50000, 100000)) == 1
    assert cgroup_quota(v1(tmp_path / "b", -1, 100000)) is None
    assert usable_cores(tmp_path / "nothing here") == AFFINITY


def test_workers_default_to_one_process_more_than_the_usable_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DCMPRESS_WORKER_CONCURRENCY", raising=False)
    settings = WorkerSettings()
    assert settings.worker_concurrency is None  # the default users get
    assert settings.concurrency == usable_cores() + 1
    assert create_app(settings).conf.worker_concurrency == usable_cores() + 1
    monkeypatch.setenv("DCMPRESS_WORKER_CONCURRENCY", "5")
    assert create_app(WorkerSettings()).conf.worker_concurrency == 5
