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

    def _slow_process(data, options, **kwargs):
        time.sleep(_SLOW_SECONDS)  # a long object: longer than the visibility timeout
        return _real_process(data, options, **kwargs)

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

_PAUSE_SECONDS = float(os.environ.get("DCMPRESS_TEST_PAUSE_SECONDS", "0"))
if _PAUSE_SECONDS:
    import re
    import time

    from worker.codec import engine
    from worker.runtime.ledger import Ledger

    _current = {"key": ""}  # the object this pool process works on (set at fetch)

    def _pause(stage):
        # an object named stage-<stage>.dcm stops there on its first delivery only
        match = re.search(r"stage-([a-z]+)[.]dcm$", _current["key"])
        marker = _DIR / f"paused-{stage}"
        if match and match[1] == stage and not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(_PAUSE_SECONDS)  # the test kills the process meanwhile

    _real_fetch_for_pause = storage.Storage.fetch

    def _pausing_fetch(self, bucket, key, version_id=None):
        _current["key"] = key
        _pause("fetch")
        return _real_fetch_for_pause(self, bucket, key, version_id)

    storage.Storage.fetch = _pausing_fetch

    def _pausing(stage, real):
        def wrapper(*args, **kwargs):
            _pause(stage)
            return real(*args, **kwargs)

        return wrapper

    engine.encode = _pausing("encode", engine.encode)
    engine.verify = _pausing("verify", engine.verify)
    storage.Storage.put = _pausing("upload", storage.Storage.put)
    _real_finish = Ledger.finish  # the delivery's end: its outcome's record

    def _pausing_finish(self, batch, key, record, *args, **kwargs):
        if record.state in ("done", "skipped", "failed"):
            _pause("record")  # uploaded, not yet recorded
        return _real_finish(self, batch, key, record, *args, **kwargs)

    Ledger.finish = _pausing_finish
"""

STAGES = ("fetch", "encode", "verify", "upload", "record")


def faulty_env(
    workdir: Path,
    root: Path,
    fetch_failures: int = 0,
    retry_publish_failures: int = 0,
    slow_seconds: float = 0,
    pause_seconds: float = 0,
) -> dict[str, str]:
    """Environment for a worker whose fetches fail ``fetch_failures`` times per key,
    whose first ``retry_publish_failures`` retries cannot be published, whose objects
    each take ``slow_seconds`` longer, and where an object named ``stage-S.dcm`` (S one
    of :data:`STAGES`) stops for ``pause_seconds`` at the start of that stage on its
    first delivery (:func:`paused`)."""
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
        "DCMPRESS_TEST_PAUSE_SECONDS": str(pause_seconds),
    }


def paused(workdir: Path) -> set[str]:
    """The stages where an object has stopped so far."""
    return {path.name.removeprefix("paused-") for path in (workdir / "counts").glob("paused-*")}


def failures_seen(workdir: Path, key: str) -> int:
    """How many injected fetch failures ``key`` went through."""
    count_file = workdir / "counts" / ("fetch-" + key.replace("/", "_"))
    return int(count_file.read_text()) if count_file.exists() else 0
