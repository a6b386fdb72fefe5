"""``dcmpress compress`` and the peer toolkits (DCMTK, GDCM) as subprocesses over a
set's files: one timed pass, and a measurement of throughput, size ratio and RSS."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread

from benchmarks.harness.children import ChildCommand, child_env, fresh_directory, run_children
from benchmarks.harness.timing import MIB, Protocol, measure


@dataclass(frozen=True)
class CommandPass:
    """One timed pass of a command over a set's files."""

    seconds: float
    peak_rss: int
    bytes_out: int
    output: Path  # one output file, to read its transfer syntax


def compress_pass(inputs: Path, target: str, processes: int, work: Path) -> CommandPass:
    """``dcmpress compress -j N`` over ``inputs`` as one subprocess; every file must be done."""
    out = fresh_directory(work, "out")
    argv = [
        sys.executable, "-m", "dcmpress", "compress", str(inputs), "--out", str(out),
        "-j", str(processes), "--target", target, "--min-ratio", "0", "--jsonl",
    ]  # fmt: skip
    command = ChildCommand(tuple(argv), work / "records.jsonl", work / "stderr.txt")
    (run,) = run_children([command], child_env())
    records = [json.loads(line) for line in (work / "records.jsonl").read_text().splitlines()]
    not_done = [r for r in records if r["outcome"] != "done"]
    if run.returncode != 0 or not records or not_done:
        detail = not_done[:1] or (work / "stderr.txt").read_text()[-2000:]
        raise RuntimeError(f"dcmpress compress {inputs} --target {target} failed: {detail}")
    return CommandPass(
        run.seconds, run.peak_rss, sum(r["bytes_out"] for r in records), Path(records[0]["output"])
    )


@dataclass(frozen=True)
class Peer:
    """Another toolkit's command line that writes the same transfer syntax."""

    label: str
    program: str
    arguments: tuple[str, ...]
    toolkit: str  # "DCMTK" or "GDCM"


PEERS: dict[str, tuple[Peer, ...]] = {
    "jpeg-ls": (
        Peer("dcmcjpls", "dcmcjpls", (), "DCMTK"),
        Peer("gdcmconv --jpegls", "gdcmconv", ("--jpegls",), "GDCM"),
    ),
    "rle": (
        Peer("dcmcrle", "dcmcrle", (), "DCMTK"),
        Peer("gdcmconv --rle", "gdcmconv", ("--rle",), "GDCM"),
    ),
    "j2k": (Peer("gdcmconv --j2k", "gdcmconv", ("--j2k",), "GDCM"),),
}


def peer_pass(executable: str, peer: Peer, files: Sequence[Path], work: Path) -> CommandPass:
    """The peer once per file, one after the other, as a user's shell loop would."""
    out = fresh_directory(work, "out")
    commands = [
        ChildCommand(
            (executable, *peer.arguments, str(path), str(out / path.name)),
            work / f"{index}.out.txt",
            work / f"{index}.err.txt",
        )
        for index, path in enumerate(files)
    ]
    runs = run_children(commands, child_env())
    for index, (path, run) in enumerate(zip(files, runs, strict=True)):
        if run.returncode != 0 or not (out / path.name).exists():
            detail = (work / f"{index}.err.txt").read_text()[-2000:]
            raise RuntimeError(f"{peer.label} failed on {path.name}: {detail}")
    bytes_out = sum(p.stat().st_size for p in out.iterdir())
    return CommandPass(
        sum(r.seconds for r in runs), max(r.peak_rss for r in runs), bytes_out, out / files[0].name
    )


def output_syntax(path: Path) -> str:
    """The transfer syntax a tool wrote, to show every tool wrote the same kind of file."""
    syntax = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    return f"{syntax.name} ({syntax})"


def rss_json(peak_rss: int, largest_bytes: int) -> dict[str, Any]:
    """Peak RSS in MiB and as a multiple of the largest input object."""
    return {
        "peak_rss_mib": round(peak_rss / MIB, 1),
        "peak_rss_per_largest_input": round(peak_rss / largest_bytes, 2),
    }


def measure_command(
    run_pass: Callable[[], CommandPass], protocol: Protocol, megabytes: float, bytes_in: int
) -> tuple[dict[str, Any], CommandPass]:
    """Warm up, time per the protocol, and describe throughput, size ratio and RSS."""
    passes: list[CommandPass] = []

    def timed() -> float:
        passes.append(run_pass())
        return passes[-1].seconds

    timing = measure(timed, protocol)
    last = passes[-1]
    numbers = {
        **timing.as_json(megabytes),
        "size_ratio": round(bytes_in / last.bytes_out, 3),
        "output_syntax": output_syntax(last.output),
    }
    return numbers, CommandPass(
        last.seconds, max(p.peak_rss for p in passes), last.bytes_out, last.output
    )
