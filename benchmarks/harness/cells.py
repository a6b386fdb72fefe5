"""One target on one reference set: the bare encoder, the engine, ``dcmpress compress
-j 1`` and every installed peer on the same files; and the newer targets through the
engine alone."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import codec_engine
from benchmarks.harness.children import find_tool, fresh_directory
from benchmarks.harness.commands import (
    PEERS,
    compress_pass,
    measure_command,
    peer_pass,
    rss_json,
)
from benchmarks.harness.sets import NEWER_TARGETS, ReferenceSet
from benchmarks.harness.timing import MB, Progress, Protocol, measure
from worker.codec.engine import process
from worker.codec.options import CompressionOptions
from worker.codec.targets import TARGETS, resolve_plugin


def engine_eligible(reference: ReferenceSet, target: str) -> tuple[list[Path], dict[str, str]]:
    """Files the engine compresses to ``target``, and the rest; also the engine's warm-up.

    Files dcmpress does not compress (e.g. 32-bit pixels for JPEG-LS) are left out of
    every measurement of that target, so all tools do the same work. Synthetic sets are
    compressible by construction: only their first file runs, as the warm-up.
    """
    options = CompressionOptions(target=[target], min_ratio=0)
    outcomes = {
        path: process(path.read_bytes(), options)
        for path in (reference.files if reference.mixed else reference.files[:1])
    }
    excluded = {p.name: f"{r.state}/{r.code}" for p, r in outcomes.items() if r.state != "done"}
    if not reference.mixed:
        if excluded:
            raise RuntimeError(f"set {reference.name}, target {target}: {excluded}")
        return list(reference.files), {}
    return [p for p, r in outcomes.items() if r.state == "done"], excluded


def input_directory(reference: ReferenceSet, eligible: Sequence[Path], work: Path) -> Path:
    """The set's directory, or a directory of hard links to its eligible files."""
    if len(eligible) == len(reference.files):
        return reference.directory
    directory = fresh_directory(work, "inputs")
    for path in eligible:
        os.link(path, directory / path.name)
    return directory


def measure_target_on_set(
    target: str, reference: ReferenceSet, protocol: Protocol, work: Path, progress: Progress
) -> dict[str, Any]:
    """Bare, engine, compress -j 1 and every installed peer for one target on one set."""
    eligible, excluded = engine_eligible(reference, target)
    if not eligible:
        return {"files": 0, "excluded": excluded}
    datas = [path.read_bytes() for path in eligible]
    bytes_in = sum(len(data) for data in datas)
    megabytes = bytes_in / MB
    largest = max(len(data) for data in datas)
    plugin = resolve_plugin(TARGETS[target]).name
    result: dict[str, Any] = {
        "files": len(eligible),
        "bytes": bytes_in,
        "largest_file_bytes": largest,
        "excluded": excluded,
    }

    progress.note(f"{target} / {reference.name}: bare pydicom compress")
    codec_engine.bare_seconds(datas[:1], target, plugin)  # warm-up
    result["bare"] = measure(
        lambda: codec_engine.bare_seconds(datas, target, plugin), protocol
    ).as_json(megabytes)

    progress.note(f"{target} / {reference.name}: engine")
    stages: dict[str, float] = {}

    def engine_once() -> float:
        seconds, size_ratio, stage_seconds = codec_engine.engine_seconds(datas, target)
        stages.clear()
        stages.update({name: value / seconds for name, value in stage_seconds.items()})
        result["engine_size_ratio"] = round(size_ratio, 3)
        return seconds

    result["engine"] = {  # warmed up by engine_eligible
        **measure(engine_once, protocol).as_json(megabytes),
        "stage_shares": {name: round(share, 3) for name, share in stages.items()},
    }

    progress.note(f"{target} / {reference.name}: dcmpress compress -j 1")
    inputs = input_directory(reference, eligible, work)
    command_work = fresh_directory(work, "compress")  # warmed up by measure_fixed_costs
    numbers, best = measure_command(
        partial(compress_pass, inputs, target, 1, command_work), protocol, megabytes, bytes_in
    )
    result["compress_j1"] = {**numbers, **rss_json(best.peak_rss, largest)}
    dcmpress_rate = numbers["mb_per_s"]

    result["peers"] = {}
    for peer in PEERS[target]:
        executable = find_tool(peer.program)
        if executable is None:
            result["peers"][peer.label] = {
                "available": False,
                "reason": f"{peer.program} not on PATH",
            }
            continue
        progress.note(f"{target} / {reference.name}: {peer.label}")
        peer_work = fresh_directory(work, "peer")  # warmed up by measure_fixed_costs
        numbers, best = measure_command(
            partial(peer_pass, executable, peer, eligible, peer_work), protocol, megabytes, bytes_in
        )
        result["peers"][peer.label] = {
            "available": True,
            "toolkit": peer.toolkit,
            "executable": executable,
            **numbers,
            **rss_json(best.peak_rss, largest),
            "dcmpress_over_peer": round(dcmpress_rate / numbers["mb_per_s"], 3),
        }
    return result


def _engine_pass(datas: list[bytes], target: str, ratio: list[float]) -> float:
    """Seconds of one engine pass over ``datas``; its mean size ratio into ``ratio``."""
    seconds, size_ratio, _ = codec_engine.engine_seconds(datas, target)
    ratio[:] = [size_ratio]
    return seconds


def measure_newer_targets(
    reference_sets: Sequence[ReferenceSet], protocol: Protocol, progress: Progress
) -> dict[str, Any]:
    """HTJ2K, JPEG XL and ``auto`` through the engine (verification on), on every set:
    MB/s and mean size ratio, to set beside the engine numbers of the other targets."""
    measured: dict[str, Any] = {}
    for target in NEWER_TARGETS:
        measured[target] = {}
        for reference in reference_sets:
            progress.note(f"{target} / {reference.name}: engine")
            eligible, excluded = engine_eligible(reference, target)
            if not eligible:
                measured[target][reference.name] = {"files": 0, "excluded": excluded}
                continue
            datas = [path.read_bytes() for path in eligible]
            ratio: list[float] = []
            timing = measure(partial(_engine_pass, datas, target, ratio), protocol)
            measured[target][reference.name] = {
                "files": len(eligible),
                "excluded": excluded,
                "engine": timing.as_json(sum(len(d) for d in datas) / MB),
                "engine_size_ratio": round(ratio[0], 3),
            }
    return measured


def measured_cells(results: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(target, set, cell) of every measured cell of a run's results with files in it."""
    for target, per_target in results["targets"].items():
        for set_name, cell in per_target["sets"].items():
            if cell["files"]:
                yield target, set_name, cell
