"""Where an estimate's objects are: an S3 prefix or local files, listed, read in part,
fetched whole; and the retry of a read that failed for a passing reason."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeVar

from dcmpress.estimate.population import Entry
from worker.errors import TransientError
from worker.retry import Backoff

if TYPE_CHECKING:
    from producer.sources import KeyFilter
    from worker.runtime.storage import Storage
    from worker.settings import WorkerSettings

T = TypeVar("T")

# CPU per object a worker spends besides fetching and the engine: the destination HEAD,
# the PUT (or server-side copy), about seven Redis round trips and Celery's part.
# Measured 2026-12 on the 2-core VM: benchmarks/end_to_end.py (80 x 0.5 MB, jpeg-ls)
# gave the worker tree 27.0 ms per object against 16.1 for the engine alone and ~1.3
# for the GET (9.6 ms left); tests/integration/test_estimate.py's real runs 4.8-5.8 ms.
WORKER_OVERHEAD_MS = 7.0
LOCAL_OVERHEAD_MS = 1.0  # dcmpress compress: pool round trip and the record


@dataclass
class Body:
    """A fetched object: bytes or a seekable file, its metadata, and how to let go."""

    data: bytes | BinaryIO
    metadata: dict[str, str] = field(default_factory=dict)
    closer: Callable[[], None] | None = None

    def close(self) -> None:
        """Close the file (or temporary file) behind it."""
        if self.closer is not None:
            self.closer()


class Source(Protocol):
    """Where the objects are: listed, read in part, fetched whole."""

    name: str

    def entries(self) -> Iterator[Entry]:
        """Every object to estimate for."""
        ...

    def read_head(self, key: str, length: int) -> bytes:
        """The first ``length`` bytes of an object (fewer if it is shorter)."""
        ...

    def fetch(self, key: str) -> Body:
        """The whole object, as a worker would fetch it."""
        ...

    @property
    def overhead_ms(self) -> float:
        """Default CPU milliseconds per object outside fetch and engine."""
        ...

    def prepare(self, key: str) -> None:
        """Set up this process's client (reading a byte of ``key``), so that the first
        object measured is not charged for it (a worker does it once)."""
        ...


_CLIENTS: dict[str, Storage] = {}  # per process: settings (JSON) -> client


class S3Source:
    """Objects under ``s3://bucket/prefix``; listing filtered like ``enqueue``'s."""

    def __init__(
        self, bucket: str, prefix: str, settings: WorkerSettings, key_filter: KeyFilter
    ) -> None:
        self.bucket, self.prefix = bucket, prefix
        self.settings, self.key_filter = settings, key_filter
        self.name = f"s3://{bucket}/{prefix}"

    @property
    def storage(self) -> Storage:
        """This process's S3 client for these settings (the source is pickled anew
        for every task sent to a pool process; the client is made once there)."""
        from worker.runtime.storage import Storage

        token = self.settings.model_dump_json()
        if token not in _CLIENTS:
            _CLIENTS[token] = Storage(self.settings)
        return _CLIENTS[token]

    @property
    def overhead_ms(self) -> float:
        """A worker's per-object CPU besides the GET and the engine."""
        return WORKER_OVERHEAD_MS

    def entries(self) -> Iterator[Entry]:
        """The listing, page by page, through the key filter."""
        from producer.sources import listing_pages

        for refs, _ in listing_pages(self.storage, self.bucket, self.prefix, "", self.key_filter):
            for ref in refs:
                yield Entry(ref.key, int(ref.size or 0))

    def prepare(self, key: str) -> None:
        """Create the client and make one request (botocore loads its models then)."""
        self.read_head(key, 1)

    def read_head(self, key: str, length: int) -> bytes:
        """One ranged GET."""
        return self.storage.read_range(self.bucket, key, length)

    def fetch(self, key: str) -> Body:
        """Storage.fetch, as the worker does (a large object is spooled to a file)."""
        fetched = self.storage.fetch(self.bucket, key)
        return Body(fetched.data, fetched.metadata, fetched.close)


class LocalSource:
    """Files and directory trees on local disk, as ``dcmpress compress`` walks them."""

    def __init__(self, paths: Iterable[Path], key_filter: KeyFilter) -> None:
        self.paths = [Path(p).resolve() for p in paths]
        self.key_filter = key_filter
        self.name = ", ".join(str(p) for p in self.paths)

    @property
    def overhead_ms(self) -> float:
        """``dcmpress compress``'s per-file CPU besides reading and the engine."""
        return LOCAL_OVERHEAD_MS

    def entries(self) -> Iterator[Entry]:
        """Every file of every path, each tree in sorted order."""
        from dcmpress.local import files_under
        from worker.runtime.storage import Listed

        for root in self.paths:
            for path in files_under(root):
                size = path.stat().st_size
                if self.key_filter.accepts(Listed(str(path), "", size)):
                    yield Entry(str(path), size)

    def prepare(self, key: str) -> None:
        """Nothing to set up for files."""

    def read_head(self, key: str, length: int) -> bytes:
        """The file's first bytes."""
        with open(key, "rb") as file:
            return file.read(length)

    def fetch(self, key: str) -> Body:
        """The file, read whole, or open for a large one (as compress does)."""
        from dcmpress.local import engine_input

        file = open(key, "rb")  # noqa: SIM115 - closed by Body.close, or here
        try:
            data = engine_input(file)
        except BaseException:
            file.close()
            raise
        if isinstance(data, bytes):
            file.close()
            return Body(data)
        return Body(data, {}, file.close)


def retried(call: Callable[[], T], attempts: int = 4) -> T:
    """``call()``, again after a TransientError (a reset, a throttle), as a worker's
    task would be; the last error is raised."""
    policy = Backoff(attempts=attempts)
    attempt = 1
    while True:
        try:
            return call()
        except TransientError:
            if policy.last(attempt):
                raise
            time.sleep(policy.delay(attempt))
            attempt += 1
