"""Every performance number of dcmpress in one run, on one machine, beside its peers.

On reference sets synthesised in a temporary directory (no downloads, no patient data)
and, for each lossless target (``jpeg-ls``, ``rle``, ``j2k``), measures:

* bare: ``pydicom.pixels.compress`` on already-decoded arrays (``codec_engine``);
* engine: ``worker.codec.engine.process``, parse + decode + encode + serialise + verify;
* compress -j 1: the local ``dcmpress compress`` command as one subprocess over the
  set's directory, start-up included, with its peak RSS (``os.wait4`` on that child);
* peers: ``dcmcjpls`` / ``dcmcrle`` (DCMTK) and ``gdcmconv --jpegls/--rle/--j2k`` (GDCM),
  one subprocess per file on the same files, each with its peak RSS and the ratio
  dcmpress-compress / peer throughput (> 1.0: dcmpress is faster);

then ``dcmpress compress -j 2`` against ``-j 1`` on the largest multi-file set, the
fixed cost of one invocation of each command on a tiny file, from it how many files
of each set's kind a ``dcmpress compress`` run needs to beat a peer run once per file,
and (unless ``--no-end-to-end``) for each lossless target ``end_to_end``'s real
stack against the codec alone, with where a worker's CPU beyond the engine goes.

MB/s is megabytes (10^6 bytes) of input file per wall second. Each number is the
median of up to ``--repeats`` timed runs after an untimed warm-up; repeating stops
early once a measurement has used ``--budget`` seconds (the run count is reported).
The parts are in ``benchmarks/harness``, one job a module.

Run from the repository's root:
``python -m benchmarks.run [--quick] [--json] [--results [PATH]] [--no-end-to-end]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness.cells import measure_newer_targets, measure_target_on_set
from benchmarks.harness.children import launcher_floor
from benchmarks.harness.machine import describe_machine
from benchmarks.harness.report import print_tables, write_results
from benchmarks.harness.sets import (
    DEFAULT_SIZES,
    LOSSLESS_TARGETS,
    QUICK_SIZES,
    ReferenceSet,
    make_reference_sets,
)
from benchmarks.harness.stack import measure_end_to_end
from benchmarks.harness.startup import measure_fixed_costs, measure_scaling, start_up_payoff
from benchmarks.harness.timing import MIB, Progress, Protocol
from worker.codec.targets import TARGETS, resolve_plugin

DEFAULT_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def describe_sets(reference_sets: Sequence[ReferenceSet]) -> dict[str, Any]:
    """Each set's description, file count and sizes, for the results."""
    return {
        reference.name: {
            "description": reference.description,
            "files": len(reference.files),
            "bytes": reference.total_bytes,
            "largest_file_bytes": reference.largest_bytes,
        }
        for reference in reference_sets
    }


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Every measurement; the JSON-serialisable results."""
    sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    protocol = Protocol(repeats=args.repeats or sizes.repeats, budget=args.budget)
    results: dict[str, Any] = {
        "schema": 1,
        "quick": args.quick,
        "protocol": protocol.describe(),
        "machine": describe_machine(),
        "rss_floor_mib": round(launcher_floor() / MIB, 1),
        "sets": {},
        "targets": {},
    }
    with tempfile.TemporaryDirectory(prefix="dcmpress-bench-") as tmp:
        root = Path(tmp)
        work = root / "work"
        progress.note("synthesising reference sets")
        reference_sets = make_reference_sets(root / "sets", sizes)
        results["sets"] = describe_sets(reference_sets)
        # first: its untimed first invocation of each command warms every later one up
        results["fixed_cost_seconds"] = measure_fixed_costs(
            work, sizes.extra_targets, protocol, progress
        )
        for target in LOSSLESS_TARGETS:
            results["targets"][target] = {
                "plugin": resolve_plugin(TARGETS[target]).name,
                "sets": {
                    reference.name: measure_target_on_set(
                        target, reference, protocol, work, progress
                    )
                    for reference in reference_sets
                },
            }
        results["newer_targets"] = measure_newer_targets(reference_sets, protocol, progress)
        multi_file = [s for s in reference_sets if len(s.files) > 1]
        largest = max(multi_file, key=lambda s: s.total_bytes)
        cells = {t: results["targets"][t]["sets"][largest.name] for t in sizes.extra_targets}
        if any(cell["files"] != len(largest.files) for cell in cells.values()):
            raise RuntimeError(f"set {largest.name}: scaling needs every file compressible")
        j1_results = {target: cell["compress_j1"] for target, cell in cells.items()}
        results["scaling"] = measure_scaling(
            largest, j1_results, sizes.extra_targets, protocol, work, progress
        )
        results["end_to_end"] = (
            None
            if args.no_end_to_end
            else measure_end_to_end(sizes.end_to_end_objects, root / "stack", progress)
        )
    results["start_up_payoff"] = start_up_payoff(results)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds_total"] = round(progress.elapsed(), 1)
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized sets, one timed run each")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument(
        "--results",
        type=Path,
        nargs="?",
        const=DEFAULT_RESULTS,
        default=None,
        metavar="PATH",
        help="(re)write a Markdown results file (PATH omitted: benchmarks/RESULTS.md)",
    )
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the real stack")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs (default 3, quick 1)")
    parser.add_argument(
        "--budget", type=float, default=5.0, help="stop repeating after this many seconds"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Measure everything, then print a table (or JSON) and optionally write the file."""
    args = parse_args(argv)
    progress = Progress(quiet=False)
    results = run(args, progress)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
        print_tables(results, sys.stderr)
    else:
        print_tables(results, sys.stdout)
    if args.results:
        write_results(results, args.results)
        progress.note(f"wrote {args.results}")


if __name__ == "__main__":
    main()
