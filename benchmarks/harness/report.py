"""The report: the machine and the protocol, then every table in reading order (the
tables of the whole run, scaling, fixed cost and end to end, are made here), on the
terminal or as ``RESULTS.md`` (with every number beside it in ``RESULTS.json``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.harness.tables import (
    TextTable,
    memory_table,
    newer_targets_table,
    payoff_table,
    rate,
    stage_table,
    throughput_tables,
)

# Everything from this line on in RESULTS.md is written by hand and kept by a rewrite
NOTES_MARKER = "<!-- notes: kept when python -m benchmarks.run --results rewrites the tables -->"


def other_tables(results: dict[str, Any]) -> list[TextTable]:
    """Scaling, fixed cost per invocation and end to end."""
    scaling = results["scaling"]
    tables = [
        TextTable(
            f"dcmpress compress -j 2 vs -j 1 on set {scaling['set']} (MB/s; engine alone: "
            "its pool of 2 processes against 1, wall time, no start-up)",
            ("target", "-j 1", "-j 2", "-j 2 / -j 1", "engine 2 / 1"),
            tuple(
                (
                    target,
                    rate(s["j1"]),
                    rate(s["j2"]),
                    f"{s['j2_over_j1']:.2f}",
                    f"{s['engine_2_over_1']:.2f}",
                )
                for target, s in scaling["targets"].items()
            ),
        ),
        TextTable(
            "Fixed cost: wall seconds of one invocation on a 64x64 file",
            ("command", "seconds"),
            tuple(
                (name, f"{seconds:.3f}") for name, seconds in results["fixed_cost_seconds"].items()
            ),
        ),
    ]
    e2e = results["end_to_end"]
    if e2e:
        tables += end_to_end_tables(e2e)
        if any("baseline" in run for run in e2e["runs"]):
            tables.append(baseline_table(e2e))
    return tables


def end_to_end_tables(e2e: dict[str, Any]) -> list[TextTable]:
    """The real stack against the engine alone, and where the worker's CPU went."""
    runs = e2e["runs"]
    shares = "; ".join(
        f"{run['target']} {run['image']}: "
        + " ".join(f"{k} {v:.0%}" for k, v in run["worker_stage_shares"].items())
        for run in runs
    )
    throughput = TextTable(
        f"End to end ({e2e['processes']} worker processes, one run each; the S3 server and "
        "Redis share the machine)",
        (
            "target",
            "images",
            "objects",
            "codec only MB/s",
            "end to end MB/s",
            "end to end / codec",
            "engine CPU / worker CPU",
        ),
        tuple(
            (
                run["target"],
                run["image"],
                str(run["objects"]),
                f"{run['codec_only_mb_per_s']:.1f}",
                f"{run['end_to_end_mb_per_s']:.1f}",
                f"{run['end_to_end_over_codec_only']:.2f}",
                f"{run['engine_cpu_over_worker_cpu']:.2f}",
            )
            for run in runs
        ),
        f"Worker stage shares (wall): {shares}",
        text_columns=2,
    )

    def split(run: dict[str, Any]) -> tuple[str, ...]:
        stack, parts = run["stack_cpu_ms_per_object"], run["in_process_cpu_ms"]
        requests = parts["head"] + parts["get"] + parts["put"]
        return (
            run["target"],
            run["image"],
            f"{stack['worker']:.1f}",
            f"{stack['worker main process']:.1f}",
            f"{run['engine_cpu_ms_per_object']:.1f}",
            f"{parts['engine']:.1f}",
            f"{requests:.1f}",
            f"{parts['pipeline'] - parts['engine'] - requests:.1f}",
            f"{stack['worker'] - parts['pipeline']:.1f}",
            f"{stack['s3 server']:.1f}",
            f"{stack['redis']:.1f}",
            f"{parts['redis']:.3f}",
        )

    where = TextTable(
        "End to end: where a worker's CPU per object goes (ms)",
        (
            "target",
            "images",
            "worker",
            "its main process",
            "engine in a pool",
            "engine alone",
            "HEAD + GET + PUT",
            "rest of the pipeline",
            "worker less pipeline",
            "S3 server",
            "Redis server",
            "one Redis round trip",
        ),
        tuple(split(run) for run in runs),
        "worker: the Celery worker's process tree in the stack run (main process and pool), "
        "beside the S3 server and Redis; engine in a pool: the codec-only run, as many "
        "processes as the worker; engine alone, the three S3 requests and one Redis round "
        "trip: measured one after another in one process against the same servers; rest of "
        "the pipeline: the pipeline run that way without Celery on the same objects, less "
        "those; worker less pipeline: Celery, and the cost of sharing the cores with the "
        "other worker processes and the servers",
        text_columns=2,
    )
    return [throughput, where]


def baseline_table(e2e: dict[str, Any]) -> TextTable:
    """dcmpress's CPU per object in the stack against the migration a user would script
    without it (``benchmarks.baseline``), on the same objects and servers."""

    def row(run: dict[str, Any], script: dict[str, Any]) -> tuple[str, ...]:
        if "skipped" in script:
            return (run["target"], run["image"], f"skipped: {script['skipped']}", *["-"] * 7)
        cpu, ours = script["cpu_ms_per_object"], script["dcmpress_cpu_ms_per_object"]
        ratios = script["dcmpress_over_baseline_cpu"]
        return (
            run["target"],
            run["image"],
            f"{script['copier']}, {script['compressor']}",
            f"{cpu['download'] + cpu['upload']:.1f}",
            f"{cpu['compress']:.1f}",
            f"{cpu['s3 server']:.1f}",
            f"{ours['worker']:.1f}",
            f"{ours['s3 server']:.1f}",
            f"{ratios['client side']:.2f}",
            f"{ratios['with the S3 server']:.2f}",
        )

    rows = tuple(
        row(run, script)
        for run in e2e["runs"]
        for script in run.get("baseline") or [{"skipped": "not run"}]
    )
    return TextTable(
        "dcmpress vs a scripted migration: CPU ms per object",
        (
            "target",
            "images",
            "script",
            "script: copies",
            "script: compress",
            "S3 server during script",
            "dcmpress worker",
            "S3 server during dcmpress",
            "dcmpress / script",
            "with the S3 server",
        ),
        rows,
        "script: per object, one object at a time, no verification (benchmarks.baseline), "
        "after the stack run on the same objects and servers: download, compress and "
        "upload each a new process (aws s3 cp), or one Python process with one boto3 "
        "client and a new compressor process per object (its start-up not counted); "
        "dcmpress: the Celery worker's tree in the stack run, with "
        "verification; dcmpress / script: its CPU per object over the script's (< 1.00: "
        "dcmpress uses less), without and with the S3 server's",
        text_columns=3,
    )


def all_tables(results: dict[str, Any]) -> list[TextTable]:
    """Every table, in reading order."""
    return [
        *throughput_tables(results),
        newer_targets_table(results),
        payoff_table(results),
        stage_table(results),
        memory_table(results),
        *other_tables(results),
    ]


def machine_lines(results: dict[str, Any]) -> list[str]:
    """The machine and the protocol, one fact a line."""
    machine = results["machine"]
    tools = ", ".join(
        f"{name} {info['version']} ({info['path']})" if info else f"{name} not found"
        for name, info in machine["tools"].items()
    )
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    return [
        f"CPU: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['ram_gib']} GiB RAM, {machine['os']}",
        f"Python {machine['python']}; {packages}",
        f"Peers: {tools}; DCMTK for dcmc*, GDCM for gdcmconv",
        f"Load average at start {machine['load_average_at_start']}, "
        f"at end {results['load_average_at_end']}; run took {results['seconds_total']:.0f} s"
        f"{' (--quick)' if results['quick'] else ''}",
        f"Protocol: {results['protocol']}. MB/s = 10^6 bytes of input file per wall second.",
        "bare = pydicom.pixels.compress on decoded arrays; engine = process() (parse, decode, "
        "encode, serialise, verify); compress -j1 = `dcmpress compress -j 1` as one "
        "subprocess over the set (start-up included, modules' bytecode cached); peers: one "
        "subprocess per file, no verification.",
    ]


def print_tables(results: dict[str, Any], stream: Any) -> None:
    """The human-readable report."""
    console = Console(file=stream, width=200)
    for line in machine_lines(results):
        console.print(line, highlight=False, soft_wrap=True)
    for table in all_tables(results):
        console.print()
        console.print(table.rich())


def write_results(results: dict[str, Any], path: Path) -> None:
    """(Re)write the Markdown results file, and beside it (``.json``) every number it
    was made from, for readers that want more than the tables show. The notes below
    :data:`NOTES_MARKER` in the file, if any, are kept as they are."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# dcmpress benchmark results",
        "",
        f"Written by `python -m benchmarks.run{' --quick' if results['quick'] else ''} "
        f"--results` on {when}; every number in the tables down to the notes comes from "
        "that one run.",
        "",
        *[f"- {line}" for line in machine_lines(results)],
        "",
        *[table.markdown() for table in all_tables(results)],
    ]
    notes = kept_notes(path)
    path.write_text("\n".join(parts) + (f"\n{notes}" if notes else ""))
    path.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")


def kept_notes(path: Path) -> str:
    """The notes of an existing results file: from :data:`NOTES_MARKER` to its end."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ""
    start = text.find(NOTES_MARKER)
    return text[start:] if start >= 0 else ""
