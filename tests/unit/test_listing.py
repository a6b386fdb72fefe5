"""``dcmpress compress --files-from``: reading a list of paths and planning its jobs."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from dcmpress import listing as listing_module
from dcmpress.listing import Listing, Outputs, output_root
from dcmpress.local import Job, count_jobs, plan_listed, run_job
from worker.codec.options import CompressionOptions
from worker.errors import ConfigurationError


def written(tmp_path: Path, data: bytes, name: str = "list") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("chunk", [1, 3, 1024 * 1024])
def test_entries_in_lines_carriage_returns_and_no_final_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Read in chunks of any size, an entry split across two is still one entry."""
    monkeypatch.setattr(listing_module, "CHUNK_BYTES", chunk)
    path = written(tmp_path, b"a/b\r\n\n/abs/c d\nlast")
    assert list(Listing(path).entries()) == [(1, "a/b"), (3, "/abs/c d"), (4, "last")]


@pytest.mark.parametrize("chunk", [1, 1024 * 1024])
def test_a_byte_order_mark_before_the_first_entry_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """As a Windows editor or export writes a UTF-8 list."""
    monkeypatch.setattr(listing_module, "CHUNK_BYTES", chunk)
    path = written(tmp_path, b"\xef\xbb\xbfscans/IM1\r\nscans/IM2\r\n")
    assert list(Listing(path).entries()) == [(1, "scans/IM1"), (2, "scans/IM2")]


def test_nul_separated_entries_keep_newlines_and_any_bytes(tmp_path: Path) -> None:
    path = written(tmp_path, b"odd\nname\x00\xff\xfe.dcm\x00\x00")
    entries = list(Listing(path, b"\0").entries())
    assert entries == [(1, "odd\nname"), (2, os.fsdecode(b"\xff\xfe.dcm"))]
    assert os.fsencode(entries[1][1]) == b"\xff\xfe.dcm"  # the same file name back


def test_an_empty_list_has_no_entries(tmp_path: Path) -> None:
    assert list(Listing(written(tmp_path, b"\n\n")).entries()) == []


def test_an_unreadable_list_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the list"):
        list(Listing(tmp_path / "absent").entries())


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("a/b.dcm", "a/b.dcm"),
        ("./a//b/./c.dcm", "a/b/c.dcm"),
        ("/data/pacs/IM1", "data/pacs/IM1"),
        ("//data/IM1", "data/IM1"),
        ("a/../b/IM1", "b/IM1"),
        (".", ""),
    ],
)
def test_an_output_mirrors_the_entry_as_listed(tmp_path: Path, entry: str, expected: str) -> None:
    assert output_root(tmp_path, entry, "here") == tmp_path / expected


@pytest.mark.parametrize("entry", ["../a.dcm", "a/../../b", ".."])
def test_an_entry_that_climbs_out_is_refused(tmp_path: Path, entry: str) -> None:
    with pytest.raises(ConfigurationError, match=r"here: .* climbs out .* absolute path"):
        output_root(tmp_path, entry, "here")


def test_the_same_output_twice_is_refused() -> None:
    outputs = Outputs()
    outputs.claim(Path("/out/a"), Path("a"), "entry 1")
    outputs.claim(Path("/out/b"), Path("b"), "entry 2")
    with pytest.raises(ConfigurationError, match="entry 3: a would be written to /out/a a second"):
        outputs.claim(Path("/out/a"), Path("a"), "entry 3")


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a tree and loose files (the entries are relative)."""
    for name in ("scans/s1/IM1", "scans/s1/IM2", "scans/s2/IM1", "loose/IM1"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_files_trees_and_missing_files_become_jobs(archive: Path) -> None:
    """A listed file that is not there is still a job (its record says so)."""
    listing = Listing(written(archive, b"scans/s1\nloose/IM1\ngone/IM9\n"))
    out = archive / "out"
    jobs = list(plan_listed(listing, out))
    assert jobs == [
        Job(archive / "scans/s1/IM1", out / "scans/s1/IM1"),
        Job(archive / "scans/s1/IM2", out / "scans/s1/IM2"),
        Job(Path("loose/IM1"), out / "loose/IM1"),
        Job(Path("gone/IM9"), out / "gone/IM9"),
    ]
    assert count_jobs([], out, listing) == 4


def test_a_file_listed_twice_is_refused_when_counted(archive: Path) -> None:
    for text in (b"loose/IM1\n./loose/IM1\n", b"scans\nscans/s2/IM1\n"):
        listing = Listing(written(archive, text))
        with pytest.raises(ConfigurationError, match=r"entry 2: .* a second time"):
            count_jobs([], archive / "out", listing)


def test_outputs_inside_the_listed_tree_are_not_inputs(archive: Path) -> None:
    (archive / "out" / "scans").mkdir(parents=True)
    (archive / "out" / "scans" / "old").write_bytes(b"")
    jobs = list(plan_listed(Listing(written(archive, b".\n")), archive / "out"))
    assert {job.path.relative_to(archive).as_posix() for job in jobs} == {
        "scans/s1/IM1", "scans/s1/IM2", "scans/s2/IM1", "loose/IM1", "list",
    }  # fmt: skip
    with pytest.raises(ConfigurationError, match="entry 1: out/scans/old lies in the output"):
        count_jobs([], archive / "out", Listing(written(archive, b"out/scans/old\n")))


def test_a_listed_fifo_is_a_failed_record_not_a_wait_for_ever(archive: Path) -> None:
    """Opened without blocking: a FIFO has no writer, and the run must go on."""
    os.mkfifo(archive / "pipe")
    (job,) = plan_listed(Listing(written(archive, b"pipe\n")), archive / "out")
    records: list[dict[str, Any]] = []
    runner = threading.Thread(
        target=lambda: records.append(run_job(job, CompressionOptions())), daemon=True
    )
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), "run_job waits on the FIFO"
    (record,) = records
    assert (record["outcome"], record["code"]) == ("failed", "io_error")
    assert "not a regular file" in record["message"]
    assert not (archive / "out" / "pipe").exists()


def test_an_explicit_input_that_is_no_file_or_directory_is_refused(archive: Path) -> None:
    os.mkfifo(archive / "pipe")
    with pytest.raises(ConfigurationError, match="pipe is not a file or a directory"):
        count_jobs([archive / "pipe"], archive / "out")


def test_an_entry_longer_than_any_path_names_the_separator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NUL-separated list read as lines is one endless entry: refused as soon as it
    is longer than a path can be, not held whole."""
    monkeypatch.setattr(listing_module, "CHUNK_BYTES", 1024)
    nul = written(tmp_path, b"\0".join(b"scans/s%06d/IM1" % i for i in range(2000)))
    with pytest.raises(ConfigurationError, match=r"entry 1 is longer .* NUL \(--null\)\?"):
        list(Listing(nul).entries())
    lines = written(tmp_path, b"a\n" + b"x" * 5000 + b"\n", "lines")
    with pytest.raises(ConfigurationError, match=r"entry 1 is longer .* newlines, not --null"):
        list(Listing(lines, b"\0").entries())  # read as NUL-separated: one long entry
    assert len(list(Listing(nul, b"\0").entries())) == 2000
