"""End-to-end throughput through the real stack, divided by codec-only throughput.

In one run, on the same synthetic files and with the same number of processes:

* codec only: ``worker.codec.engine.process`` (parse, decode, encode, verify) over the files
  held in memory, in a process pool - the ceiling;
* end to end: files in a local SeaweedFS bucket, ``dcmpress enqueue`` into a local
  Redis, real ``celery worker`` processes fetching, compressing, verifying, uploading
  and recording - from the first enqueue to the last recorded outcome.

Run: ``python benchmarks/end_to_end.py [--objects 60] [--size 512] [--processes 2]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

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


def _codec_only(data: bytes, target: str) -> int:
    result = process(data, CompressionOptions(target=[target]))
    assert result.state == "done", result.message
    return result.bytes_out


def codec_only_seconds(files: list[bytes], target: str, processes: int) -> float:
    """Wall seconds for the engine alone over ``files`` in a pool of ``processes``."""
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_codec_only, files[:processes], [target] * processes))  # warm up
        started = time.perf_counter()
        list(pool.map(_codec_only, files, [target] * len(files)))
        return time.perf_counter() - started


def end_to_end_seconds(files: list[bytes], target: str, processes: int, root: Path) -> float:
    """Wall seconds from the first enqueue to the last outcome, through the real stack."""
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
        with CeleryWorker(env, root / "celery", concurrency=processes):
            spec = BatchSpec(
                batch="bench", source=S3Location(bucket="bench-src"),
                dest=S3Location(bucket="bench-dst"),
                options=CompressionOptions(target=[target]), created=time.time(),
            )  # fmt: skip
            ledger.save_batch(spec)
            enqueuer = Enqueuer(create_app(settings), ledger, spec, settings.queue)
            started = time.perf_counter()
            pages = listing_pages(Storage(settings), "bench-src", "", "", KeyFilter())
            enqueue_pages(enqueuer, pages, EnqueueReport("bench"), resuming=False)
            while True:
                counts = ledger.counts("bench")
                if counts.get("done", 0) + counts.get("failed", 0) >= len(files):
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            assert counts.get("done") == len(files), counts
            stages = {k[6:]: v for k, v in counts.items() if k.startswith("stage:")}
            total = sum(stages.values())
            print("  worker stage shares: " + " ".join(
                f"{name}={seconds / total:.0%}" for name, seconds in stages.items()))  # fmt: skip
            return elapsed


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
    codec = codec_only_seconds(files, args.target, args.processes)
    with tempfile.TemporaryDirectory(prefix="dcmpress-bench-") as root:
        full = end_to_end_seconds(files, args.target, args.processes, Path(root))
    print(f"{'':<12}{'objects/s':>10}{'MB/s':>8}")
    print(f"{'codec only':<12}{args.objects / codec:>10.1f}{megabytes / codec:>8.1f}")
    print(f"{'end to end':<12}{args.objects / full:>10.1f}{megabytes / full:>8.1f}")
    print(f"end-to-end / codec-only throughput: {codec / full:.2f}")


if __name__ == "__main__":
    main()
