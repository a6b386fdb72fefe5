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

Run: ``python benchmarks/end_to_end.py [--objects 60] [--size 512] [--processes 2]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dcmpress.stack.cpu import tree_cpu_seconds
from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, RedisServer, SeaweedS3, dcmpress_env
from producer.enqueue import Enqueuer, EnqueueReport, enqueue_pages
from producer.sources import KeyFilter, listing_pages
from worker.codec.engine import process
from worker.runtime.app import create_app
from worker.runtime.contract import BatchSpec, S3Location
from worker.runtime.ledger import Ledger
from worker.runtime.storage import Storage
from worker.settings import CompressionOptions, WorkerSettings


@dataclass
class Measured:
    """Wall seconds of a run, and CPU seconds by party."""

    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)


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


def codec_only_seconds(files: list[bytes], target: str, processes: int) -> float:
    """Wall seconds for the engine alone over ``files`` in a pool of ``processes``."""
    return codec_only(files, target, processes).seconds


def end_to_end_seconds(files: list[bytes], target: str, processes: int, root: Path) -> float:
    """Wall seconds from the first enqueue to the last outcome, through the real stack."""
    return end_to_end(files, target, processes, root).seconds


def end_to_end(files: list[bytes], target: str, processes: int, root: Path) -> Measured:
    """From the first enqueue to the last outcome, through the real stack: wall seconds
    and the CPU seconds of the worker, the S3 server, Redis and the enqueuer."""
    with RedisServer(root / "redis") as redis_server, SeaweedS3(root / "s3") as s3:
        env = dcmpress_env(redis_server, s3)
        os.environ.update(env)
        client = s3.client()
        client.create_bucket(Bucket="bench-src")
        client.create_bucket(Bucket="bench-dst")
        for index, data in enumerate(files):
            client.put_object(Bucket="bench-src", Key=f"img/{index:05d}.dcm", Body=data)
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
            enqueuer = Enqueuer(create_app(settings), ledger, spec, settings.queue)
            before = {name: tree_cpu_seconds(pid) for name, pid in parties.items()}
            main_before = tree_cpu_seconds(worker.pid, descendants=False)
            own = time.process_time()
            started = time.perf_counter()
            pages = listing_pages(Storage(settings), "bench-src", "", "", KeyFilter())
            enqueue_pages(enqueuer, pages, EnqueueReport("bench"), resuming=False)
            while True:
                counts = ledger.counts("bench")
                if counts.get("done", 0) + counts.get("failed", 0) >= len(files):
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            cpu = {name: tree_cpu_seconds(pid) - before[name] for name, pid in parties.items()}
            cpu["worker main process"] = (
                tree_cpu_seconds(worker.pid, descendants=False) - main_before
            )
            cpu["enqueue and wait"] = time.process_time() - own
            assert counts.get("done") == len(files), counts
            stages = {k[6:]: v for k, v in counts.items() if k.startswith("stage:")}
            total = sum(stages.values())
            print("  worker stage shares: " + " ".join(
                f"{name}={seconds / total:.0%}" for name, seconds in stages.items()))  # fmt: skip
            per_object = {name: seconds / len(files) * 1000 for name, seconds in stages.items()}
            print("  worker stage ms per object (wall): " + " ".join(
                f"{name}={ms:.1f}" for name, ms in per_object.items()))  # fmt: skip
            return Measured(elapsed, cpu)


def main() -> None:
    """Measure both and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=60)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--target", default="jpeg-ls")
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
        full = end_to_end(files, args.target, args.processes, Path(root))
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


if __name__ == "__main__":
    main()
