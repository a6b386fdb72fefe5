"""Phase 3 of an estimate: objects of the header sample compressed as a worker would,
verified, without uploading; fetch and engine CPU measured per object."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from dcmpress.estimate.population import Entry
from dcmpress.estimate.sources import Source, retried
from worker.codec.options import CompressionOptions
from worker.errors import DcmpressError, PermanentError
from worker.policy import Policy

NOT_COMPRESSED = "copy/skip"
FAILED = "failed"


@dataclass(frozen=True)
class Sample:
    """One object compressed without uploading: what a worker would write, and the
    CPU it took."""

    key: str
    size: int
    outcome: str
    code: str
    message: str = ""
    bytes_out: int = 0  # what would be written: the result, the copied source, or 0
    compressed: bool = False  # the output is the engine's (not a copy)
    target: str = ""
    rule: str = ""
    modality: str = ""
    fetch_cpu: float = 0.0
    engine_cpu: float = 0.0

    @property
    def written(self) -> bool:
        """Something would be written (a compressed result or a copy)."""
        return self.bytes_out > 0

    @property
    def saved(self) -> int:
        """Bytes the destination holds less than the source for this object."""
        return self.size - self.bytes_out if self.compressed else 0

    @property
    def upload_cpu(self) -> float:
        """The PUT of the result, estimated as the GET's CPU per byte (a copy is
        server-side: in the per-object overhead)."""
        return self.fetch_cpu * self.bytes_out / self.size if self.compressed and self.size else 0.0

    @property
    def cpu(self) -> float:
        """Fetch, engine and upload CPU seconds (not the per-object overhead)."""
        return self.fetch_cpu + self.engine_cpu + self.upload_cpu

    @property
    def label(self) -> str:
        """The target it ended with, ``copy/skip``, or ``failed``."""
        if self.outcome == "failed":
            return FAILED
        return self.target if self.compressed and self.target else NOT_COMPRESSED


def measure(
    source: Source, entry: Entry, options: CompressionOptions, policy: Policy | None
) -> Sample:
    """Fetch ``entry`` and run the engine on it as a worker would; nothing is written."""
    from worker.codec.engine import process, size_of
    from worker.runtime.contract import META_MARKER, OWN_OUTPUT_MESSAGE

    started = time.process_time()
    try:
        body = retried(lambda: source.fetch(entry.key))
    except PermanentError as exc:
        return Sample(entry.key, entry.size, "failed", exc.code, exc.message)
    except (DcmpressError, OSError) as exc:
        return Sample(entry.key, entry.size, "failed", "fetch_error", str(exc))
    fetch_cpu = time.process_time() - started
    try:
        size = size_of(body.data)
        if body.metadata.get(META_MARKER):  # the pipeline's own-output check
            message = OWN_OUTPUT_MESSAGE
            return Sample(entry.key, size, "skipped", "own_output", message, fetch_cpu=fetch_cpu)
        started = time.process_time()
        try:
            result = process(body.data, options, policy=policy, key=entry.key)
        except DcmpressError as exc:  # transient or configuration: the worker retries
            return Sample(entry.key, size, "failed", "engine_error", str(exc), fetch_cpu=fetch_cpu)
        engine_cpu = time.process_time() - started
        try:
            return Sample(
                entry.key, size, result.state, result.code, result.message, result.bytes_out,
                result.output is not None, result.target or "", result.rule or "",
                result.modality, fetch_cpu, engine_cpu,
            )  # fmt: skip
        finally:
            result.close()
    finally:
        body.close()


def warm_up(
    source: Source, first_key: str, options: CompressionOptions, policy: Policy | None
) -> None:
    """Set up the source's client and load every codec the run may use, so the first
    object is not charged for them (a worker pays that once per process, not per
    object)."""
    with contextlib.suppress(DcmpressError, OSError):  # measure() will say what is wrong
        source.prepare(first_key)
    from dcmpress.stack.samples import make_image, to_bytes
    from worker.codec.engine import process

    image = to_bytes(make_image(32, 32, bits_stored=12))
    variants = [options]
    if policy is not None:
        variants += [rule.compression(options) for rule in policy.rule if rule.action == "compress"]
    for variant in variants:
        process(image, variant).close()


def compress_sample(
    source: Source,
    entries: list[Entry],
    options: CompressionOptions,
    policy: Policy | None,
    processes: int,
    on_done: Callable[[Sample], None] | None = None,
) -> list[Sample]:
    """Measure every entry in a process pool (CPU is counted inside each process).

    A native codec crash breaks the pool: the objects in flight are recorded
    ``codec_crashed`` (not retried one by one, as ``compress`` does) and the rest go on
    in a new pool.
    """
    samples: list[Sample] = []
    todo = list(entries)
    while todo:
        with ProcessPoolExecutor(
            max(1, processes),
            initializer=warm_up,
            initargs=(source, todo[0].key, options, policy),
        ) as pool:
            futures: dict[Future[Sample], Entry] = {
                pool.submit(measure, source, entry, options, policy): entry for entry in todo
            }
            todo = []
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when="FIRST_COMPLETED")
                for future in done:
                    entry = futures[future]
                    try:
                        sample = future.result()
                    except BrokenProcessPool:
                        sample = Sample(entry.key, entry.size, "failed", "codec_crashed",
                                        "the process died (a native codec crash?)")  # fmt: skip
                    samples.append(sample)
                    if on_done is not None:
                        on_done(sample)
    return samples
