"""``dcmpress compress`` and ``dcmpress doctor`` as a user runs them: real subprocesses."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import examples

from dcmpress import local
from dcmpress.stack.samples import make_image, to_bytes
from tests.support import independent_decode, read, source_pixels
from worker.codec.options import CompressionOptions

pytestmark = pytest.mark.integration

DCMPRESS = [sys.executable, "-m", "dcmpress"]


def dcmpress(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a child process."""
    return subprocess.run(
        [*DCMPRESS, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "160", **(env or {})},
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small archive: images in nested folders, a non-image object, a text file."""
    root = tmp_path / "archive"
    (root / "study1" / "series1").mkdir(parents=True)
    (root / "study2").mkdir()
    (root / "study1" / "series1" / "ct1.dcm").write_bytes(
        to_bytes(make_image(64, 64, bits_stored=12, signed=True, seed=1))
    )
    (root / "study1" / "series1" / "IM0002").write_bytes(
        to_bytes(make_image(64, 64, bits_stored=12, seed=2))
    )
    (root / "study2" / "rgb.dcm").write_bytes(to_bytes(examples.rgb_color))
    (root / "study2" / "plan.dcm").write_bytes(to_bytes(examples.rt_plan))
    return root


def records(stdout: str) -> dict[str, dict[str, Any]]:
    """JSON lines keyed by the input path relative to the archive."""
    rows = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return {row["path"].split("archive/")[-1]: row for row in rows}


def test_compress_tree_writes_mirrored_outputs_and_one_record_per_file(
    tree: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = dcmpress("compress", str(tree), "--out", str(out), "--target", "jpeg-ls", "--jsonl")
    assert proc.returncode == 0, proc.stderr
    rows = records(proc.stdout)
    assert set(rows) == {
        "study1/series1/ct1.dcm",
        "study1/series1/IM0002",
        "study2/rgb.dcm",
        "study2/plan.dcm",
    }
    for row in rows.values():
        assert set(row) >= {
            "path", "output", "outcome", "code", "message",
            "bytes_in", "bytes_out", "ratio", "seconds",
        }  # fmt: skip
    ct = rows["study1/series1/ct1.dcm"]
    assert (ct["outcome"], ct["code"]) == ("done", "compressed")
    assert ct["output"] == str(out / "study1" / "series1" / "ct1.dcm")
    assert ct["bytes_out"] == Path(ct["output"]).stat().st_size < ct["bytes_in"]
    source = read((tree / "study1" / "series1" / "ct1.dcm").read_bytes())
    np.testing.assert_array_equal(
        independent_decode(Path(ct["output"]).read_bytes()), source_pixels(source)
    )
    plan = rows["study2/plan.dcm"]
    assert (plan["outcome"], plan["code"]) == ("skipped", "no_pixel_data")
    assert Path(plan["output"]).read_bytes() == (tree / "study2" / "plan.dcm").read_bytes()
    assert "dcmpress summary" in proc.stderr  # stdout stays pure JSON lines


def test_a_failed_file_makes_the_exit_status_non_zero(tree: Path, tmp_path: Path) -> None:
    (tree / "notes.txt").write_text("not an image\n" * 20)
    out = tmp_path / "out"
    proc = dcmpress("compress", str(tree), "-o", str(out), "--jsonl", "--not-dicom", "fail")
    assert proc.returncode == 1
    row = records(proc.stdout)["notes.txt"]
    assert (row["outcome"], row["code"], row["output"]) == ("failed", "not_dicom", None)
    assert not (out / "notes.txt").exists()


def test_a_failed_file_is_copied_unchanged_unless_failed_output_is_none(
    tree: Path, tmp_path: Path
) -> None:
    """The output tree is a complete archive: a file that cannot be compressed because
    of what it holds is copied as it is, and its record stays failed and says so."""
    image = to_bytes(make_image(64, 64, bits_stored=12))
    (tree / "cut.dcm").write_bytes(image[: len(image) - 1000])
    out = tmp_path / "out"
    proc = dcmpress("compress", str(tree), "-o", str(out), "--jsonl")
    assert proc.returncode == 1  # a failure, as before
    row = records(proc.stdout)["cut.dcm"]
    assert (row["outcome"], row["code"], row["copied"]) == ("failed", "invalid_pixel_data", True)
    assert row["output"] == str(out / "cut.dcm") and row["message"].endswith("copied unchanged")
    assert (out / "cut.dcm").read_bytes() == (tree / "cut.dcm").read_bytes()
    assert row["bytes_out"] == row["bytes_in"]
    assert records(proc.stdout)["study2/plan.dcm"]["copied"] is True  # skipped: copied too
    bare = tmp_path / "bare"
    proc = dcmpress("compress", str(tree), "-o", str(bare), "--jsonl", "--failed-output", "none")
    row = records(proc.stdout)["cut.dcm"]
    assert (row["outcome"], row["output"], row["copied"]) == ("failed", None, False)
    assert not (bare / "cut.dcm").exists()


def files_from(stdin: bytes, *args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """The real command line reading its inputs from standard input."""
    return subprocess.run(
        [*DCMPRESS, "compress", "--files-from", "-", *args],
        input=stdin,
        capture_output=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "160"},
        check=False,
    )


def test_files_from_standard_input_in_one_run(tree: Path, tmp_path: Path) -> None:
    """NUL-separated, as ``find -print0`` writes: files and a tree mirror their paths
    as listed under OUT, a listed file that is gone is a failed record, not the end of
    the run."""
    listed = b"\0".join([b"archive/study1", b"archive/study2/rgb.dcm", b"archive/gone.dcm"])
    out = tmp_path / "out"
    proc = files_from(listed, "-0", "-o", str(out), "--jsonl", "--target", "rle", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # the missing file
    rows = records(proc.stdout.decode())
    assert set(rows) == {"study1/series1/ct1.dcm", "study1/series1/IM0002", "study2/rgb.dcm",
                         "gone.dcm"}  # fmt: skip
    gone = rows["gone.dcm"]
    assert (gone["outcome"], gone["code"]) == ("failed", "io_error")
    assert "No such file" in gone["message"]
    for name in ("study1/series1/ct1.dcm", "study2/rgb.dcm"):
        row = rows[name]
        assert (row["outcome"], row["code"]) == ("done", "compressed"), row
        assert row["output"] == str(out / "archive" / name)
        source = read((tree / name).read_bytes())
        np.testing.assert_array_equal(
            independent_decode(Path(row["output"]).read_bytes()), source_pixels(source)
        )


def test_files_from_refuses_before_writing_anything(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    twice = files_from(b"archive/study2/rgb.dcm\narchive/study2\n", "-o", str(out), cwd=tmp_path)
    assert twice.returncode == 2
    assert b"standard input, entry 2:" in twice.stderr and b"a second time" in twice.stderr
    both = files_from(b"archive\n", str(tree), "-o", str(out), cwd=tmp_path)
    assert both.returncode == 2 and b"not both" in both.stderr
    assert not out.exists()


def test_resume_compresses_only_what_an_interrupted_run_left(tree: Path, tmp_path: Path) -> None:
    """A file without output and a file changed since are compressed; the rest are
    recorded output_exists and left as they were."""
    out = tmp_path / "out"
    first = dcmpress("compress", str(tree), "-o", str(out), "--target", "rle")
    assert first.returncode == 0, first.stderr
    (out / "study2" / "rgb.dcm").unlink()  # as if the run had stopped before it
    changed = tree / "study1" / "series1" / "IM0002"
    changed.write_bytes(to_bytes(make_image(64, 64, bits_stored=12, seed=9)))
    later = (out / "study1" / "series1" / "IM0002").stat().st_mtime_ns + 10**9
    os.utime(changed, ns=(later, later))
    kept = (out / "study1" / "series1" / "ct1.dcm").read_bytes()
    again = dcmpress("compress", str(tree), "-o", str(out), "--target", "rle", "--resume",
                     "--jsonl")  # fmt: skip
    assert again.returncode == 0, again.stderr
    rows = records(again.stdout)
    codes = {name: (row["outcome"], row["code"]) for name, row in rows.items()}
    assert codes == {
        "study1/series1/ct1.dcm": ("skipped", "output_exists"),
        "study2/plan.dcm": ("skipped", "output_exists"),
        "study1/series1/IM0002": ("done", "compressed"),
        "study2/rgb.dcm": ("done", "compressed"),
    }
    assert (out / "study1" / "series1" / "ct1.dcm").read_bytes() == kept
    np.testing.assert_array_equal(
        independent_decode((out / "study1" / "series1" / "IM0002").read_bytes()),
        source_pixels(read(changed.read_bytes())),
    )


def test_non_dicom_files_are_copied_by_default(tree: Path, tmp_path: Path) -> None:
    notes = tree / "notes.txt"
    notes.write_text("not an image\n" * 20)
    out = tmp_path / "out"
    proc = dcmpress("compress", str(tree), "-o", str(out), "--jsonl", "-j", "2")
    assert proc.returncode == 0, proc.stderr
    row = records(proc.stdout)["notes.txt"]
    assert (row["outcome"], row["code"]) == ("skipped", "not_dicom")
    assert (out / "notes.txt").read_bytes() == notes.read_bytes()


def test_summary_table_is_printed_without_jsonl(tree: Path, tmp_path: Path) -> None:
    proc = dcmpress("compress", str(tree), "-o", str(tmp_path / "out"), "--target", "rle")
    assert proc.returncode == 0, proc.stderr
    assert "dcmpress summary" in proc.stdout
    assert "no_pixel_data" in proc.stdout and "compressed" in proc.stdout


def test_fallback_targets_and_lossy_options_from_the_command_line(tmp_path: Path) -> None:
    small = tmp_path / "archive" / "small.dcm"
    small.parent.mkdir()
    small.write_bytes(to_bytes(make_image(16, 16, bits_stored=12)))
    big = tmp_path / "archive" / "big.dcm"
    big.write_bytes(to_bytes(make_image(64, 64, bits_stored=12)))
    proc = dcmpress(
        "compress", str(small.parent), "-o", str(tmp_path / "out"),
        "--target", "j2k-lossy,rle", "--j2k-cr", "12", "--jsonl", "--min-ratio", "0",
        "--min-psnr", "0",  # noise at 12:1: the default guard would refuse it
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = records(proc.stdout)
    assert rows["small.dcm"]["target"] == "rle"
    assert rows["big.dcm"]["target"] == "j2k-lossy" and rows["big.dcm"]["psnr"] > 10
    assert rows["big.dcm"]["max_error"] > 0 and rows["small.dcm"]["psnr"] is None
    assert read(Path(rows["big.dcm"]["output"]).read_bytes()).LossyImageCompression == "01"


def test_environment_variables_configure_the_command(tree: Path, tmp_path: Path) -> None:
    proc = dcmpress(
        "compress", str(tree), "-o", str(tmp_path / "out"), "--jsonl",
        env={"DCMPRESS_TARGET": "rle", "DCMPRESS_NO_PIXEL_DATA": "skip"},
    )  # fmt: skip
    rows = records(proc.stdout)
    assert rows["study2/rgb.dcm"]["target"] == "rle"
    assert rows["study2/plan.dcm"]["output"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "jpeg-xl"], "unknown target"),
        (["--target", "rle", "--plugin", "rle=turbo"], "has no plugin"),
        (["--j2k-cr", "10", "--j2k-psnr", "50", "--target", "j2k-lossy"], "not both"),
        (["--unsupported", "maybe"], "unsupported"),
    ],
)
def test_bad_options_fail_before_any_work(
    tree: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    proc = dcmpress("compress", str(tree), "-o", str(tmp_path / "out"), *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "out").exists()


def test_output_directory_that_would_overwrite_inputs_is_refused(tree: Path) -> None:
    single = tree / "study2" / "rgb.dcm"
    proc = dcmpress("compress", str(single), "-o", str(single.parent))
    assert proc.returncode == 2
    assert "would overwrite its input" in proc.stderr


def test_doctor_lists_every_target_and_plugin() -> None:
    proc = dcmpress("doctor")
    assert proc.returncode == 0, proc.stderr
    for name in ("jpeg-ls", "jpeg-ls-near", "j2k", "j2k-lossy", "rle", "pyjpegls", "gdcm"):
        assert name in proc.stdout
    assert "available" in proc.stdout


def _abort_on_marked_files(
    job: local.Job, options: CompressionOptions, policy: Any = None
) -> dict[str, Any]:
    if job.path.name.startswith("crash"):
        faulthandler.disable()  # pytest's dump of this expected crash would flood the run
        os.kill(os.getpid(), signal.SIGABRT)  # a native codec crash, injected
    return REAL_RUN_JOB(job, options, policy)


REAL_RUN_JOB = local.run_job


def test_a_pool_process_crash_is_recorded_and_the_rest_still_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for index in range(6):
        (source / f"ok{index}.dcm").write_bytes(to_bytes(make_image(40, 40, seed=index)))
    (source / "crash.dcm").write_bytes(to_bytes(make_image(40, 40)))
    monkeypatch.setattr(local, "run_job", _abort_on_marked_files)  # inherited by fork
    jobs = local.plan_jobs([source], tmp_path / "out")  # walked as the run goes, as the CLI does
    seen: list[dict[str, Any]] = []
    local.run_all(jobs, CompressionOptions(), 2, seen.append)
    by_name = {Path(row["path"]).name: row for row in seen}
    assert len(seen) == len(by_name) == 7  # exactly one record per file
    assert by_name["crash.dcm"]["code"] == "codec_crashed"
    assert all(by_name[f"ok{i}.dcm"]["outcome"] == "done" for i in range(6))
    # the crash is about the file's content: it is copied unchanged (failed_output=copy)
    crashed = by_name["crash.dcm"]
    assert crashed["copied"] is True and crashed["message"].endswith("copied unchanged")
    assert Path(crashed["output"]).read_bytes() == (source / "crash.dcm").read_bytes()


def test_a_crashed_file_that_cannot_be_copied_is_still_recorded(tmp_path: Path) -> None:
    """The copy after a crash can fail too (the output's directory is a file here): the
    record stays codec_crashed, says why it has no output, and writes nothing."""
    source = tmp_path / "crash.dcm"
    source.write_bytes(to_bytes(make_image(40, 40)))
    (tmp_path / "out").write_text("a file where the output directory should be")
    job = local.Job(source, tmp_path / "out" / "crash.dcm")
    row = local.crash_record(job, "a codec crashed the process", CompressionOptions())
    assert (row["outcome"], row["code"], row["copied"], row["output"]) == (
        "failed", "codec_crashed", False, None)  # fmt: skip
    assert "not copied: cannot write" in row["message"] and row["bytes_out"] == 0


def test_outputs_are_created_as_the_users_umask_says(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [*DCMPRESS, "compress", str(tree), "--out", str(out), "--jsonl"],
        capture_output=True, text=True, timeout=300, umask=0o027, check=False,
        env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = records(proc.stdout)
    written = [Path(row["output"]) for row in rows.values() if row["output"]]
    assert {row["outcome"] for row in rows.values()} >= {"done", "skipped"}  # both kinds
    assert written and {path.stat().st_mode & 0o777 for path in written} == {0o640}


def test_a_large_volume_is_compressed_from_its_file_frame_by_frame(tmp_path: Path) -> None:
    """Above FRAMES_ABOVE (the default) the file is read as the engine needs it and the
    output goes through a temporary file; an independent decode is identical."""
    from worker.codec.frames import FRAMES_ABOVE

    ds = make_image(512, 512, frames=FRAMES_ABOVE // (512 * 512 * 2) + 2, bits_stored=12)
    source = tmp_path / "in" / "volume.dcm"
    source.parent.mkdir()
    source.write_bytes(to_bytes(ds))
    out = tmp_path / "out"
    proc = dcmpress("compress", str(source.parent), "--out", str(out), "--jsonl", "-j", "1")
    assert proc.returncode == 0, proc.stderr
    (row,) = records(proc.stdout).values()
    assert (row["outcome"], row["code"]) == ("done", "compressed"), row
    output = (out / "volume.dcm").read_bytes()
    assert row["bytes_out"] == len(output)
    np.testing.assert_array_equal(independent_decode(output), source_pixels(ds))
