"""Feeder speed: keys/s from a manifest and from a bucket listing into real Redis.

* manifest: a generated S3 Batch Operations CSV of N keys, read streaming, checked
  against the ledger and pushed to the Celery queue in the same Lua call, by the
  feeder (``producer/feeder.py``) with a mark above N (no waiting for workers);
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
from producer.feeder import Feeder, ListingCursor, ManifestCursor, Step
from producer.manifests import open_local, read_manifest
from producer.sources import KeyFilter
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
    storage = Storage(settings)
    spec = BatchSpec(batch=f"bench-{keys}", source=S3Location(bucket="archive"),
                     dest=S3Location(bucket="out"), created=time.time())  # fmt: skip
    ledger.save_batch(spec)
    cursor = ManifestCursor(read_manifest(str(manifest), open_local), 0)
    feeder = Feeder(create_app(settings), ledger, storage, spec, f"bench-queue-{keys}",
                    keys + 1, cursor)  # fmt: skip
    started = time.perf_counter()
    assert feeder.run(lambda step: False) is Step.FINISHED
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
    storage = Storage(settings)
    started = time.perf_counter()
    cursor = ListingCursor(storage, spec.source, "", KeyFilter())
    feeder = Feeder(create_app(settings), ledger, storage, spec, "bench-list-queue",
                    objects + 1, cursor)  # fmt: skip
    assert feeder.run(lambda step: False) is Step.FINISHED
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
