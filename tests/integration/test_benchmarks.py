"""``python -m benchmarks.run --quick`` runs end to end and reports every number it promises.

Only the shape of the results is checked: every target on every reference set, positive
throughputs and memory, a dcmpress / peer ratio for every peer tool on PATH. No
wall-clock assertions: performance is measured, not asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness.report import NOTES_MARKER, end_to_end_tables, write_results
from benchmarks.harness.startup import files_to_pay_off

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("jpeg-ls", "rle", "j2k")
SETS = ("ct", "ct-header", "volume", "cr", "us", "archive", "examples")
PEERS = {  # peer label -> the program that must be on PATH for it to run
    "jpeg-ls": {"dcmcjpls": "dcmcjpls", "gdcmconv --jpegls": "gdcmconv"},
    "rle": {"dcmcrle": "dcmcrle", "gdcmconv --rle": "gdcmconv"},
    "j2k": {"gdcmconv --j2k": "gdcmconv"},
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One ``--quick --json --no-end-to-end`` run: its JSON and its Markdown file."""
    results_file = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DCMPRESS_", "AWS_"))}
    proc = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.run",
            "--quick", "--json", "--no-end-to-end", "--results", str(results_file),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # stdout is the JSON and nothing else; the same results are saved beside the Markdown
    assert json.loads(results_file.with_suffix(".json").read_text()) == json.loads(proc.stdout)
    return json.loads(proc.stdout), results_file


def _positive(numbers: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert numbers[key] > 0, (key, numbers)


def test_every_target_is_measured_on_every_reference_set(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    results, _ = quick_run
    assert set(results["sets"]) == set(SETS)
    assert set(results["targets"]) == set(TARGETS)
    for target in TARGETS:
        for set_name in SETS:
            cell = results["targets"][target]["sets"][set_name]
            assert cell["files"] > 0, (target, set_name, cell)
            for stage in ("bare", "engine", "compress_j1"):
                _positive(cell[stage], "mb_per_s", "seconds", "runs")
            _positive(cell["compress_j1"], "size_ratio", "peak_rss_mib")
            _positive(cell["compress_j1"], "peak_rss_per_largest_input")
            assert cell["engine"]["stage_shares"], (target, set_name)


def test_files_a_target_cannot_take_are_left_out_and_named(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    results, _ = quick_run
    examples = results["sets"]["examples"]
    for target in TARGETS:
        cell = results["targets"][target]["sets"]["examples"]
        assert cell["files"] + len(cell["excluded"]) == examples["files"]
    # rtdose.dcm has 32 bits stored: no lossless target here takes it
    assert "rtdose.dcm" in results["targets"]["jpeg-ls"]["sets"]["examples"]["excluded"]


def test_every_peer_on_path_has_throughput_memory_and_a_ratio(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    results, _ = quick_run
    for target, peers in PEERS.items():
        for set_name in SETS:
            measured = results["targets"][target]["sets"][set_name]["peers"]
            assert set(measured) == set(peers)
            for label, program in peers.items():
                peer = measured[label]
                if shutil.which(program) is None:
                    assert peer["available"] is False
                    continue
                assert peer["available"] is True, (target, set_name, label)
                _positive(peer, "mb_per_s", "size_ratio", "peak_rss_mib", "dcmpress_over_peer")
                assert (
                    peer["output_syntax"]
                    == (
                        results["targets"][target]["sets"][set_name]["compress_j1"]["output_syntax"]
                    )
                )


def test_scaling_fixed_costs_and_machine_are_reported(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    results, _ = quick_run
    scaling = results["scaling"]
    assert scaling["set"] in SETS and scaling["targets"]
    for numbers in scaling["targets"].values():
        _positive(numbers["j1"], "mb_per_s")
        _positive(numbers["j2"], "mb_per_s")
        assert numbers["j2_over_j1"] > 0
        assert numbers["engine_2_over_1"] > 0
        assert set(numbers["engine_seconds"]) == {"1", "2"}
    assert results["fixed_cost_seconds"]
    assert all(seconds > 0 for seconds in results["fixed_cost_seconds"].values())
    machine = results["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["python"]
    assert machine["packages"]["pydicom"] != "not installed"
    assert results["end_to_end"] is None  # --no-end-to-end


def test_the_results_file_holds_every_target(quick_run: tuple[dict[str, Any], Path]) -> None:
    _, results_file = quick_run
    text = results_file.read_text()
    assert text.startswith("# dcmpress benchmark results")
    for target in TARGETS:
        assert f"### {target}: MB/s" in text


def test_rewriting_the_results_file_keeps_the_notes_below_the_tables(
    quick_run: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    results, results_file = quick_run
    path = tmp_path / "RESULTS.md"
    notes = f"{NOTES_MARKER}\n\n## Notes\n\nWritten by hand.\n"
    path.write_text("# an older run\n\n### jpeg-ls: stale table\n\n" + notes)
    write_results(results, path)
    text = path.read_text()
    assert text.startswith("# dcmpress benchmark results") and "stale" not in text
    assert text.endswith(notes) and text.count(NOTES_MARKER) == 1
    headings = [line for line in results_file.read_text().splitlines() if line.startswith("#")]
    assert all(heading in text for heading in headings)  # the run's tables, every one


def test_htj2k_jpegxl_and_auto_are_measured_beside_the_others(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    results, results_file = quick_run
    assert set(results["newer_targets"]) == {"htj2k", "jpegxl", "auto"}
    for target, per_set in results["newer_targets"].items():
        assert set(per_set) == set(SETS)
        for set_name in ("ct", "volume", "archive"):
            cell = per_set[set_name]
            assert cell["files"] > 0, (target, set_name, cell)
            _positive(cell["engine"], "mb_per_s")
            assert cell["engine_size_ratio"] > 0
    assert "### Every target through the engine" in results_file.read_text()


def test_start_up_payoff_is_reported_for_every_peer_run(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    """Each measured peer, on a target whose fixed cost was measured, has a payoff row
    whose numbers follow from the cells they were computed from."""
    results, results_file = quick_run
    rows = {(r["target"], r["set"], r["peer"]): r for r in results["start_up_payoff"]}
    assert rows
    for (target, set_name, label), row in rows.items():
        cell = results["targets"][target]["sets"][set_name]
        start_up = results["fixed_cost_seconds"][f"dcmpress compress -j 1 --target {target}"]
        assert row["start_up_seconds"] == start_up
        assert row["peer_seconds_per_file"] == pytest.approx(
            cell["peers"][label]["seconds"] / cell["files"], abs=1e-5
        )
        files = row["files_to_pay_off"]
        saving = row["peer_seconds_per_file"] - row["dcmpress_seconds_per_file"]
        if files is None:
            assert saving <= 1e-5
        else:
            assert files >= 1 and files * saving >= start_up - 1e-3 * files
    measured = {
        (target, set_name, label)
        for target, per_target in results["targets"].items()
        if f"dcmpress compress -j 1 --target {target}" in results["fixed_cost_seconds"]
        for set_name, cell in per_target["sets"].items()
        for label, peer in cell["peers"].items()
        if peer["available"]
    }
    assert set(rows) == measured
    assert "### Start-up paid off" in results_file.read_text()


@pytest.mark.parametrize(
    ("start_up", "per_file", "peer_per_file", "expected"),
    [
        (0.5, 0.015, 0.026, 46),  # 0.5 / 0.011 = 45.5, rounded up
        (0.5, 0.010, 0.020, 50),  # exactly 50: 50 files tie, so 50 is enough
        (0.5, 0.030, 0.020, None),  # slower per file: start-up is never paid off
        (0.5, 0.020, 0.020, None),
        (0.0, 0.010, 0.020, 1),  # no start-up: one file already wins
    ],
)
def test_files_to_pay_off(
    start_up: float, per_file: float, peer_per_file: float, expected: int | None
) -> None:
    assert files_to_pay_off(start_up, per_file, peer_per_file) == expected


def test_an_end_to_end_run_reports_where_the_worker_cpu_goes(tmp_path: Path) -> None:
    """One small end-to-end run through the real stack (SeaweedFS, Redis, a Celery
    worker), in a child process as the benchmark runs it: its numbers, and the tables
    RESULTS.md shows them in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DCMPRESS_", "AWS_"))}
    script = (
        "import json, sys; from pathlib import Path; "
        "from benchmarks.harness.stack import end_to_end_run; "
        "print(json.dumps(end_to_end_run('rle', 128, 12, 1, Path(sys.argv[1]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (measured["target"], measured["objects"]) == ("rle", 12)
    _positive(measured, "codec_only_mb_per_s", "end_to_end_mb_per_s", "end_to_end_over_codec_only")
    stack = measured["stack_cpu_ms_per_object"]
    # the pool child is counted with the main process (12 objects: the main process's
    # 2-4 ms each is then several of /proc's 10 ms ticks; 4 read as 0 in one CI run)
    assert stack["worker"] > stack["worker main process"] > 0
    parts = measured["in_process_cpu_ms"]
    _positive(parts, "pipeline", "engine", "head", "get", "put", "redis")
    assert parts["pipeline"] > parts["engine"]  # the pipeline runs the engine and more
    assert set(measured["worker_stage_shares"]) >= {"fetch", "upload"}
    # the migration a user would script instead, on the same objects and servers
    baselines = measured["baseline"]
    assert len(baselines) == 2  # a process per step, and one Python process with boto3
    for baseline in baselines:
        if "skipped" in baseline:  # no DCMTK here
            assert "dcmcrle" in baseline["skipped"]
            continue
        assert baseline["objects"] == 12 and baseline["compressor"].startswith("dcmcrle")
        assert all(baseline["cpu_ms_per_object"][step] > 0 for step in ("download", "upload"))
        ratios = baseline["dcmpress_over_baseline_cpu"]
        assert set(ratios) == {"client side", "with the S3 server", "with both servers"}
        assert all(ratio > 0 for ratio in ratios.values())

    throughput, where = end_to_end_tables({"processes": 1, "runs": [measured]})
    assert throughput.rows[0][:3] == ("rle", "128x128 12-bit", "12")
    assert where.rows[0][0] == "rle" and len(where.rows[0]) == len(where.headers)
    assert "| rle | 128x128 12-bit |" in where.markdown()
