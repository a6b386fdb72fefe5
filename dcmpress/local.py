"""``dcmpress compress``: the engine over files on local disk, in N processes.

Each input file becomes exactly one record (done / skipped / failed). A native codec
crash kills only a pool process: the files that were in flight are retried one at a
time in a fresh pool, and the one that kills it again is recorded ``codec_crashed``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dcmpress.listing import Listing, Outputs, output_root
from worker.codec.engine import Result, process
from worker.codec.frames import FRAMES_ABOVE
from worker.codec.options import CompressionOptions
from worker.errors import ConfigurationError, copied_when_failed, one_line
from worker.policy import Policy


@dataclass(frozen=True)
class Job:
    """One input file and where its output goes."""

    path: Path
    output: Path


def files_under(root: Path) -> Iterator[Path]:
    """``root`` if it is a file, else every file of its tree in sorted path order, read
    one directory at a time: a tree of millions of files is never listed whole.

    Links to files are followed, links to directories not. A directory that cannot be
    listed raises ConfigurationError naming it: its files would otherwise be left out
    without a word.
    """
    if not root.is_dir():
        if root.is_file():
            yield root
        return
    try:
        with os.scandir(root) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigurationError(f"cannot list the directory {root}: {reason}") from exc
    for entry in entries:
        path = root / entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from files_under(path)
        elif entry.is_file():
            yield path


def engine_input(file: BinaryIO) -> bytes | BinaryIO:
    """What the engine takes from an open input file: its bytes, or for a large file
    the file itself, read as the engine needs it (frame by frame for a large
    multi-frame object: worker/codec/frames.py)."""
    return file if os.fstat(file.fileno()).st_size >= FRAMES_ABOVE else file.read()


def plan_jobs(inputs: Iterable[Path], out_dir: Path) -> Iterator[Job]:
    """Walk files and directory trees; outputs mirror paths relative to each input.

    ``a/b.dcm`` given as a file lands at ``OUT/b.dcm``; a directory ``scans`` holding
    ``x/y.dcm`` lands at ``OUT/x/y.dcm``. The jobs are made as the trees are walked;
    only for more than one input are the outputs kept, to find two inputs that would
    write the same one (the files of one tree cannot).
    """
    inputs = list(inputs)
    out_dir = out_dir.resolve()
    seen: dict[Path, Path] | None = {} if len(inputs) > 1 else None
    for given in inputs:
        if not given.exists():
            raise ConfigurationError(f"input {given} does not exist")
        root = given.resolve()
        tree = root.is_dir()
        if not tree and not root.is_file():
            raise ConfigurationError(f"input {given} is not a file or a directory")
        for path in files_under(root):
            if tree and path.is_relative_to(out_dir):
                continue  # never re-process our own outputs when OUT is inside an input
            output = out_dir / (path.relative_to(root) if tree else Path(path.name))
            if output == path:
                raise ConfigurationError(f"output {output} would overwrite its input")
            if seen is not None:
                if output in seen:
                    raise ConfigurationError(
                        f"{path} and {seen[output]} would both be written to {output}"
                    )
                seen[output] = path
            yield Job(path, output)


def count_jobs(inputs: Sequence[Path], out_dir: Path, listing: Listing | None = None) -> int:
    """The number of jobs :func:`plan_jobs` (or :func:`plan_listed`, for a ``listing``)
    makes, found by walking the inputs once before anything is written: every
    ConfigurationError it raises comes here, first."""
    if listing is not None:
        return sum(1 for _ in plan_listed(listing, out_dir, Outputs()))
    return sum(1 for _ in plan_jobs(inputs, out_dir))


def plan_listed(listing: Listing, out_dir: Path, outputs: Outputs | None = None) -> Iterator[Job]:
    """The jobs of the files and trees a list names (dcmpress/listing.py), as it is read.

    A listed file that does not exist (any more) is still a job: its record says it
    cannot be read, and the rest of a long list runs. With ``outputs``, an output that
    two entries would write is refused.
    """
    # the output directory as given and with its links resolved: a listed file in it
    # is refused (compared as strings: the list may name millions of files)
    inside = tuple({os.path.abspath(out_dir) + os.sep, str(out_dir.resolve()) + os.sep})
    out_dir = out_dir.resolve()
    for number, entry in listing.entries():
        where = listing.where(number)
        root = output_root(out_dir, entry, where)
        found: Iterator[tuple[Path, Path]]
        if os.path.isdir(entry):
            tree = Path(entry).resolve()
            found = (
                (path, root / path.relative_to(tree))
                for path in files_under(tree)
                if not path.is_relative_to(out_dir)  # our own outputs, when OUT is inside
            )
        else:
            if (os.path.abspath(entry) + os.sep).startswith(inside):
                raise ConfigurationError(f"{where}: {entry} lies in the output directory")
            found = iter([(Path(entry), root)])
        for path, output in found:
            if outputs is not None:
                outputs.claim(output, path, where)
            yield Job(path, output)


def skip_written(jobs: Iterable[Job], on_record: Callable[[dict[str, Any]], None]) -> Iterator[Job]:
    """``jobs`` but those whose output is there already and newer than the input (an
    interrupted run, run again with ``--resume``): each of those is recorded
    ``skipped``/``output_exists`` at once, without going to a pool process.

    Outputs are renamed into place only when complete, so one that exists is whole. A
    file that failed has the copy of itself as its output (``failed_output=copy``) and
    is not tried again, as its content would fail the same way; one that failed with
    nothing written (an I/O error, ``failed_output=none``) has none, and is tried again.
    """
    for job in jobs:
        try:
            source, output = os.stat(job.path), os.stat(job.output)
        except OSError:  # no output yet (or no input: its job records that)
            yield job
            continue
        if not stat.S_ISREG(output.st_mode) or output.st_mtime_ns < source.st_mtime_ns:
            yield job  # changed since it was written
            continue
        message = "the output is there already, newer than the input (--resume)"
        on_record(
            _unprocessed_record(
                job.path, "skipped", "output_exists", message, source.st_size,
                output=job.output, bytes_out=output.st_size,
            )
        )  # fmt: skip


def run_job(job: Job, options: CompressionOptions, policy: Policy | None = None) -> dict[str, Any]:
    """Compress one file and write its output; return the record (runs in a pool)."""
    started = time.perf_counter()
    try:
        source = _open_regular(job.path)
        if source is None:
            return io_error_record(
                job.path,
                "cannot read the input: not a regular file (a FIFO, socket, device or directory)",
            )
        with source:
            result = process(engine_input(source), options, policy=policy, key=str(job.path))
    except OSError as exc:
        return io_error_record(job.path, f"cannot read the input: {exc}")
    written: Path | None = None
    try:
        if result.output is not None:
            _write_atomically(job.output, result.output)
            written = job.output
        elif result.copy_source:
            _write_atomically(job.output, None, source=job.path)
            written = job.output
    except OSError as exc:
        return io_error_record(job.path, f"cannot write {job.output}: {exc}")
    finally:
        result.close()
    return record(job.path, written, result, time.perf_counter() - started)


def _open_regular(path: Path) -> BinaryIO | None:
    """``path`` open for reading if it is a regular file, else None. Opened without
    blocking first: a FIFO named in a list would otherwise wait for a writer for ever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def record(path: Path, output: Path | None, result: Result, seconds: float) -> dict[str, Any]:
    """The JSON-serialisable outcome record of one input file."""
    return {
        "path": str(path),
        "output": str(output) if output else None,
        **result.summary(),
        "seconds": round(seconds, 4),
    }


def crash_record(job: Job, message: str, options: CompressionOptions) -> dict[str, Any]:
    """Record for a file whose processing killed its worker process: copied unchanged,
    as ``failed_output`` says, like any failure about a file's content."""
    record_ = _failure_record(job.path, "codec_crashed", message)
    if options.failed_output != "copy" or not copied_when_failed("codec_crashed"):
        return record_
    try:
        _write_atomically(job.output, None, source=job.path)
    except OSError as exc:
        record_["message"] = one_line(f"{message}; not copied: cannot write {job.output}: {exc}")
        return record_
    return {
        **record_,
        "output": str(job.output),
        "message": one_line(f"{message}; copied unchanged"),
        "copied": True,
        "bytes_out": record_["bytes_in"],
        "ratio": 1.0 if record_["bytes_in"] else None,
    }


def io_error_record(path: Path, message: str) -> dict[str, Any]:
    """Record for a file that could not be read or whose output could not be written."""
    return _failure_record(path, "io_error", message)


def _failure_record(path: Path, code: str, message: str) -> dict[str, Any]:
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    return _unprocessed_record(path, "failed", code, message, size)


def _unprocessed_record(
    path: Path,
    outcome: str,
    code: str,
    message: str,
    bytes_in: int,
    output: Path | None = None,
    bytes_out: int = 0,
) -> dict[str, Any]:
    """The record of a file the engine did not process (no target, no timings)."""
    return {
        "path": str(path),
        "output": str(output) if output else None,
        "outcome": outcome,
        "code": code,
        "message": one_line(message),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "ratio": round(bytes_in / bytes_out, 4) if bytes_out else None,
        "copied": False,
        "seconds": 0.0,
    }


def _write_atomically(
    output: Path, data: bytes | BinaryIO | None, source: Path | None = None
) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
    try:
        with os.fdopen(handle, "wb") as temp:
            if isinstance(data, bytes):
                temp.write(data)
            elif data is not None:
                data.seek(0)
                shutil.copyfileobj(data, temp, 8 * 1024 * 1024)
            elif source is not None:
                with source.open("rb") as src:
                    shutil.copyfileobj(src, temp)
        # mkstemp makes the file 0600; an output is created as any file is (umask)
        os.chmod(temp_name, 0o666 & ~_umask())
        os.replace(temp_name, output)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run_all(
    jobs: Iterable[Job],
    options: CompressionOptions,
    processes: int,
    on_record: Callable[[dict[str, Any]], None],
    policy: Policy | None = None,
) -> None:
    """Run every job, calling ``on_record`` exactly once per job as results arrive.

    ``jobs`` is taken as the pool has room, never listed whole. If it raises
    ConfigurationError (a tree changed since it was checked), the jobs already taken
    still run and are recorded before the error is raised again.
    """
    errors: list[ConfigurationError] = []
    remaining: Iterator[Job] = _until_error(jobs, errors)
    while True:
        suspects, unstarted, broken = _run_pool(remaining, options, processes, on_record, policy)
        # Files in flight when a pool process died are retried alone, so the culprit
        # is known exactly and the others still get compressed.
        for job in suspects:
            lost, _, _ = _run_pool(iter([job]), options, 1, on_record, policy)
            if lost:
                message = "a codec crashed the process (e.g. SIGABRT)"
                on_record(crash_record(job, message, options))
        if not broken:
            if errors:
                raise errors[0]
            return
        remaining = itertools.chain(unstarted, remaining)


def _until_error(jobs: Iterable[Job], errors: list[ConfigurationError]) -> Iterator[Job]:
    """``jobs``, ending at the first ConfigurationError they raise, which goes into
    ``errors``."""
    try:
        yield from jobs
    except ConfigurationError as exc:
        errors.append(exc)


def _run_pool(
    jobs: Iterator[Job],
    options: CompressionOptions,
    processes: int,
    on_record: Callable[[dict[str, Any]], None],
    policy: Policy | None,
) -> tuple[list[Job], list[Job], bool]:
    """Run ``jobs`` until done or until the pool breaks.

    Returns the jobs that were in flight when it broke, the jobs taken from ``jobs``
    but not started, and whether it broke (the rest of ``jobs`` is then still to run).
    """
    in_flight: dict[Future[dict[str, Any]], Job] = {}
    unstarted: list[Job] = []
    window = max(1, processes) * 2  # bounded, so huge trees do not queue millions
    with ProcessPoolExecutor(max_workers=max(1, processes)) as pool:
        broken = False
        while not broken:
            for job in jobs:
                try:
                    in_flight[pool.submit(run_job, job, options, policy)] = job
                except BrokenProcessPool:
                    unstarted.append(job)
                    broken = True
                    break
                if len(in_flight) >= window:
                    break
            if broken:
                break
            if not in_flight:
                break
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    record_ = future.result()
                except BrokenProcessPool:
                    broken = True
                    continue
                del in_flight[future]
                on_record(record_)
    return list(in_flight.values()), unstarted, broken
