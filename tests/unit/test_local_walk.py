"""``dcmpress compress`` walks its trees as it goes: sorted, lazily, and loudly."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dcmpress import local
from dcmpress.local import Job, count_jobs, files_under, plan_jobs, run_all
from worker.codec.options import CompressionOptions
from worker.errors import ConfigurationError


def make_tree(root: Path) -> None:
    for name in ("a/x", "a/y/z", "a.b", "B", "c/d/e/f", "c/d.e", "-", "a-"):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (root / "empty").mkdir()
    (root / "link-to-file").symlink_to(root / "B")
    (root / "link-to-dir").symlink_to(root / "c")


def test_the_walk_is_in_sorted_path_order_like_rglob(tmp_path: Path) -> None:
    make_tree(tmp_path)
    expected = sorted(p for p in tmp_path.rglob("*") if p.is_file())  # the old listing
    assert list(files_under(tmp_path)) == expected
    names = [p.relative_to(tmp_path).as_posix() for p in files_under(tmp_path)]
    assert "link-to-file" in names  # a link to a file is followed
    assert not any(name.startswith("link-to-dir/") for name in names)  # to a directory not
    assert list(files_under(tmp_path / "B")) == [tmp_path / "B"]


def test_the_walk_lists_one_directory_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(50):
        (tmp_path / f"d{index:02d}").mkdir()
        (tmp_path / f"d{index:02d}" / "f").write_bytes(b"")
    listed: list[str] = []
    real = os.scandir

    def scandir(path: Any) -> Any:
        listed.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    walk = files_under(tmp_path)
    assert next(walk) == tmp_path / "d00" / "f"
    assert len(listed) == 2  # the root and its first directory, not the 50
    assert len(list(walk)) == 49


@pytest.fixture
def unreadable_d(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every directory named ``d`` cannot be listed (as a user without permission)."""
    real = os.scandir

    def scandir(path: Any) -> Any:
        if Path(path).name == "d":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.usefixtures("unreadable_d")
def test_a_directory_that_cannot_be_listed_is_named_not_skipped(tmp_path: Path) -> None:
    make_tree(tmp_path)
    with pytest.raises(ConfigurationError, match=r"cannot list the directory .*/c/d: Permiss"):
        count_jobs([tmp_path], tmp_path / "out")


def test_count_jobs_checks_every_input_before_anything_runs(tmp_path: Path) -> None:
    make_tree(tmp_path / "one")
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "B").write_bytes(b"")
    out = tmp_path / "out"
    assert count_jobs([tmp_path / "one"], out) == len(list(plan_jobs([tmp_path / "one"], out)))
    with pytest.raises(ConfigurationError, match="would both be written to"):
        count_jobs([tmp_path / "one", tmp_path / "two"], out)
    with pytest.raises(ConfigurationError, match="does not exist"):
        count_jobs([tmp_path / "one", tmp_path / "missing"], out)


def _fake_job(job: Job, options: Any, policy: Any = None) -> dict[str, Any]:
    return {"path": str(job.path), "outcome": "done"}


def test_run_all_takes_jobs_as_the_pool_has_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "run_job", _fake_job)  # inherited by the pool's fork
    taken = 0

    def jobs() -> Iterator[Job]:
        nonlocal taken
        for index in range(40):
            taken += 1
            yield Job(tmp_path / f"{index}", tmp_path / "out" / f"{index}")

    taken_at_first_record: list[int] = []

    def on_record(item: dict[str, Any]) -> None:
        if not taken_at_first_record:
            taken_at_first_record.append(taken)

    run_all(jobs(), CompressionOptions(), 1, on_record)
    assert taken == 40
    assert taken_at_first_record[0] <= 3  # the window of one process: 2 in flight, +1


def test_jobs_taken_before_the_walk_fails_are_still_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "run_job", _fake_job)

    def jobs() -> Iterator[Job]:
        for index in range(5):
            yield Job(tmp_path / f"{index}", tmp_path / "out" / f"{index}")
        raise ConfigurationError("the tree changed")

    seen: list[dict[str, Any]] = []
    with pytest.raises(ConfigurationError, match="the tree changed"):
        run_all(jobs(), CompressionOptions(), 2, seen.append)
    assert sorted(Path(item["path"]).name for item in seen) == [str(i) for i in range(5)]


@pytest.mark.usefixtures("unreadable_d")
def test_the_commands_exit_2_naming_a_directory_they_cannot_list(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dcmpress.cli import app

    make_tree(tmp_path / "in")
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nname = "default"\ntarget = ["rle"]\n')
    for argv in (
        ["compress", str(tmp_path / "in"), "-o", str(tmp_path / "out")],
        ["policy", "check", str(policy), str(tmp_path / "in")],
    ):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2, (argv, result.output)
        assert "cannot list the directory" in result.output and "Permission denied" in result.output
    assert not (tmp_path / "out").exists()  # checked before anything was written


def test_resume_skips_the_outputs_written_already_and_newer(tmp_path: Path) -> None:
    """Each skipped job is recorded at once; a missing, older or non-file output is
    compressed again."""
    jobs = []
    for name in ("done", "missing", "older", "dir"):
        source = tmp_path / "in" / name
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(b"x" * 100)
        jobs.append(Job(source, tmp_path / "out" / name))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "done").write_bytes(b"y" * 40)
    (tmp_path / "out" / "older").write_bytes(b"y" * 40)
    (tmp_path / "out" / "dir").mkdir()
    base = (tmp_path / "in" / "done").stat().st_mtime_ns
    os.utime(tmp_path / "out" / "done", ns=(base + 10**9, base + 10**9))
    os.utime(tmp_path / "out" / "older", ns=(base - 10**9, base - 10**9))
    recorded: list[dict[str, Any]] = []
    left = list(local.skip_written(jobs, recorded.append))
    assert [job.path.name for job in left] == ["missing", "older", "dir"]
    (record,) = recorded
    assert (record["outcome"], record["code"]) == ("skipped", "output_exists")
    assert (record["bytes_in"], record["bytes_out"], record["ratio"]) == (100, 40, 2.5)
    assert record["output"] == str(tmp_path / "out" / "done")
