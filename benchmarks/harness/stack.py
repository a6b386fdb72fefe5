"""The real stack end to end for each lossless target (``benchmarks.end_to_end``):
stack against codec alone in wall time, CPU per object by party, and where a worker's
CPU beyond the engine goes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks import end_to_end
from benchmarks.harness.sets import LOSSLESS_TARGETS
from benchmarks.harness.timing import MB, Progress
from dcmpress.stack.samples import make_image, to_bytes


def measure_end_to_end(objects: int, work: Path, progress: Progress) -> dict[str, Any]:
    """``benchmarks.end_to_end``'s measurements for each lossless target and ``htj2k``, on
    CT-like 512x512 slices and on fewer 2048x2048 images: stack / codec alone in wall
    time, CPU per object by party, where the worker's CPU beyond the engine went, and
    the migration a user would script instead."""
    processes = os.cpu_count() or 1
    runs = []
    for target in (*LOSSLESS_TARGETS, "htj2k"):
        for side, count in ((512, objects), (2048, max(2, objects // 4))):
            progress.note(
                f"end to end: {count} objects {side}x{side}, {target}, {processes} processes"
            )
            runs.append(end_to_end_run(target, side, count, processes, work / f"{target}-{side}"))
    return {"processes": processes, "runs": runs}


def end_to_end_run(
    target: str, side: int, count: int, processes: int, work: Path
) -> dict[str, Any]:
    """One target on ``count`` synthetic ``side``x``side`` 12-bit images: the codec alone
    in a pool, then the stack, then where the worker's CPU went; JSON-serialisable."""
    files = [to_bytes(make_image(side, side, bits_stored=12, seed=i)) for i in range(count)]
    megabytes = sum(len(data) for data in files) / MB
    codec = end_to_end.codec_only(files, target, processes)
    full = end_to_end.end_to_end(files, target, processes, work, baseline=True)
    engine_ms = codec.cpu["engine"] / count * 1000
    cpu_ms = {name: round(seconds / count * 1000, 2) for name, seconds in full.cpu.items()}
    return {
        "target": target,
        "image": f"{side}x{side} 12-bit",
        "objects": count,
        "bytes": int(megabytes * MB),
        "codec_only_mb_per_s": round(megabytes / codec.seconds, 3),
        "end_to_end_mb_per_s": round(megabytes / full.seconds, 3),
        "codec_only_objects_per_s": round(count / codec.seconds, 2),
        "end_to_end_objects_per_s": round(count / full.seconds, 2),
        "end_to_end_over_codec_only": round(codec.seconds / full.seconds, 3),
        "engine_cpu_ms_per_object": round(engine_ms, 2),
        "stack_cpu_ms_per_object": cpu_ms,
        "engine_cpu_over_worker_cpu": round(engine_ms / cpu_ms["worker"], 3),
        "worker_stage_shares": end_to_end.stage_shares(full.stages),
        # CPU ms in one process against the same stack (end_to_end.breakdown)
        "in_process_cpu_ms": {name: round(ms, 3) for name, ms in full.parts.items()},
        # the migration a user would script instead (benchmarks.baseline)
        "baseline": full.baseline,
    }
