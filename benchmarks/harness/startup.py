"""What a ``dcmpress`` start-up costs and what it buys: the fixed cost of one
invocation of each command, ``-j 2`` against ``-j 1``, and from how many files on one
``dcmpress compress`` run beats a peer run once per file."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import end_to_end
from benchmarks.harness.cells import engine_eligible, measured_cells
from benchmarks.harness.children import find_tool, fresh_directory
from benchmarks.harness.commands import PEERS, CommandPass, compress_pass, peer_pass
from benchmarks.harness.sets import LOSSLESS_TARGETS, ReferenceSet
from benchmarks.harness.timing import MB, Progress, Protocol, Timing, measure
from dcmpress.stack.samples import make_image, to_bytes


def _seconds(run_pass: Callable[..., CommandPass], *args: Any) -> float:
    return run_pass(*args).seconds


def measure_scaling(
    reference: ReferenceSet,
    j1_results: dict[str, dict[str, Any]],
    targets_measured: Sequence[str],
    protocol: Protocol,
    work: Path,
    progress: Progress,
) -> dict[str, Any]:
    """``dcmpress compress -j 2`` on one multi-file set against its ``-j 1`` numbers,
    and the engine alone in a pool of 2 processes against 1 (no start-up in it).

    ``j1_results`` are the set's ``compress_j1`` numbers per target, measured earlier
    in this run on the same directory.
    """
    megabytes = reference.total_bytes / MB
    targets: dict[str, Any] = {}
    for target in targets_measured:
        progress.note(f"scaling: {target} / {reference.name}: the engine in 1 and 2 processes")
        eligible, _ = engine_eligible(reference, target)
        datas = [path.read_bytes() for path in eligible]
        pools = {
            count: min(end_to_end.codec_only(datas, target, count).seconds for _ in range(2))
            for count in (1, 2)
        }  # the faster of two passes each: a pool pass is short and the machine shared
        progress.note(f"scaling: {target} / {reference.name}: dcmpress compress -j 2")
        command_work = fresh_directory(work, "scaling")
        timing = measure(
            partial(_seconds, compress_pass, reference.directory, target, 2, command_work),
            protocol,
        )
        j1 = {k: v for k, v in j1_results[target].items() if k in Timing.JSON_KEYS}
        j2 = timing.as_json(megabytes)
        targets[target] = {
            "j1": j1,
            "j2": j2,
            "j2_over_j1": round(j2["mb_per_s"] / j1["mb_per_s"], 3),
            "engine_seconds": {str(count): round(sec, 4) for count, sec in pools.items()},
            "engine_2_over_1": round(pools[1] / pools[2], 3),
        }
    return {"set": reference.name, "targets": targets}


def compress_label(target: str) -> str:
    """The fixed-cost entry of ``dcmpress compress -j 1`` for ``target``."""
    return f"dcmpress compress -j 1 --target {target}"


def measure_fixed_costs(
    work: Path, targets: Sequence[str], protocol: Protocol, progress: Progress
) -> dict[str, Any]:
    """Wall seconds of one invocation of each command on one 64x64 file.

    Runs first: its untimed first invocation of every command is the warm-up of all
    later subprocess measurements (interpreter, modules and codec libraries cached).
    """
    progress.note("fixed cost per invocation (64x64 file), warming up every command")
    tiny = work / "tiny" / "tiny.dcm"
    tiny.parent.mkdir(parents=True)
    tiny.write_bytes(to_bytes(make_image(64, 64, bits_stored=12)))
    costs: dict[str, Any] = {}
    command_work = fresh_directory(work, "tiny-compress")
    compress_pass(tiny, LOSSLESS_TARGETS[0], 1, command_work)  # warm-up
    for target in targets:
        timing = measure(partial(_seconds, compress_pass, tiny, target, 1, command_work), protocol)
        costs[compress_label(target)] = round(timing.median, 4)
    for peer in (peer for peers in PEERS.values() for peer in peers):
        executable = find_tool(peer.program)
        if executable is None:
            continue
        peer_work = fresh_directory(work, "tiny-peer")
        peer_pass(executable, peer, [tiny], peer_work)  # warm-up
        timing = measure(
            partial(_seconds, peer_pass, executable, peer, [tiny], peer_work), protocol
        )
        costs[peer.label] = round(timing.median, 4)
    return costs


def files_to_pay_off(start_up: float, per_file: float, peer_per_file: float) -> int | None:
    """How many files a ``dcmpress compress`` run needs before it beats the peer run
    once per file: its start-up divided by what it saves on each file (the peer pays
    its own start-up on every file). None if it saves nothing per file."""
    saving = peer_per_file - per_file
    if saving <= 0:
        return None
    return max(1, math.ceil(start_up / saving))


def start_up_payoff(results: dict[str, Any]) -> list[dict[str, Any]]:
    """For each target, set and peer: dcmpress's seconds per file once started (its
    run over the set less the fixed cost of one invocation) against the peer's per
    file, and :func:`files_to_pay_off`. Small sets and single files go to the
    toolkits; this says from how many files of that kind on they do not."""
    rows = []
    for target, set_name, cell in measured_cells(results):
        start_up = results["fixed_cost_seconds"].get(compress_label(target))
        if start_up is None:
            continue
        files = cell["files"]
        per_file = max(0.0, cell["compress_j1"]["seconds"] - start_up) / files
        for label, peer in cell["peers"].items():
            if not peer["available"]:
                continue
            peer_per_file = peer["seconds"] / files
            rows.append(
                {
                    "target": target,
                    "set": set_name,
                    "peer": label,
                    "start_up_seconds": start_up,
                    "dcmpress_seconds_per_file": round(per_file, 5),
                    "peer_seconds_per_file": round(peer_per_file, 5),
                    "files_to_pay_off": files_to_pay_off(start_up, per_file, peer_per_file),
                }
            )
    return rows
