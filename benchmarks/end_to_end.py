"""End-to-end throughput through the real stack, divided by codec-only throughput.

In one run, on the same synthetic files and with the same number of processes:

* codec only: ``worker.codec.engine.process`` (parse, decode, encode, verify) over the files
  held in memory, in a process pool - the ceiling;
* end to end: files in a local SeaweedFS bucket, ``dcmpress enqueue`` into a local
  Redis, real ``celery worker`` processes fetching, compressing, verifying, uploading
  and recording - from the first enqueue to the last recorded outcome.

Beside wall time, the CPU seconds each party used (from ``/proc``): the engine's own
in the codec-only pool, and in the stack the Celery worker (main process and pool),
the S3 server, Redis and the enqueueing process. On a small machine the S3 server and
Redis take cores the workers would use; worker CPU per object against engine CPU per
object is what a cluster whose storage runs elsewhere pays.

Then, against the same servers and in this one process, where a worker's CPU beyond
the engine goes (:func:`breakdown`): the pipeline without Celery on the same objects
(claim, HEAD, GET, engine, PUT, records), and each S3 request and a Redis round trip
alone. Worker CPU less the pipeline's is Celery's, and what sharing the cores costs.

Last, unless ``--no-baseline``, the migration a user would script without dcmpress
(``benchmarks.baseline``: per object, ``aws s3 cp`` down, ``dcmcjpls`` or its peer, ``aws
s3 cp`` up) on the same objects against the same servers, and dcmpress's CPU per object
against it.

Run from the repository's root: ``python -m benchmarks.end_to_end [--objects 60]
[--size 512] [--processes N] [--target T] [--no-baseline]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.baseline import STYLES, comparison, describe, run_baseline
from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, RedisServer, SeaweedS3, dcmpress_env
from producer.feeder import Feeder, ListingCursor, Step
from producer.sources import KeyFilter
from worker.codec.engine import process
from worker.codec.options import CompressionOptions
from worker.procfs import tree_cpu_seconds
from worker.runtime.app import create_app
from worker.runtime.contract import BatchSpec, JobMessage, S3Location
from worker.runtime.ledger import Ledger
from worker.runtime.pipeline import Job, process_object
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

BASELINE_OBJECTS = 20  # objects the scripted migration is run on, at most


@dataclass
class Measured:
    """Wall seconds of a run, and CPU seconds by party."""

    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    # CPU milliseconds, measured in this process (breakdown): per object or per request
    parts: dict[str, float] = field(default_factory=dict)
    # wall seconds the workers spent in each pipeline stage, all objects together
    stages: dict[str, float] = field(default_factory=dict)
    # the scripted migration against dcmpress (benchmarks.baseline.comparison), if run
    baseline: list[dict[str, Any]] | None = None


def stage_shares(stages: dict[str, float]) -> dict[str, float]:
    """Each stage's share of the workers' stage time, to two places."""
    total = sum(stages.values()) or 1.0
    return {name: round(seconds / total, 2) for name, seconds in stages.items()}


def source_key(index: int) -> str:
    """The key of the ``index``-th file in the source bucket."""
    return f"img/{index:05d}.dcm"


def _codec_only(data: bytes, target: str) -> float:
    started = time.process_time()
    result = process(data, CompressionOptions(target=[target]))
    assert result.state == "done", result.message
    return time.process_time() - started


def codec_only(files: list[bytes], target: str, processes: int) -> Measured:
    """The engine alone over ``files`` in a pool of ``processes``: wall seconds, and the
    CPU seconds of the engine calls."""
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_codec_only, files[:processes], [target] * processes))  # warm up
        started = time.perf_counter()
        cpu = sum(pool.map(_codec_only, files, [target] * len(files)))
        return Measured(time.perf_counter() - started, {"engine": cpu})


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """``env`` in ``os.environ`` (WorkerSettings reads it) while the stack runs."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield env
    finally:
        os.environ.clear()
        os.environ.update(saved)


def end_to_end(
    files: list[bytes], target: str, processes: int, root: Path, baseline: bool = False
) -> Measured:
    """From the first enqueue to the last outcome, through the real stack: wall seconds
    and the CPU seconds of the worker, the S3 server, Redis and the enqueuer; with
    ``baseline``, then the scripted migration on the same objects and servers."""
    with (
        RedisServer(root / "redis") as redis_server,
        SeaweedS3(root / "s3") as s3,
        _environment(dcmpress_env(redis_server, s3)) as env,
    ):
        client = s3.client()
        client.create_bucket(Bucket="bench-src")
        client.create_bucket(Bucket="bench-dst")
        for index, data in enumerate(files):
            client.put_object(Bucket="bench-src", Key=source_key(index), Body=data)
        settings = WorkerSettings()
        ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds)
        with CeleryWorker(env, root / "celery", concurrency=processes) as worker:
            parties = {"worker": worker.pid, "s3 server": s3.pid, "redis": redis_server.pid}
            spec = BatchSpec(
                batch="bench", source=S3Location(bucket="bench-src"),
                dest=S3Location(bucket="bench-dst"),
                options=CompressionOptions(target=[target]), created=time.time(),
            )  # fmt: skip
            ledger.save_batch(spec)
            storage = Storage(settings)
            feeder = Feeder(
                create_app(settings), ledger, storage, spec, settings.queue,
                settings.feed_high_water, ListingCursor(storage, spec.source, "", KeyFilter()),
            )  # fmt: skip
            before = {name: tree_cpu_seconds(pid, reaped=True) for name, pid in parties.items()}
            main_before = tree_cpu_seconds(worker.pid, descendants=False)
            own = time.process_time()
            started = time.perf_counter()
            assert feeder.run(lambda step: False) is Step.FINISHED
            while True:
                counts = ledger.counts("bench")
                if counts.get("done", 0) + counts.get("failed", 0) >= len(files):
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            cpu = {
                name: tree_cpu_seconds(pid, reaped=True) - before[name]
                for name, pid in parties.items()
            }
            cpu["worker main process"] = (
                tree_cpu_seconds(worker.pid, descendants=False) - main_before
            )
            cpu["enqueue and wait"] = time.process_time() - own
            assert counts.get("done") == len(files), counts
            stages = {k[6:]: v for k, v in counts.items() if k.startswith("stage:")}
        parts = breakdown(files, spec.model_copy(update={"batch": "bench-in-process"}), ledger)
        script = None
        if baseline:  # after the worker stopped: RUSAGE_CHILDREN counts the script alone
            # (CPU per object is what it gives: a few objects tell, each costs a second)
            keys = [source_key(index) for index in range(min(len(files), BASELINE_OBJECTS))]
            script = []
            for style in STYLES:
                result = run_baseline(
                    s3, "bench-src", keys, "bench-dst", f"baseline-{style}/", target,
                    root / f"baseline-{style}", style,
                )  # fmt: skip
                script.append(comparison(result, cpu, len(files)))
        return Measured(elapsed, cpu, parts, stages, script)


def _cpu_ms(calls: Iterable[Callable[[], object]]) -> float:
    """Mean CPU milliseconds (this process) of running each call once."""
    started, count = time.process_time(), 0
    for call in calls:
        call()
        count += 1
    return (time.process_time() - started) / max(1, count) * 1000


def _fetch_and_close(storage: Storage, bucket: str, key: str) -> None:
    storage.fetch(bucket, key).close()


def breakdown(files: list[bytes], spec: BatchSpec, ledger: Ledger) -> dict[str, float]:
    """Where a worker's CPU beyond the engine goes, measured in this process against
    the running stack: CPU ms per object of the pipeline without Celery (the objects
    of the run just made, into a destination of their own) and of the engine alone on
    the same bytes; CPU ms of one HEAD, GET and PUT and of one Redis round trip."""
    settings = WorkerSettings()
    storage = Storage(settings, serves_objects=True)  # as a pool process has it
    dest = f"{spec.source.bucket}-in-process"
    storage.client.create_bucket(Bucket=dest)
    spec = spec.model_copy(update={"dest": S3Location(bucket=dest)})
    ledger.save_batch(spec)
    keys = [source_key(index) for index in range(len(files))]
    etags = [storage.head(spec.source.bucket, key).etag for key in keys]

    def job(key: str, etag: str, size: int) -> Job:
        message = JobMessage(batch=spec.batch, bucket=spec.source.bucket, key=key,
                             etag=etag, size=size)  # fmt: skip
        return Job(message=message, spec=spec, storage=storage, ledger=ledger,
                   worker="bench", claim_ttl=settings.claim_ttl,
                   max_attempts=settings.max_attempts)  # fmt: skip

    def run_pipeline(key: str, etag: str, size: int) -> None:
        summary = process_object(job(key, etag, size))
        assert summary["outcome"] == "done", summary

    process(files[0], spec.options)  # warm up, as the Celery run and codec_only did
    pipeline = _cpu_ms(
        partial(run_pipeline, key, etag, len(data))
        for key, etag, data in zip(keys, etags, files, strict=True)
    )
    engine = _cpu_ms(partial(process, data, spec.options) for data in files)
    output = storage.fetch(dest, keys[0])
    try:
        written = output.data if isinstance(output.data, bytes) else output.data.read()
    finally:
        output.close()
    # the requests alone: the HEAD of an output that exists, the GET of a source, the
    # PUT of a real output (a first pass's HEAD meets no output: a 404, not timed here)
    repeats = max(20, len(files))
    return {
        "pipeline": pipeline,
        "engine": engine,
        "head": _cpu_ms(
            partial(storage.output_metadata, dest, keys[index % len(keys)])
            for index in range(repeats)
        ),
        "get": _cpu_ms(
            partial(_fetch_and_close, storage, spec.source.bucket, keys[index % len(keys)])
            for index in range(repeats)
        ),
        "put": _cpu_ms(
            partial(storage.put, dest, f"scratch/{index:05d}.dcm", written, {"bench": "1"})
            for index in range(repeats)
        ),
        "redis": _cpu_ms(
            partial(ledger.get_record, spec.batch, keys[index % len(keys)])
            for index in range(repeats)
        ),
    }


def main() -> None:
    """Measure both and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=60)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--target", default="jpeg-ls")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the scripted migration (aws, dcmcjpls)"
    )
    args = parser.parse_args()
    files = [
        to_bytes(make_image(args.size, args.size, bits_stored=12, seed=index))
        for index in range(args.objects)
    ]
    megabytes = sum(len(f) for f in files) / 1e6
    print(f"{args.objects} objects, {megabytes:.1f} MB, target {args.target}, "
          f"{args.processes} processes")  # fmt: skip
    codec = codec_only(files, args.target, args.processes)
    with tempfile.TemporaryDirectory(prefix="dcmpress-bench-") as root:
        full = end_to_end(
            files, args.target, args.processes, Path(root), baseline=not args.no_baseline
        )
    print("  worker stage shares: " + " ".join(
        f"{name}={share:.0%}" for name, share in stage_shares(full.stages).items()))  # fmt: skip
    print("  worker stage ms per object (wall): " + " ".join(
        f"{name}={seconds / args.objects * 1000:.1f}"
        for name, seconds in full.stages.items()))  # fmt: skip
    print(f"{'':<12}{'objects/s':>10}{'MB/s':>8}")
    print(f"{'codec only':<12}{args.objects / codec.seconds:>10.1f}"
          f"{megabytes / codec.seconds:>8.1f}")  # fmt: skip
    print(f"{'end to end':<12}{args.objects / full.seconds:>10.1f}"
          f"{megabytes / full.seconds:>8.1f}")  # fmt: skip
    print(f"end-to-end / codec-only throughput: {codec.seconds / full.seconds:.2f}")
    engine = codec.cpu["engine"] / args.objects
    print(f"CPU ms per object: engine alone {engine * 1000:.1f}; in the stack " + ", ".join(
        f"{name} {seconds / args.objects * 1000:.1f}" for name, seconds in full.cpu.items()
    ))  # fmt: skip
    print(f"engine CPU / worker CPU per object: {engine / (full.cpu['worker'] / args.objects):.2f}")
    print(describe_parts(full.parts, full.cpu["worker"] / args.objects * 1000))
    for compared in full.baseline or []:
        print(describe(compared))


def describe_parts(parts: dict[str, float], worker_ms: float) -> str:
    """One line: where the worker's CPU per object went, from :func:`breakdown`."""
    return (
        f"in this process, CPU ms: pipeline without Celery {parts['pipeline']:.1f} per object "
        f"(engine {parts['engine']:.1f}); one HEAD {parts['head']:.2f}, GET {parts['get']:.2f}, "
        f"PUT {parts['put']:.2f}, Redis round trip {parts['redis']:.3f}; worker less pipeline "
        f"(Celery, and sharing the cores) {worker_ms - parts['pipeline']:.1f}"
    )


if __name__ == "__main__":
    main()
