"""Every performance number of dcmpress in one run, on one machine, beside its peers.

On reference sets synthesised in a temporary directory (no downloads, no patient data)
and, for each lossless target (``jpeg-ls``, ``rle``, ``j2k``), measures:

* bare: ``pydicom.pixels.compress`` on already-decoded arrays (``codec_engine.py``);
* engine: ``worker.codec.engine.process``, parse + decode + encode + serialise + verify;
* compress -j 1: the local ``dcmpress compress`` command as one subprocess over the
  set's directory, start-up included, with its peak RSS (``os.wait4`` on that child);
* peers: ``dcmcjpls`` / ``dcmcrle`` (DCMTK) and ``gdcmconv --jpegls/--rle/--j2k`` (GDCM),
  one subprocess per file on the same files, each with its peak RSS and the ratio
  dcmpress-compress / peer throughput (> 1.0: dcmpress is faster);

then ``dcmpress compress -j 2`` against ``-j 1`` on the largest multi-file set, the
fixed cost of one invocation of each command on a tiny file, from it how many files
of each set's kind a ``dcmpress compress`` run needs to beat a peer run once per file,
and (unless ``--no-end-to-end``) for each lossless target ``end_to_end.py``'s real
stack against the codec alone, with where a worker's CPU beyond the engine goes.

MB/s is megabytes (10^6 bytes) of input file per wall second. Each number is the
median of up to ``--repeats`` timed runs after an untimed warm-up; repeating stops
early once a measurement has used ``--budget`` seconds (the run count is reported).

Run: ``python benchmarks/run.py [--quick] [--json] [--results [PATH]] [--no-end-to-end]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import codec_engine  # sibling benchmark scripts: benchmarks/ is sys.path[0]
import end_to_end
from pydicom import dcmread, examples
from pydicom.uid import ComputedRadiographyImageStorage, UltrasoundImageStorage
from rich.console import Console
from rich.table import Table

from dcmpress.stack.samples import make_image, to_bytes
from worker.codec.engine import process
from worker.codec.targets import TARGETS, resolve_plugin
from worker.settings import CompressionOptions

LOSSLESS_TARGETS = ("jpeg-ls", "rle", "j2k")
# measured by the engine alone (no peer writes them): beside the targets above
NEWER_TARGETS = ("htj2k", "jpegxl", "auto")
DEFAULT_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MB = 1e6
MIB = 1024 * 1024


# --- reference sets ---------------------------------------------------------------------


@dataclass(frozen=True)
class SetSizes:
    """How much each part measures: the default run or ``--quick``."""

    ct_files: int
    volume_frames: int
    cr_side: int
    us_files: int
    # a migration-like mix (the issue's: CT 512x512 and CR 2560x2048): enough files that
    # one start-up of dcmpress weighs as little as it does in a long-running worker
    archive_ct: int
    archive_cr: int
    end_to_end_objects: int
    repeats: int
    # targets whose -j 2 scaling and fixed cost are measured (each costs whole
    # dcmpress start-ups, ~1.2 s apiece)
    extra_targets: tuple[str, ...]


DEFAULT_SIZES = SetSizes(
    ct_files=20,
    volume_frames=100,
    cr_side=3000,
    us_files=10,
    archive_ct=96,
    archive_cr=8,
    end_to_end_objects=60,
    repeats=3,
    extra_targets=LOSSLESS_TARGETS,
)
QUICK_SIZES = SetSizes(
    ct_files=3,
    volume_frames=10,
    cr_side=768,
    us_files=2,
    archive_ct=4,
    archive_cr=1,
    end_to_end_objects=8,
    repeats=1,
    extra_targets=LOSSLESS_TARGETS[:1],
)


@dataclass(frozen=True)
class ReferenceSet:
    """A directory of input files measured as one unit."""

    name: str
    description: str
    directory: Path
    files: tuple[Path, ...]
    mixed: bool = False  # some files may be beyond a target (checked file by file)

    @property
    def total_bytes(self) -> int:
        """Bytes of all input files."""
        return sum(path.stat().st_size for path in self.files)

    @property
    def largest_bytes(self) -> int:
        """Bytes of the largest input file (the largest object one process holds)."""
        return max(path.stat().st_size for path in self.files)


def ct_like_images(count: int) -> Iterator[bytes]:
    """CT-like 512x512 12-bit single frames, each with its own noise."""
    for seed in range(count):
        yield to_bytes(make_image(512, 512, bits_stored=12, seed=seed))


# Image Pixel (group 0028) and Pixel Data are the image's own; the rest of the header
# comes from pydicom's CT example
_IMAGE_GROUP = 0x0028


def with_real_header(count: int) -> Iterator[bytes]:
    """CT-like 512x512 12-bit slices carrying the 262-element header of pydicom's CT
    example (real files carry 100-300 elements; the other synthetic sets 18)."""
    header = dcmread(examples.get_path("ct"), stop_before_pixels=True)
    for seed in range(count):
        image = make_image(512, 512, bits_stored=12, seed=seed)
        for element in header:
            if element.tag not in image and element.tag.group != _IMAGE_GROUP:
                image.add(element)
        yield to_bytes(image)


def native_example_names() -> list[str]:
    """The ``pydicom.examples`` datasets whose pixel data is native (uncompressed)."""
    names = []
    for name in examples._DATASETS:  # pydicom lists its examples nowhere public
        ds = dcmread(examples.get_path(name), force=True, stop_before_pixels=False)
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if "PixelData" in ds and syntax is not None and not syntax.is_compressed:
            names.append(name)
    return names


def _write_set(
    root: Path, name: str, description: str, files: dict[str, bytes], *, mixed: bool = False
) -> ReferenceSet:
    directory = root / name
    directory.mkdir(parents=True)
    for file_name, data in files.items():
        (directory / file_name).write_bytes(data)
    paths = tuple(sorted(directory.iterdir()))
    return ReferenceSet(name, description, directory, paths, mixed)


def make_reference_sets(root: Path, sizes: SetSizes) -> list[ReferenceSet]:
    """Synthesise every reference set under ``root``."""
    side, frames = sizes.cr_side, sizes.volume_frames
    volume = make_image(512, 512, frames=frames, bits_stored=12)
    cr = make_image(side, side, bits_stored=12, sop_class=ComputedRadiographyImageStorage)
    us = {
        f"us{i:03d}.dcm": to_bytes(
            make_image(
                480, 640, bits_allocated=8, samples=3, seed=i, sop_class=UltrasoundImageStorage
            )
        )
        for i in range(sizes.us_files)
    }
    ct = {f"ct{i:03d}.dcm": data for i, data in enumerate(ct_like_images(sizes.ct_files))}
    headed = {f"ct{i:03d}.dcm": data for i, data in enumerate(with_real_header(sizes.ct_files))}
    archive = {f"ct{i:03d}.dcm": data for i, data in enumerate(ct_like_images(sizes.archive_ct))}
    for i in range(sizes.archive_cr):
        image = make_image(2560, 2048, bits_stored=12, seed=100 + i,
                           sop_class=ComputedRadiographyImageStorage)  # fmt: skip
        archive[f"cr{i:03d}.dcm"] = to_bytes(image)
    names = native_example_names()
    shipped = [examples.get_path(name) for name in names]  # the files as pydicom ships them
    return [
        _write_set(root, "ct", f"{sizes.ct_files} x CT-like 512x512 12-bit", ct),
        _write_set(
            root,
            "ct-header",
            f"{sizes.ct_files} x CT-like 512x512 12-bit with pydicom's CT example's header",
            headed,
        ),
        _write_set(
            root, "volume", f"1 x {frames}-frame 512x512 12-bit", {"v.dcm": to_bytes(volume)}
        ),
        _write_set(root, "cr", f"1 x CR-like {side}x{side} 12-bit", {"cr.dcm": to_bytes(cr)}),
        _write_set(root, "us", f"{sizes.us_files} x US-like 640x480 RGB 8-bit", us),
        _write_set(
            root,
            "archive",
            f"{sizes.archive_ct} x CT-like 512x512 + {sizes.archive_cr} x CR-like 2560x2048, "
            "12-bit",
            archive,
        ),
        _write_set(
            root,
            "examples",
            f"pydicom.examples with native pixel data: {', '.join(names)}",
            {path.name: path.read_bytes() for path in shipped},
            mixed=True,
        ),
    ]


# --- timing and child processes -------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """How each number is taken."""

    repeats: int
    budget: float  # stop repeating once a measurement has used this many seconds

    def describe(self) -> str:
        """One line for the table and the results file."""
        if self.repeats == 1:
            return "one timed run after an untimed warm-up"
        return (
            f"median of up to {self.repeats} timed runs after an untimed warm-up; "
            f"fewer once a measurement has used {self.budget:g} s"
        )


@dataclass(frozen=True)
class Timing:
    """Wall seconds of the timed runs of one measurement."""

    runs: tuple[float, ...]

    JSON_KEYS: ClassVar[tuple[str, ...]] = (
        "mb_per_s", "seconds", "runs", "seconds_min", "seconds_max",
    )  # fmt: skip

    @property
    def median(self) -> float:
        """The reported number."""
        return statistics.median(self.runs)

    def as_json(self, megabytes: float) -> dict[str, Any]:
        """MB/s and the spread of the runs."""
        return {
            "mb_per_s": round(megabytes / self.median, 3),
            "seconds": round(self.median, 4),
            "runs": len(self.runs),
            "seconds_min": round(min(self.runs), 4),
            "seconds_max": round(max(self.runs), 4),
        }


def measure(run_once: Callable[[], float], protocol: Protocol) -> Timing:
    """Time ``run_once`` (which returns its own seconds) per the protocol."""
    runs: list[float] = []
    while len(runs) < protocol.repeats and sum(runs) < protocol.budget:
        runs.append(run_once())
    return Timing(tuple(runs))


@dataclass(frozen=True)
class ChildRun:
    """One finished child process."""

    seconds: float  # wall seconds from fork to reaped
    peak_rss: int  # bytes: ru_maxrss from wait4 on this child alone
    returncode: int


@dataclass(frozen=True)
class ChildCommand:
    """A command line and the files its stdout and stderr go to."""

    argv: tuple[str, ...]  # argv[0] an absolute path
    stdout: Path
    stderr: Path


# A small launcher: the kernel folds the memory image a child was forked from into
# that child's ru_maxrss (exec records the old image's high-water mark), so children
# forked from this benchmark (hundreds of MiB of test data) would all report at least
# its size. Forked from this ~6 MiB interpreter instead, each child's wait4 ru_maxrss
# is max(launcher size, the child's own peak) - the launcher's size is the floor.
_LAUNCHER = r"""
import json, os, sys, time
results = []
for argv, stdout, stderr in json.load(sys.stdin):
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, path in ((1, stdout), (2, stderr)):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    results.append([seconds, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)])
json.dump(results, sys.stdout)
"""


def run_children(commands: Sequence[ChildCommand], env: dict[str, str]) -> list[ChildRun]:
    """Run ``commands`` one after the other from a small launcher; time and RSS of each.

    ``os.wait4`` on each child gives that child's usage alone (``RUSAGE_CHILDREN`` would
    be a maximum over every child ever reaped). On Linux its ru_maxrss is the largest
    RSS of the child or of a descendant it reaped: ``dcmpress compress -j 1``'s pool
    worker counts, the sum of the two processes does not.
    """
    jobs = [[list(c.argv), str(c.stdout), str(c.stderr)] for c in commands]
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _LAUNCHER],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return [ChildRun(*row) for row in json.loads(proc.stdout)]


def launcher_floor() -> int:
    """Bytes of ru_maxrss a child reports even if it uses less: the launcher's own size."""
    true = shutil.which("true") or "/bin/true"
    log = Path(os.devnull)
    return run_children([ChildCommand((true,), log, log)], child_env())[0].peak_rss


def child_env() -> dict[str, str]:
    """This environment without DCMPRESS_* settings, so every run uses the same options,
    and without PYTHONDONTWRITEBYTECODE: a child's modules are compiled once (by the
    warm-up) and then loaded, as an installed package's are, not compiled at every
    start (50 ms of an editable checkout's start-up)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DCMPRESS_") and k != "PYTHONDONTWRITEBYTECODE"
    }


def find_tool(program: str) -> str | None:
    """The peer executable on PATH, preferring one outside this virtualenv.

    python-gdcm installs a ``gdcmconv`` Python wrapper into the venv; the system's
    (Debian) binary is measured instead so Python start-up is not charged to GDCM.
    """
    venv = Path(sys.prefix).resolve()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which(program, path=entry)
        if found and not Path(found).resolve().is_relative_to(venv):
            return found
    return shutil.which(program)


def output_syntax(path: Path) -> str:
    """The transfer syntax a tool wrote, to show every tool wrote the same kind of file."""
    syntax = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    return f"{syntax.name} ({syntax})"


def fresh_directory(parent: Path, name: str) -> Path:
    """An empty directory ``parent/name`` (removed first if it exists)."""
    path = parent / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# --- dcmpress compress as a subprocess ----------------------------------------------------


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


# --- peers --------------------------------------------------------------------------------


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


# --- one target on one set ----------------------------------------------------------------


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


# --- scaling, fixed costs, end to end -----------------------------------------------------


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
    for target, set_name, cell in _measured_cells(results):
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


def measure_end_to_end(objects: int, work: Path, progress: Progress) -> dict[str, Any]:
    """``end_to_end.py``'s measurements for each lossless target, on CT-like 512x512
    slices and on fewer 2048x2048 images: stack / codec alone in wall time, CPU per
    object by party, and where the worker's CPU beyond the engine went."""
    processes = os.cpu_count() or 1
    runs = []
    for target in LOSSLESS_TARGETS:
        for side, count in ((512, objects), (2048, max(2, objects // 4))):
            progress.note(
                f"end to end: {count} objects {side}x{side}, {target}, {processes} processes"
            )
            runs.append(_end_to_end_run(target, side, count, processes, work / f"{target}-{side}"))
    return {"processes": processes, "runs": runs}


def _end_to_end_run(
    target: str, side: int, count: int, processes: int, work: Path
) -> dict[str, Any]:
    files = [to_bytes(make_image(side, side, bits_stored=12, seed=i)) for i in range(count)]
    megabytes = sum(len(data) for data in files) / MB
    codec = end_to_end.codec_only(files, target, processes)
    printed = io.StringIO()
    saved_environ = dict(os.environ)  # end_to_end points os.environ at its stack
    try:
        with contextlib.redirect_stdout(printed):  # keep --json output pure JSON
            full = end_to_end.end_to_end(files, target, processes, work)
    finally:
        os.environ.clear()
        os.environ.update(saved_environ)
    shares = dict(re.findall(r"(\w+)=(\d+)%", printed.getvalue()))
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
        "worker_stage_shares": {name: int(share) / 100 for name, share in shares.items()},
        # CPU ms in one process against the same stack (end_to_end.breakdown)
        "in_process_cpu_ms": {name: round(ms, 3) for name, ms in full.parts.items()},
    }


# --- the machine --------------------------------------------------------------------------


def _first_line(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"not runnable: {exc}"
    return next(
        (line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()), ""
    )


def _version_in(text: str) -> str:
    """``3.6.7`` from ``$dcmtk: dcmcjpls v3.6.7 2022-04-22 $`` (the whole text if none)."""
    found = re.search(r"\d+\.\d+(?:\.\d+)?", text)
    return found.group(0) if found else text


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe_machine() -> dict[str, Any]:
    """CPU, cores, RAM, load, Python, and the versions of every codec measured."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    memory = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
    tools = {}
    for program, flag in (
        ("dcmcjpls", "--version"),
        ("dcmcrle", "--version"),
        ("gdcmconv", "--version"),
    ):
        executable = find_tool(program)
        tools[program] = (
            {"path": executable, "version": _version_in(_first_line([executable, flag]))}
            if executable
            else None
        )
    return {
        "cpu": model.group(1).strip() if model else platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(int(memory.group(1)) / 1024 / 1024, 1) if memory else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": {
            name: _package_version(name)
            for name in (
                "pydicom",
                "numpy",
                "pyjpegls",
                "pylibjpeg",
                "pylibjpeg-openjpeg",
                "pylibjpeg-rle",
                "imagecodecs",
                "python-gdcm",
            )
        },
        "plugins": {
            target: {
                "encoder": resolve_plugin(TARGETS[target]).name,
                "verification_decoder": TARGETS[target].decoder() or "pydicom's choice",
            }
            for target in LOSSLESS_TARGETS
        },
        "tools": tools,
    }


# --- presentation -------------------------------------------------------------------------


class Progress:
    """Elapsed-time notes on stderr, so a long run shows where it is."""

    def __init__(self, quiet: bool) -> None:
        self.started = time.perf_counter()
        self.quiet = quiet

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.started

    def note(self, text: str) -> None:
        """One line on stderr."""
        if not self.quiet:
            print(f"[{self.elapsed():6.1f} s] {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TextTable:
    """A table as strings, rendered by rich for the terminal and as Markdown for a file."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""
    text_columns: int = 1  # the leading columns that are words, left-aligned; numbers follow

    def rich(self) -> Table:
        """For the terminal."""
        table = Table(title=self.title, caption=self.note or None, title_justify="left")
        for index, header in enumerate(self.headers):
            table.add_column(header, justify="left" if index < self.text_columns else "right")
        for row in self.rows:
            table.add_row(*row)
        return table

    def markdown(self) -> str:
        """For RESULTS.md."""
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append(
            "|"
            + "|".join("---" if i < self.text_columns else "---:" for i in range(len(self.headers)))
            + "|"
        )
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def _rate(numbers: dict[str, Any] | None) -> str:
    return f"{numbers['mb_per_s']:.1f}" if numbers else "-"


def throughput_tables(results: dict[str, Any]) -> list[TextTable]:
    """One table per target: MB/s of every tool on every set, and dcmpress / peer."""
    tables = []
    for target, per_target in results["targets"].items():
        peer_labels = [p.label for p in PEERS[target]]
        headers: tuple[str, ...] = ("set", "files", "MB", "bare", "engine", "compress -j1")
        for label in peer_labels:
            headers += (label, "dcmpress / peer")
        rows = []
        for set_name, cell in per_target["sets"].items():
            if not cell["files"]:
                rows.append((set_name, "0", *["-"] * (len(headers) - 2)))
                continue
            row: tuple[str, ...] = (
                set_name,
                str(cell["files"]),
                f"{cell['bytes'] / MB:.1f}",
                _rate(cell["bare"]),
                _rate(cell["engine"]),
                _rate(cell["compress_j1"]),
            )
            for label in peer_labels:
                peer = cell["peers"][label]
                if peer["available"]:
                    row += (_rate(peer), f"{peer['dcmpress_over_peer']:.2f}")
                else:
                    row += ("n/a", "-")
            rows.append(row)
        plugin = results["machine"]["plugins"][target]
        tables.append(
            TextTable(
                f"{target}: MB/s of input files (encoder {plugin['encoder']}, "
                f"verification {plugin['verification_decoder']})",
                headers,
                tuple(rows),
                "dcmpress / peer = compress -j1 MB/s / peer MB/s (> 1.00: dcmpress faster)",
            )
        )
    return tables


def _measured_cells(results: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for target, per_target in results["targets"].items():
        for set_name, cell in per_target["sets"].items():
            if cell["files"]:
                yield target, set_name, cell


def memory_table(results: dict[str, Any]) -> TextTable:
    """Output size and peak RSS of every command, per target and set."""
    rows = []
    for target, set_name, cell in _measured_cells(results):
        tools = {"dcmpress compress -j1": cell["compress_j1"]}
        tools.update({label: p for label, p in cell["peers"].items() if p["available"]})
        for label, numbers in tools.items():
            rows.append(
                (
                    target,
                    set_name,
                    label,
                    f"{cell['largest_file_bytes'] / MB:.2f}",
                    f"{numbers['size_ratio']:.2f}",
                    f"{numbers['peak_rss_mib']:.0f}",
                    f"{numbers['peak_rss_per_largest_input']:.1f}",
                )
            )
    return TextTable(
        "Output size and peak memory",
        (
            "target",
            "set",
            "command",
            "largest input MB",
            "size ratio",
            "peak RSS MiB",
            "RSS / input",
        ),
        tuple(rows),
        "peak RSS: ru_maxrss of each child from os.wait4 (dcmpress: the larger of the "
        "command and its pool worker, not their sum; peers: the largest of their per-file "
        f"runs), never below the launcher's own {results['rss_floor_mib']} MiB; "
        "RSS / input = peak RSS / largest input file of the set",
        text_columns=3,
    )


def stage_table(results: dict[str, Any]) -> TextTable:
    """Where the engine's time goes, per target and set."""
    names: list[str] = []
    for _, _, cell in _measured_cells(results):
        names += [name for name in cell["engine"]["stage_shares"] if name not in names]
    rows = []
    for target, set_name, cell in _measured_cells(results):
        shares = cell["engine"]["stage_shares"]
        rows.append(
            (
                target,
                set_name,
                *(f"{shares[name]:.0%}" if name in shares else "-" for name in names),
            )
        )
    return TextTable(
        "Engine time by stage (share of process() wall time)",
        ("target", "set", *names),
        tuple(rows),
        text_columns=2,
    )


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
                    _rate(s["j1"]),
                    _rate(s["j2"]),
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


def payoff_table(results: dict[str, Any]) -> TextTable:
    """:func:`start_up_payoff` as a table."""
    return TextTable(
        "Start-up paid off: files of each set's kind a dcmpress run needs to beat the peer "
        "run once per file",
        (
            "target",
            "set",
            "peer",
            "dcmpress ms per file after start-up",
            "peer ms per file",
            "files to pay off start-up",
        ),
        tuple(
            (
                row["target"],
                row["set"],
                row["peer"],
                f"{row['dcmpress_seconds_per_file'] * 1000:.1f}",
                f"{row['peer_seconds_per_file'] * 1000:.1f}",
                "never" if row["files_to_pay_off"] is None else str(row["files_to_pay_off"]),
            )
            for row in results["start_up_payoff"]
        ),
        "dcmpress: its run over the set less the fixed cost of one invocation (below), per "
        "file; peer: one invocation per file, its start-up included; files = start-up / "
        "(peer - dcmpress) per file, rounded up; never: dcmpress is slower per file even "
        "once started",
        text_columns=3,
    )


def newer_targets_table(results: dict[str, Any]) -> TextTable:
    """Engine MB/s and size ratio of every target on every set; auto's gain."""
    fixed = list(results["targets"]) + [t for t in results["newer_targets"] if t != "auto"]

    def cell(target: str, set_name: str) -> dict[str, Any] | None:
        per_set = (
            results["targets"][target]["sets"]
            if target in results["targets"]
            else results["newer_targets"][target]
        )
        found = per_set.get(set_name)
        return found if found and found.get("files") else None

    headers: tuple[str, ...] = ("set",)
    for target in [*fixed, "auto"]:
        headers += (f"{target} MB/s", "ratio")
    headers += ("auto size gain over " + " / ".join(fixed),)
    rows = []
    for set_name in results["sets"]:
        row: tuple[str, ...] = (set_name,)
        for target in [*fixed, "auto"]:
            found = cell(target, set_name)
            row += (
                (_rate(found["engine"]), f"{found['engine_size_ratio']:.2f}")
                if found
                else ("-", "-")
            )
        chosen = cell("auto", set_name)
        gains = []
        for target in fixed:
            found = cell(target, set_name)
            gains.append(
                f"{chosen['engine_size_ratio'] / found['engine_size_ratio']:.3f}"
                if chosen and found
                else "-"
            )
        rows.append((*row, " / ".join(gains)))
    return TextTable(
        "Every target through the engine (verification on): MB/s of input files and mean "
        "size ratio",
        headers,
        tuple(rows),
        "auto tries its default candidates (every installed lossless target but jpegxl) and "
        "keeps the smallest; its gain is its mean size ratio over the fixed target's (on "
        "the files each took); its MB/s is the time cost",
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
    was made from, for readers that want more than the tables show."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# dcmpress benchmark results",
        "",
        f"Written by `python benchmarks/run.py{' --quick' if results['quick'] else ''} "
        f"--results` on {when}; every number below comes from that one run.",
        "",
        *[f"- {line}" for line in machine_lines(results)],
        "",
        *[table.markdown() for table in all_tables(results)],
    ]
    path.write_text("\n".join(parts))
    path.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")


# --- main ---------------------------------------------------------------------------------


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
        progress.note("synthesising reference sets")
        reference_sets = make_reference_sets(root / "sets", sizes)
        for reference in reference_sets:
            results["sets"][reference.name] = {
                "description": reference.description,
                "files": len(reference.files),
                "bytes": reference.total_bytes,
                "largest_file_bytes": reference.largest_bytes,
            }
        results["fixed_cost_seconds"] = measure_fixed_costs(
            root / "work", sizes.extra_targets, protocol, progress
        )
        for target in LOSSLESS_TARGETS:
            results["targets"][target] = {
                "plugin": resolve_plugin(TARGETS[target]).name,
                "sets": {
                    reference.name: measure_target_on_set(
                        target, reference, protocol, root / "work", progress
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
            largest, j1_results, sizes.extra_targets, protocol, root / "work", progress
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
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
