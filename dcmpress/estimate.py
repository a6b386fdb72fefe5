"""``dcmpress estimate``: what a migration will save and cost, from a sample.

Three phases, reading as little as they can:

1. **Population** - every object is listed (S3) or walked (local paths): its size only.
   Objects fall in log-scale size classes (factor 4); each class keeps its count, its
   bytes and a uniform random reservoir of its objects (memory does not grow with the
   prefix).
2. **Headers** - a random sample of each class (``--headers`` in all, by bytes) is
   read up to its Pixel Data only: a ranged GET of 64 KiB, grown to at most 4 MiB for
   a long header. The header gives the object's kind - its Modality (compressed
   sources apart), or "not DICOM" / "unreadable" - and, with a policy, its rule. A
   stratum is (size class, kind, rule).
3. **Compression** - ``--sample`` objects from the header sample, allocated to strata
   by their projected bytes (at least 2 each where there are 2), are fetched whole and
   run through :func:`worker.codec.engine.process` as a worker does, verified, without
   uploading. Fetch and engine CPU are measured per object.

The projection is a stratified ratio estimator: per stratum, bytes saved (or written,
or CPU) per byte in of its compressed sample, times the stratum's bytes, which are the
size class's listed bytes times the stratum's share of the class's header sample. The
interval is a percentile bootstrap that resamples both phases within strata (the
Rao-Wu rescaled bootstrap, so a stratum sampled whole adds no uncertainty).

No typer, no rich here: :mod:`dcmpress.cli` prints, :mod:`dcmpress.estimate_html`
draws the page.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar

import numpy as np
from pydicom.dataset import Dataset

from worker.codec.parse import HeaderIncomplete
from worker.codec.parse import read_header as read_header_bytes
from worker.codec.syntaxes import describe
from worker.errors import DcmpressError, PermanentError, TransientError, one_line
from worker.policy import Policy
from worker.settings import CompressionOptions

if TYPE_CHECKING:
    from producer.sources import KeyFilter
    from worker.runtime.storage import Storage
    from worker.settings import WorkerSettings

S = TypeVar("S")
log = logging.getLogger(__name__)

SMALLEST_CLASS = 16 * 1024  # the first size class is everything below 16 KiB
CLASS_FACTOR = 4  # each class spans a factor 4 of sizes
HEAD_FIRST = 64 * 1024  # the first ranged read of a header
HEAD_MOST = 4 * 1024 * 1024  # a header not complete within this is "unreadable"
HEAD_THREADS = 8  # header reads wait on the network: in threads
HEADERS_PER_CLASS = 10  # header sample of a size class, at least (if it has them)
SAMPLES_PER_STRATUM = 2  # compressed sample of a stratum, at least (if it has them)
BOOTSTRAP = 1000
CONFIDENCE = 0.95
GB = 2**30  # S3 bills a GB-month of 2^30 bytes
# CPU per object a worker spends besides fetching and the engine: the destination HEAD,
# the PUT (or server-side copy), about seven Redis round trips and Celery's part.
# Measured 2026-12 on the 2-core VM: benchmarks/end_to_end.py (80 x 0.5 MB, jpeg-ls)
# gave the worker tree 27.0 ms per object against 16.1 for the engine alone and ~1.3
# for the GET (9.6 ms left); tests/integration/test_estimate.py's real runs 4.8-5.8 ms.
WORKER_OVERHEAD_MS = 7.0
LOCAL_OVERHEAD_MS = 1.0  # dcmpress compress: pool round trip and the record
# AWS S3 us-east-1 list prices, USD per GB-month (check against your own bill)
PRICES: dict[str, float] = {
    "STANDARD": 0.023,
    "INTELLIGENT_TIERING": 0.023,  # its frequent access tier
    "STANDARD_IA": 0.0125,
    "ONEZONE_IA": 0.01,
    "GLACIER_IR": 0.004,
    "GLACIER": 0.0036,
    "DEEP_ARCHIVE": 0.00099,
}
NOT_DICOM = "not DICOM"
UNREADABLE = "unreadable"
NOT_AN_INSTANCE = "not an instance"
_REFUSED_KINDS = {"skipped": NOT_AN_INSTANCE, "failed": UNREADABLE}
NOT_COMPRESSED = "copy/skip"
FAILED = "failed"


# -- the population ----------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One listed object: its key (or path) and size."""

    key: str
    size: int


def size_class(size: int) -> int:
    """The log-scale size class of ``size`` bytes: 0 below 16 KiB, then factor 4 each."""
    if size < SMALLEST_CLASS:
        return 0
    return 1 + int(math.log(size / SMALLEST_CLASS, CLASS_FACTOR) + 1e-9)


def size_class_label(index: int) -> str:
    """``"64K-256K"`` and the like (K = KiB, M = MiB, G = GiB)."""
    if index == 0:
        return f"<{_binary(SMALLEST_CLASS)}"
    low = SMALLEST_CLASS * CLASS_FACTOR ** (index - 1)
    return f"{_binary(low)}-{_binary(low * CLASS_FACTOR)}"


def _binary(value: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:g}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass
class SizeClass:
    """The objects of one size class: count, bytes, and a uniform random reservoir."""

    index: int
    objects: int = 0
    bytes: int = 0
    reservoir: list[Entry] = field(default_factory=list)


class Population:
    """Every listed object, kept as per-class counts, bytes and a reservoir of at most
    ``keep`` objects each (Algorithm R: each object equally likely to be in it)."""

    def __init__(self, keep: int, rng: random.Random) -> None:
        self.keep, self.rng = max(1, keep), rng
        self.classes: dict[int, SizeClass] = {}

    def add(self, entry: Entry) -> None:
        """Count ``entry`` in its class; maybe keep it in the reservoir."""
        group = self.classes.setdefault(size_class(entry.size), SizeClass(size_class(entry.size)))
        group.objects += 1
        group.bytes += entry.size
        if len(group.reservoir) < self.keep:
            group.reservoir.append(entry)
        else:
            slot = self.rng.randrange(group.objects)
            if slot < self.keep:
                group.reservoir[slot] = entry

    @property
    def objects(self) -> int:
        """Objects listed."""
        return sum(group.objects for group in self.classes.values())

    @property
    def bytes(self) -> int:
        """Bytes listed."""
        return sum(group.bytes for group in self.classes.values())


def allocate(
    weights: dict[S, float], available: dict[S, int], total: int, minimum: int
) -> dict[S, int]:
    """How many of ``total`` draws each stratum gets: ``minimum`` first (or what it
    has), the rest in proportion to ``weights`` (largest remainders), never more than
    ``available``. The counts add up to ``min(total, sum(available))``.

    When ``total`` cannot give every stratum its minimum, the heaviest strata get one
    each first, then a second, and so on.
    """
    total = min(total, sum(available.values()))
    order = sorted(available, key=lambda s: (-weights.get(s, 0.0), str(s)))
    given = dict.fromkeys(available, 0)
    left = total
    for _ in range(minimum):
        for stratum in order:
            if left and given[stratum] < available[stratum]:
                given[stratum] += 1
                left -= 1
    while left > 0:
        open_ = [s for s in order if given[s] < available[s]]
        weight = sum(max(weights.get(s, 0.0), 0.0) for s in open_)
        shares = {
            s: left * (max(weights.get(s, 0.0), 0.0) / weight if weight else 1 / len(open_))
            for s in open_
        }
        added = 0
        for stratum in open_:
            extra = min(int(shares[stratum]), available[stratum] - given[stratum])
            given[stratum] += extra
            added += extra
        left -= added
        # the remainder one by one, largest fraction first
        for stratum in sorted(open_, key=lambda s: (-(shares[s] % 1), str(s))):
            if left and given[stratum] < available[stratum]:
                given[stratum] += 1
                left -= 1
                added += 1
        if not added:
            break
    return given


# -- sources -----------------------------------------------------------------------------


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


T = TypeVar("T")


def retried(call: Callable[[], T], attempts: int = 4) -> T:
    """``call()``, again after a TransientError (a reset, a throttle), as a worker's
    task would be; the last error is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except TransientError:
            if attempt == attempts:
                raise
            time.sleep(random.uniform(0.0, 0.5 * 2**attempt))
    raise AssertionError("unreachable")


# -- phase 2: headers --------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """What one object's header says, as far as the estimate needs it."""

    key: str
    size: int
    kind: str  # the Modality (" compressed" for a compressed source), or NOT_DICOM...
    modality: str = ""
    rule: str = ""  # the policy rule it takes ("" without a policy)
    bytes_read: int = 0
    note: str = ""


def _modality(ds: Dataset) -> str:
    from worker.codec.engine import modality_of

    return modality_of(ds) or "no Modality"


def read_header(source: Source, entry: Entry, policy: Policy | None) -> Header:
    """Read ``entry``'s header with as few bytes as it takes (64 KiB, x4 up to 4 MiB).

    No object's content ends an estimate: what the engine would refuse is a kind of its
    own, and an unexpected error is an unreadable header with the error as its note.
    """
    try:
        return _read_header(source, entry, policy)
    except Exception as exc:  # a bug of ours or a library's: one header, not the run
        log.exception("cannot classify the header of %s", entry.key)
        note = f"internal error: {type(exc).__name__}: {exc}"
        return Header(entry.key, entry.size, UNREADABLE, note=one_line(note))


def _read_header(source: Source, entry: Entry, policy: Policy | None) -> Header:
    length = HEAD_FIRST
    while True:
        try:
            data = retried(partial(source.read_head, entry.key, min(length, max(entry.size, 1))))
        except (DcmpressError, OSError) as exc:
            return Header(entry.key, entry.size, UNREADABLE, note=f"cannot read: {exc}")
        whole = len(data) >= entry.size or len(data) < min(length, entry.size)
        try:
            ds = read_header_bytes(data, whole)
        except HeaderIncomplete:
            if length >= HEAD_MOST:
                note = f"no end of header in the first {_binary(HEAD_MOST)}"
                return Header(entry.key, entry.size, UNREADABLE, bytes_read=len(data), note=note)
            length *= 4
            continue
        except PermanentError as exc:
            kind = _REFUSED_KINDS.get(exc.state, UNREADABLE)
            kind = NOT_DICOM if exc.code == "not_dicom" else kind
            return Header(entry.key, entry.size, kind, bytes_read=len(data), note=exc.message)
        break
    modality = _modality(ds)
    # the engine's own reading of the syntax (never raises, whatever the UID)
    compressed = describe(ds.file_meta.get("TransferSyntaxUID", "")).encapsulated
    rule = ""
    if policy is not None:
        try:
            rule = policy.decide(ds, entry.key, entry.size).name
        except Exception:  # an attribute the header has in a form the rule cannot read
            rule = "?"
    kind = f"{modality} compressed" if compressed else modality
    return Header(entry.key, entry.size, kind, modality, rule, len(data))


def read_headers(
    source: Source,
    entries: list[Entry],
    policy: Policy | None,
    on_done: Callable[[Header], None] | None = None,
) -> list[Header]:
    """Headers of ``entries``, read in a few threads, in the order given."""
    with ThreadPoolExecutor(HEAD_THREADS) as pool:
        futures = [pool.submit(read_header, source, entry, policy) for entry in entries]
        headers = []
        for future in futures:
            headers.append(future.result())
            if on_done is not None:
                on_done(headers[-1])
    return headers


# -- phase 3: compression ----------------------------------------------------------------


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


# -- estimation --------------------------------------------------------------------------

StratumKey = tuple[int, str, str]  # size class, kind, rule
QUANTITIES = ("saved", "bytes_out", "written_in", "cpu")


@dataclass
class Stratum:
    """One stratum: its projected share of its size class, and its compressed sample."""

    key: StratumKey
    header_sizes: list[int] = field(default_factory=list)  # its objects in the class's
    # header sample
    bytes: float = 0.0  # projected
    objects: float = 0.0  # projected
    samples: list[Sample] = field(default_factory=list)
    donor: str = ""  # where its rates come from if it has no sample of its own


def _rates(samples: list[Sample]) -> dict[str, float]:
    """Per byte in: bytes saved, bytes written, bytes in of written objects, CPU;
    and per object: the share of objects written."""
    size = sum(s.size for s in samples) or 1
    return {
        "saved": sum(s.saved for s in samples) / size,
        "bytes_out": sum(s.bytes_out for s in samples) / size,
        "written_in": sum(s.size for s in samples if s.written) / size,
        "cpu": sum(s.cpu for s in samples) / size,
    }


def _values(samples: list[Sample]) -> np.ndarray:
    """Rows: size, then each of QUANTITIES, per sample."""
    return np.array(
        [[s.size, s.saved, s.bytes_out, s.size if s.written else 0, s.cpu] for s in samples],
        dtype=np.float64,
    ).reshape(len(samples), 1 + len(QUANTITIES))


def _rate_replicates(
    samples: list[Sample], fraction: float, rng: np.random.Generator, replicates: int
) -> np.ndarray:
    """Bootstrap replicates (replicates x QUANTITIES) of the per-byte rates.

    Rao-Wu rescaled bootstrap: n-1 draws with replacement, deviations scaled by
    sqrt(1 - sampling fraction); a single sample gives no spread.
    """
    values = _values(samples)
    point = values[:, 1:].sum(axis=0) / max(values[:, 0].sum(), 1.0)
    if len(samples) < 2:
        return np.tile(point, (replicates, 1))
    draws = rng.integers(0, len(samples), size=(replicates, len(samples) - 1))
    picked = values[draws]  # replicates x (n-1) x columns
    sizes = np.maximum(picked[:, :, 0].sum(axis=1), 1.0)
    rates = picked[:, :, 1:].sum(axis=1) / sizes[:, None]
    scale = math.sqrt(max(0.0, 1.0 - fraction))
    return np.asarray(point + scale * (rates - point))


def _share_replicates(
    kinds: list[int], sizes: list[int], strata: int, fraction: float,
    rng: np.random.Generator, replicates: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Replicates (replicates x strata) of the byte and object shares of each stratum
    in a size class's header sample (rescaled as in :func:`_rate_replicates`)."""
    labels = np.asarray(kinds)
    weights = np.asarray(sizes, dtype=np.float64)
    onehot = np.eye(strata)[labels]  # n x strata
    byte_point = (onehot * weights[:, None]).sum(axis=0) / max(weights.sum(), 1.0)
    count_point = onehot.mean(axis=0)
    if len(kinds) < 2:
        return np.tile(byte_point, (replicates, 1)), np.tile(count_point, (replicates, 1))
    draws = rng.integers(0, len(kinds), size=(replicates, len(kinds) - 1))
    picked = onehot[draws]  # replicates x (n-1) x strata
    picked_bytes = (picked * weights[draws][:, :, None]).sum(axis=1)
    byte_shares = picked_bytes / np.maximum(picked_bytes.sum(axis=1, keepdims=True), 1.0)
    count_shares = picked.mean(axis=1)
    scale = math.sqrt(max(0.0, 1.0 - fraction))
    return (
        byte_point + scale * (byte_shares - byte_point),
        count_point + scale * (count_shares - count_point),
    )


def build_strata(
    population: Population, headers: list[Header], samples: list[Sample]
) -> list[Stratum]:
    """Strata with their projected bytes and objects, and their samples."""
    strata: dict[StratumKey, Stratum] = {}
    header_totals: Counter[int] = Counter()
    header_counts: Counter[int] = Counter()
    for header in headers:
        key = (size_class(header.size), header.kind, header.rule)
        stratum = strata.setdefault(key, Stratum(key))
        stratum.header_sizes.append(header.size)
        header_totals[key[0]] += header.size
        header_counts[key[0]] += 1
    for stratum in strata.values():
        group = population.classes[stratum.key[0]]
        share = sum(stratum.header_sizes) / max(header_totals[stratum.key[0]], 1)
        stratum.bytes = group.bytes * share
        stratum.objects = group.objects * len(stratum.header_sizes) / header_counts[stratum.key[0]]
    where = {h.key: (size_class(h.size), h.kind, h.rule) for h in headers}
    for sample in samples:
        strata[where[sample.key]].samples.append(sample)
    return sorted(strata.values(), key=lambda s: s.key)


def _donors(strata: list[Stratum]) -> dict[StratumKey, list[Sample]]:
    """The samples each stratum's rates come from: its own; else those of the same
    kind and rule in other size classes; else every sample."""
    everything = [s for stratum in strata for s in stratum.samples]
    same: dict[tuple[str, str], list[Sample]] = {}
    for stratum in strata:
        same.setdefault(stratum.key[1:], []).extend(stratum.samples)
    chosen: dict[StratumKey, list[Sample]] = {}
    for stratum in strata:
        if stratum.samples:
            chosen[stratum.key] = stratum.samples
        elif same[stratum.key[1:]]:
            chosen[stratum.key] = same[stratum.key[1:]]
            stratum.donor = "same kind, other sizes"
        else:
            chosen[stratum.key] = everything
            stratum.donor = "all samples"
    return chosen


@dataclass
class Projection:
    """Point estimates and bootstrap intervals of the totals."""

    totals: dict[str, float]  # QUANTITIES plus "objects" and "overhead_cpu"
    low: dict[str, float]
    high: dict[str, float]


def project(
    population: Population,
    strata: list[Stratum],
    overhead_seconds: float,
    seed: int = 0,
    replicates: int = BOOTSTRAP,
    confidence: float = CONFIDENCE,
) -> Projection:
    """Project the totals over the whole population, with percentile intervals from
    the rescaled bootstrap of both phases."""
    rng = np.random.default_rng(seed)
    donors = _donors(strata)
    n_q = len(QUANTITIES)
    point = np.zeros(n_q)
    point_objects = 0.0
    boot = np.zeros((replicates, n_q))
    boot_objects = np.zeros(replicates)
    rate_boot: dict[int, np.ndarray] = {}  # id of a donor list -> its replicates
    by_class: dict[int, list[Stratum]] = {}
    for stratum in strata:
        by_class.setdefault(stratum.key[0], []).append(stratum)
    for index, members in by_class.items():
        group = population.classes[index]
        # the class's header sample: stratum number and size per object
        kinds = [number for number, s in enumerate(members) for _ in s.header_sizes]
        sizes = [size for s in members for size in s.header_sizes]
        header_objects = len(sizes)
        byte_share, count_share = _share_replicates(
            kinds, sizes, len(members), header_objects / max(group.objects, 1), rng, replicates
        )
        for number, stratum in enumerate(members):
            samples = donors[stratum.key]
            own = bool(stratum.samples)
            fraction = len(samples) / max(stratum.objects, 1.0) if own else 0.0
            if id(samples) not in rate_boot:
                rate_boot[id(samples)] = _rate_replicates(
                    samples, min(fraction, 1.0), rng, replicates
                )
            rates = np.array([_rates(samples)[q] for q in QUANTITIES])
            point += stratum.bytes * rates
            point_objects += stratum.objects
            boot += (group.bytes * byte_share[:, number])[:, None] * rate_boot[id(samples)]
            boot_objects += group.objects * count_share[:, number]
    point_cpu_total = point.copy()
    point_cpu_total[QUANTITIES.index("cpu")] += overhead_seconds * point_objects
    boot[:, QUANTITIES.index("cpu")] += overhead_seconds * boot_objects
    tail = (1.0 - confidence) / 2 * 100
    low = np.percentile(boot, tail, axis=0)
    high = np.percentile(boot, 100 - tail, axis=0)
    names = list(QUANTITIES)
    totals = dict(zip(names, point_cpu_total.tolist(), strict=True))
    totals["objects"] = point_objects
    totals["overhead_cpu"] = overhead_seconds * point_objects
    return Projection(
        totals,
        dict(zip(names, np.minimum(low, point_cpu_total).tolist(), strict=True)),
        dict(zip(names, np.maximum(high, point_cpu_total).tolist(), strict=True)),
    )


def _domains(
    strata: list[Stratum], overhead_seconds: float, label: Callable[[Stratum, Sample], str]
) -> list[dict[str, Any]]:
    """Projected totals per domain (a target, a modality): each stratum's bytes split
    by the byte shares of its samples in the domain, its objects by their count."""
    donors = _donors(strata)
    rows: dict[str, dict[str, Any]] = {}
    for stratum in strata:
        samples = donors[stratum.key]
        size = sum(s.size for s in samples) or 1
        for sample in samples:
            name = label(stratum, sample)
            row = rows.setdefault(name, {
                "label": name, "objects": 0.0, "bytes_in": 0.0, "bytes_out": 0.0,
                "written_in": 0.0, "saved": 0.0, "cpu_seconds": 0.0, "samples": 0,
            })  # fmt: skip
            weight = stratum.bytes / size
            objects = stratum.objects / len(samples)
            row["objects"] += objects
            row["bytes_in"] += sample.size * weight
            row["bytes_out"] += sample.bytes_out * weight
            row["written_in"] += (sample.size if sample.written else 0) * weight
            row["saved"] += sample.saved * weight
            row["cpu_seconds"] += sample.cpu * weight + overhead_seconds * objects
            row["samples"] += 1 if any(own is sample for own in stratum.samples) else 0
    out = []
    for row in rows.values():
        row["ratio"] = round(row["written_in"] / row["bytes_out"], 4) if row["bytes_out"] else None
        row["core_hours"] = row["cpu_seconds"] / 3600
        for name in ("objects", "bytes_in", "bytes_out", "written_in", "saved"):
            row[name] = round(row[name])
        out.append(row)
    return sorted(out, key=lambda row: (-row["saved"], -row["bytes_in"], row["label"]))


def price_per_gb_month(storage_class: str, price: float | None) -> tuple[float, str]:
    """The price to use and where it comes from: the one given, or the list price of
    ``storage_class`` (ValueError for a class not in :data:`PRICES`)."""
    if price is not None:
        if price < 0:
            raise ValueError("--price-per-gb-month must not be negative")
        return price, "given"
    name = storage_class.upper().replace("-", "_")
    if name not in PRICES:
        known = ", ".join(PRICES)
        raise ValueError(f"unknown storage class {storage_class!r}; known: {known} "
                         "(or give --price-per-gb-month)")  # fmt: skip
    return PRICES[name], "AWS S3 us-east-1 list price"


def money(saved: tuple[float, float, float], price: float) -> dict[str, float]:
    """Monthly and yearly saving for bytes saved (estimate, low, high) at ``price``."""
    monthly = [value / GB * price for value in saved]
    return {
        "monthly": round(monthly[0], 2), "monthly_low": round(monthly[1], 2),
        "monthly_high": round(monthly[2], 2), "yearly": round(12 * monthly[0], 2),
        "yearly_low": round(12 * monthly[1], 2), "yearly_high": round(12 * monthly[2], 2),
    }  # fmt: skip


INTERVAL_NOTE = (
    "The interval is a {confidence:.0%} percentile bootstrap: both sampling phases "
    "(which headers, which objects compressed) are resampled within their strata "
    "{replicates} times; it covers the sampling error only, not a change of the data or "
    "of the code between this estimate and the run."
)
CPU_NOTE = (
    "CPU: fetch (GET) and engine (parse, decode, encode, verify) as measured per sampled "
    "object, the upload estimated as the GET's CPU per byte written, plus {overhead:g} ms "
    "per object for the rest (a worker's destination HEAD, PUT or copy request, Redis and "
    "Celery; for local files the pool and the record); not the S3 server's, Redis's or "
    "the producer's CPU."
)
NOT_WRITTEN_NOTE = (
    "Objects whose outcome writes nothing (policy skip, failures) are not in the "
    "destination and not counted as saved; copied objects save nothing."
)


def build_report(
    source: str,
    options: CompressionOptions,
    policy_path: str | None,
    population: Population,
    headers: list[Header],
    samples: list[Sample],
    overhead_ms: float,
    price: float,
    price_source: str,
    storage_class: str,
    seed: int,
    filtered: dict[str, int] | None = None,
    replicates: int = BOOTSTRAP,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """The whole estimate, JSON-serialisable (``dcmpress estimate --json``)."""
    overhead = overhead_ms / 1000
    strata = build_strata(population, headers, samples)
    result = project(population, strata, overhead, seed, replicates, confidence)
    totals, low, high = result.totals, result.low, result.high
    written_in, bytes_out = totals["written_in"], totals["bytes_out"]
    saved = (totals["saved"], low["saved"], high["saved"])
    outcomes = Counter((s.outcome, s.code) for s in samples)
    failed = sorted((s for s in samples if s.outcome == "failed"), key=lambda s: s.key)
    return {
        "source": source,
        "target": options.target,
        "policy": policy_path,
        "population": {
            "objects": population.objects,
            "bytes": population.bytes,
            "filtered": dict(filtered or {}),
        },
        "sample": {
            "headers": len(headers),
            "header_bytes_read": sum(h.bytes_read for h in headers),
            "compressed": len(samples),
            "compressed_bytes": sum(s.size for s in samples),
            "seed": seed,
        },
        "saving": {
            "bytes": round(saved[0]),
            "low": round(saved[1]),
            "high": round(saved[2]),
            "confidence": confidence,
            "percent": round(100 * saved[0] / population.bytes, 2) if population.bytes else 0.0,
            "bytes_written": round(bytes_out),
            "bytes_written_low": round(low["bytes_out"]),
            "bytes_written_high": round(high["bytes_out"]),
            "written_in": round(written_in),
            "not_written": round(max(population.bytes - written_in, 0.0)),
            "ratio": round(written_in / bytes_out, 4) if bytes_out else None,
        },
        "cpu": {
            "core_hours": totals["cpu"] / 3600,
            "low": low["cpu"] / 3600,
            "high": high["cpu"] / 3600,
            "seconds": totals["cpu"],
            "overhead_ms_per_object": overhead_ms,
            "overhead_seconds": totals["overhead_cpu"],
            "sample_fetch_seconds": sum(s.fetch_cpu for s in samples),
            "sample_engine_seconds": sum(s.engine_cpu for s in samples),
        },
        "money": {
            "storage_class": storage_class,
            "price_per_gb_month": price,
            "price_source": price_source,
            "gb": "2^30 bytes",
            **money(saved, price),
        },
        "by_modality": _domains(strata, overhead, lambda stratum, _: stratum.key[1]),
        "by_target": _domains(strata, overhead, lambda _, sample: sample.label),
        "strata": [_stratum_row(stratum) for stratum in strata],
        "outcomes": [
            {"outcome": outcome, "code": code, "count": count}
            for (outcome, code), count in sorted(outcomes.items(), key=lambda i: (-i[1], i[0]))
        ],
        "failed_samples": [{"key": s.key, "code": s.code, "message": s.message} for s in failed],
        "notes": [
            INTERVAL_NOTE.format(confidence=confidence, replicates=replicates),
            CPU_NOTE.format(overhead=overhead_ms),
            NOT_WRITTEN_NOTE,
            "Prices are list prices: check them against your own bill.",
        ],
    }


def _stratum_row(stratum: Stratum) -> dict[str, Any]:
    rates = _rates(stratum.samples) if stratum.samples else None
    written = rates["bytes_out"] if rates else 0.0
    return {
        "size_class": size_class_label(stratum.key[0]),
        "kind": stratum.key[1],
        "rule": stratum.key[2] or None,
        "objects": round(stratum.objects),
        "bytes": round(stratum.bytes),
        "headers": len(stratum.header_sizes),
        "samples": len(stratum.samples),
        "ratio": round(rates["written_in"] / written, 4) if rates and written else None,
        "saved": round(stratum.bytes * rates["saved"]) if rates else None,
        "rates_from": stratum.donor or "own sample",
    }


# -- the run -----------------------------------------------------------------------------


@dataclass
class Plan:
    """What the run samples: the population, then headers, then compression."""

    sample: int = 200
    headers: int = 1000
    seed: int = 0
    processes: int = 1


Progress = Callable[[str, int, int], None]  # phase, done, total


def run_estimate(
    source: Source,
    options: CompressionOptions,
    policy: Policy | None,
    plan: Plan,
    progress: Progress | None = None,
) -> tuple[Population, list[Header], list[Sample]]:
    """List, read headers, compress the sample: everything :func:`build_report` needs."""
    rng = random.Random(plan.seed)
    headers_total = max(plan.headers, plan.sample)
    population = Population(headers_total, rng)
    for count, entry in enumerate(source.entries(), 1):
        population.add(entry)
        if progress is not None and count % 1000 == 0:
            progress("list", count, 0)
    if progress is not None:
        progress("list", population.objects, population.objects)
    classes = population.classes
    counts = allocate(
        {i: float(g.bytes) for i, g in classes.items()},
        {i: len(g.reservoir) for i, g in classes.items()},
        max(headers_total, len(classes)),
        HEADERS_PER_CLASS,
    )
    chosen = [
        entry
        for index in sorted(classes)
        for entry in rng.sample(classes[index].reservoir, counts[index])
    ]
    headers = read_headers(source, chosen, policy, _counter(progress, "headers", len(chosen)))
    strata = build_strata(population, headers, [])
    members: dict[StratumKey, list[Header]] = {}
    for header in headers:
        members.setdefault((size_class(header.size), header.kind, header.rule), []).append(header)
    sizes = allocate(
        {s.key: s.bytes for s in strata},
        {key: len(group) for key, group in members.items()},
        plan.sample,
        SAMPLES_PER_STRATUM,
    )
    picked = [
        Entry(h.key, h.size)
        for key in sorted(members)
        for h in rng.sample(members[key], sizes[key])
    ]
    done = _counter(progress, "compress", len(picked))
    samples = compress_sample(source, picked, options, policy, plan.processes, done)
    return population, headers, samples


def _counter(progress: Progress | None, phase: str, total: int) -> Callable[[Any], None]:
    """A callback that reports one more of ``total`` done in ``phase`` each call."""
    finished = 0

    def one_more(_: Any) -> None:
        nonlocal finished
        finished += 1
        if progress is not None:
            progress(phase, finished, total)

    return one_more


def sample_dicts(samples: list[Sample]) -> list[dict[str, Any]]:
    """The samples as JSON-serialisable dicts (with their derived fields)."""
    return [{**asdict(s), "saved": s.saved, "cpu": s.cpu} for s in samples]
