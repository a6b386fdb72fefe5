"""Failure injection into real worker processes, through a ``sitecustomize`` module.

A worker started with :func:`faulty_env` imports the generated module before anything
else; it wraps one Storage method so that its first N calls per object key raise the
chosen error. The counts live in files, so every pool process (and every redelivery)
shares them. Everything else the worker does is real.
"""

from __future__ import annotations

from pathlib import Path

_SITECUSTOMIZE = """
import os
from pathlib import Path

from worker.errors import TransientError
from worker.runtime import storage

_DIR = Path(os.environ["DCMPRESS_TEST_FAULTS"])
_FAILURES = int(os.environ.get("DCMPRESS_TEST_FETCH_FAILURES", "0"))
_real_fetch = storage.Storage.fetch


def _fetch(self, bucket, key, version_id=None):
    count_file = _DIR / ("fetch-" + key.replace("/", "_"))
    count = int(count_file.read_text()) if count_file.exists() else 0
    if count < _FAILURES:
        count_file.write_text(str(count + 1))
        raise TransientError(f"injected fetch failure {count + 1} of {_FAILURES}")
    return _real_fetch(self, bucket, key, version_id)


storage.Storage.fetch = _fetch

_SLOW_SECONDS = float(os.environ.get("DCMPRESS_TEST_SLOW_SECONDS", "0"))
if _SLOW_SECONDS:
    import time

    from worker.runtime import pipeline

    _real_process = pipeline.process

    def _slow_process(data, options):
        time.sleep(_SLOW_SECONDS)  # a long object: longer than the visibility timeout
        return _real_process(data, options)

    pipeline.process = _slow_process

_PUBLISH_FAILURES = int(os.environ.get("DCMPRESS_TEST_RETRY_PUBLISH_FAILURES", "0"))
if _PUBLISH_FAILURES:
    from celery.canvas import Signature
    from kombu.exceptions import OperationalError

    _real_apply_async = Signature.apply_async

    def _apply_async(self, *args, **kwargs):
        # in a worker, only Task.retry publishes: the broker "is away" for it
        count_file = _DIR / "retry-publish"
        count = int(count_file.read_text()) if count_file.exists() else 0
        if count < _PUBLISH_FAILURES:
            count_file.write_text(str(count + 1))
            raise OperationalError("injected: Error 111 connecting to the broker")
        return _real_apply_async(self, *args, **kwargs)

    Signature.apply_async = _apply_async
"""


def faulty_env(
    workdir: Path,
    root: Path,
    fetch_failures: int = 0,
    retry_publish_failures: int = 0,
    slow_seconds: float = 0,
) -> dict[str, str]:
    """Environment for a worker whose fetches fail ``fetch_failures`` times per key,
    whose first ``retry_publish_failures`` retries cannot be published, and whose
    objects each take ``slow_seconds`` longer."""
    site = workdir / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    counts = workdir / "counts"
    counts.mkdir(exist_ok=True)
    return {
        "PYTHONPATH": f"{site}:{root}",
        "DCMPRESS_TEST_FAULTS": str(counts),
        "DCMPRESS_TEST_FETCH_FAILURES": str(fetch_failures),
        "DCMPRESS_TEST_RETRY_PUBLISH_FAILURES": str(retry_publish_failures),
        "DCMPRESS_TEST_SLOW_SECONDS": str(slow_seconds),
    }


def failures_seen(workdir: Path, key: str) -> int:
    """How many injected fetch failures ``key`` went through."""
    count_file = workdir / "counts" / ("fetch-" + key.replace("/", "_"))
    return int(count_file.read_text()) if count_file.exists() else 0
