"""Producer speed: keys/s from a manifest and from a bucket listing into real Redis.

* manifest: a generated S3 Batch Operations CSV of N keys, read streaming, checked
  against the ledger (Lua check-and-queue) and published to the Celery queue;
  the process's peak RSS is shown after two sizes (4x apart) so its flatness shows;
* listing: M objects in a local SeaweedFS bucket, listed page by page and enqueued.

Run from the repository's root:
``python -m benchmarks.enqueue_speed [--keys 200000] [--objects 5000]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from dcmpress.stack.services import RedisServer, SeaweedS3, dcmpress_env
from producer.enqueue import Enqueuer, EnqueueReport, ManifestRun, enqueue_pages
from producer.manifests import open_local, read_manifest
from producer.sources import KeyFilter, listing_pages
from worker.runtime.app import create_app
from worker.runtime.contract import BatchSpec, S3Location
from worker.runtime.ledger import Ledger
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings


def write_manifest(path: Path, keys: int) -> None:
    """A Batch Operations CSV with realistic, URL-encoded keys."""
    with path.open("w") as handle:
        for index in range(keys):
            study, image = divmod(index, 500)
            handle.write(f"archive,studies/1.2.840.{study:06d}/series%201/IM{image:05d}.dcm\n")


def manifest_rate(root: Path, keys: int, settings: WorkerSettings) -> tuple[float, float]:
    """(keys/s, peak RSS MiB of this process so far) for a manifest of ``keys`` lines."""
    manifest = root / f"manifest-{keys}.csv"
    write_manifest(manifest, keys)
    ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds)
    app = create_app(settings)
    batch = f"bench-{keys}"

    def make(bucket: str) -> Enqueuer:
        spec = BatchSpec(batch=batch, source=S3Location(bucket=bucket),
                         dest=S3Location(bucket="out"), created=time.time())  # fmt: skip
        ledger.save_batch(spec)
        return Enqueuer(app, ledger, spec, f"bench-queue-{keys}")

    started = time.perf_counter()
    ManifestRun(make).run(read_manifest(str(manifest), open_local), skip=0)
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert ledger.redis.llen(f"bench-queue-{keys}") == keys
    return keys / elapsed, peak


def listing_rate(root: Path, objects: int, settings: WorkerSettings, s3: SeaweedS3) -> float:
    """keys/s for listing ``objects`` objects from SeaweedFS and enqueueing them."""
    client = s3.client()
    client.create_bucket(Bucket="bench-list")
    for index in range(objects):
        client.put_object(Bucket="bench-list", Key=f"k/{index:07d}.dcm", Body=b"DICM")
    ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds)
    spec = BatchSpec(batch="bench-list", source=S3Location(bucket="bench-list"),
                     dest=S3Location(bucket="out"), created=time.time())  # fmt: skip
    ledger.save_batch(spec)
    enqueuer = Enqueuer(create_app(settings), ledger, spec, "bench-list-queue")
    started = time.perf_counter()
    pages = listing_pages(Storage(settings), "bench-list", "", "", KeyFilter())
    enqueue_pages(enqueuer, pages, EnqueueReport("bench-list"), resuming=False)
    return objects / (time.perf_counter() - started)


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--objects", type=int, default=5_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dcmpress-enqueue-") as tmp:
        root = Path(tmp)
        with RedisServer(root / "redis") as redis_server, SeaweedS3(root / "s3") as s3:
            os.environ.update(dcmpress_env(redis_server, s3))
            settings = WorkerSettings()
            for keys in (args.keys // 4, args.keys):
                rate, peak = manifest_rate(root, keys, settings)
                print(f"manifest {keys:>9,} keys: {rate:>8,.0f} keys/s, peak {peak:5.1f} MiB RSS")
            rate = listing_rate(root, args.objects, settings, s3)
            print(f"listing  {args.objects:>9,} objects: {rate:>8,.0f} keys/s")


if __name__ == "__main__":
    main()
