"""Deflated sources in bounded memory: the data set inflated as a stream, into a file.

Deflated Explicit VR Little Endian (PS3.5 A.5) deflates the whole data set after the
file meta, Pixel Data included, and pydicom inflates it whole in memory: an object of
256 KiB to 0.5 MB whose Pixel Data inflates to 256 MiB peaked at 0.85 to 1.6 GB. Here
it is inflated a chunk at a time into a temporary file that is a native Part 10 file
of its own (the file meta re-written naming Explicit VR Little Endian, then the
inflated data set), and the engine reads that file as it reads any native one: a large
multi-frame object frame group by frame group (:mod:`worker.codec.frames`), in bounded
memory (100 MiB peak for those 256 MiB, as for the native object).

The inflated bytes are counted as they come: past ``max_inflated_mb`` the inflation
stops and the object is refused (``inflated_too_large``), so a deflate bomb fills
neither memory nor disk.
"""

from __future__ import annotations

import copy
import functools
import io
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from worker.codec.frames import FRAMES_ABOVE
from worker.codec.options import CompressionOptions
from worker.codec.parse import looks_like_raw_dataset
from worker.cores import CGROUP
from worker.errors import PermanentError, raise_outside_causes
from worker.settings import WorkerSettings
from worker.timing import StageTimer

MIB = 1024 * 1024
# Deflated bytes read at a time, and the most inflated bytes one call gives (deflate
# expands up to 1032 times: one read could otherwise inflate to a gigabyte at once)
INPUT_BYTES = MIB
OUTPUT_BYTES = MIB
# An inflated data set below this (and below the engine's frames_above) stays in memory
# and is read as bytes, as a small object is; a larger one goes to a temporary file
MEMORY_BYTES = 4 * MIB
# The whole-object path holds about 6 times an object's size at its peak (the source,
# the decoded array, the encoded result, the written file, the decode of the check):
# 870 MB for a 128 MiB single frame. The default limit is the worker process's share
# of memory divided by this, so an object at the limit fits in its share whichever
# path it takes.
WHOLE_OBJECT_FACTOR = 8
# The default limit where the memory is not known
UNKNOWN_MEMORY_LIMIT_MB = 1024
_SETTING = "max_inflated_mb (DCMPRESS_MAX_INFLATED_MB, --max-inflated-mb)"
# Writers (pydicom, DCMTK) follow a deflated stream of odd length with one null byte,
# for an even file length
_PADDING = b"\0"
# The Transfer Syntax UID is the fourth element of the file meta, within its first
# 300 bytes unless the values before it are absurdly long (read as pydicom reads them)
_META_BYTES = 4096
_DEFLATED_UID = DeflatedExplicitVRLittleEndian.encode()
# What some writers (DCTOOL) put after the stream: CRC-32 and size of the inflated data
_GZIP_TRAILER = struct.Struct("<LL")
# Deflated bytes enough to tell a deflate stream from a data set that is not one
_PROBE_BYTES = 64


@contextmanager
def native_source(
    source: bytes | BinaryIO,
    options: CompressionOptions,
    frames_above: int = FRAMES_ABOVE,
    timer: StageTimer | None = None,
) -> Iterator[bytes | BinaryIO]:
    """``source`` itself, or, if it is a Deflated Explicit VR Little Endian file, the
    same object as a native Part 10 file (Explicit VR Little Endian): bytes for a small
    one, else a temporary file removed on leaving the block.

    Raises PermanentError ``inflated_too_large`` past ``max_inflated_mb``, and
    ``invalid_dicom`` for a deflated data set that is truncated or does not inflate.
    Anything else (not DICOM, a file meta that does not parse) is left to the parser.
    """
    file = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    found = _deflated(file)
    if found is None:
        yield source
        return
    spool = _Spool(min(frames_above, MEMORY_BYTES))
    try:
        with timer("inflate") if timer is not None else nullcontext():
            spool.write(found.native_prefix())
            _inflate(file, found, limit_bytes(options), spool)
        native = spool.contents()
    except BaseException:
        spool.close()
        raise
    try:
        yield native
    finally:
        spool.close()


def inflated_head(data: bytes, most: int) -> tuple[bytes, bool] | None:
    """The first bytes of an object (``data``) as a native Part 10 file's first bytes,
    if its data set is deflated: the stream inflated as far as those bytes reach (at
    most ``most`` bytes), and whether that is the whole data set. None for anything
    else, a deflated stream that does not inflate included (the parser names it).

    ``dcmpress estimate`` reads headers so: a deflated stream cut short cannot be
    inflated whole, as pydicom tries to, but its start inflates as any other.
    """
    found = _deflated(io.BytesIO(data))
    if found is None:
        return None
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        body = inflater.decompress(data[found.start :], most)
    except zlib.error:
        return None
    return found.native_prefix() + body, inflater.eof


def limit_bytes(options: CompressionOptions) -> int:
    """How many bytes a deflated data set may inflate to: ``max_inflated_mb``, else the
    default sized from this worker's memory."""
    return (options.max_inflated_mb or worker_default_mb()) * MIB


@functools.cache
def worker_default_mb() -> int:
    """The default ``max_inflated_mb`` of this worker (its memory and processes)."""
    return default_limit_mb(usable_memory(), worker_processes())


def default_limit_mb(memory: int | None, processes: int) -> int:
    """A process's share of ``memory`` bytes, divided by :data:`WHOLE_OBJECT_FACTOR`,
    in MiB (at least 1); :data:`UNKNOWN_MEMORY_LIMIT_MB` if the memory is unknown."""
    if memory is None:
        return UNKNOWN_MEMORY_LIMIT_MB
    return max(1, memory // max(1, processes) // WHOLE_OBJECT_FACTOR // MIB)


def worker_processes() -> int:
    """The processes of a worker sharing the memory (``worker_concurrency``, or its
    default: the usable cores plus one)."""
    try:
        return WorkerSettings().concurrency
    except ValueError:  # settings a worker would refuse to start with: their default
        return WorkerSettings.model_construct().concurrency


# The memory a process may use. The physical memory is the host's: in a container
# limited to 2 GiB on a 64 GiB node it says 64 GiB. Linux gives the limit in the memory
# cgroup (``memory.max`` in cgroup v2, ``memory/memory.limit_in_bytes`` in v1), which
# Kubernetes memory limits and ``docker run --memory`` set; read as worker.cores reads
# the CPU quota. cgroup v1 writes "no limit" as the largest page-aligned 64-bit value:
# anything from here up is no limit.
_V1_UNLIMITED = 2**62


def usable_memory(cgroup: Path = CGROUP) -> int | None:
    """Bytes of memory this process may use: the physical memory, capped by a cgroup
    memory limit; None if neither is known."""
    sizes = [size for size in (physical_memory(), cgroup_memory_limit(cgroup)) if size]
    return min(sizes) if sizes else None


def physical_memory() -> int | None:
    """The machine's memory in bytes, or None if the system does not say."""
    try:
        size = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not POSIX, or not this name
        return None
    return size if size > 0 else None


def cgroup_memory_limit(cgroup: Path = CGROUP) -> int | None:
    """The cgroup's memory limit in bytes, or None if unlimited or unknown."""
    try:
        text = (cgroup / "memory.max").read_text().strip()  # v2: bytes, or "max"
        return int(text) if text != "max" and int(text) > 0 else None
    except (OSError, ValueError):
        pass
    try:  # v1
        limit = int((cgroup / "memory" / "memory.limit_in_bytes").read_text())
    except (OSError, ValueError):
        return None
    return limit if 0 < limit < _V1_UNLIMITED else None


@dataclass(frozen=True)
class _Deflated:
    """Where a deflated file's data set starts, and what comes before it."""

    preamble: bytes
    file_meta: FileMetaDataset
    start: int  # the offset of the deflated data set
    size: int  # of the whole file

    def native_prefix(self) -> bytes:
        """Preamble, prefix and the file meta naming Explicit VR Little Endian."""
        meta = copy.deepcopy(self.file_meta)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buffer = DicomBytesIO()
        buffer.write(self.preamble + b"DICM")
        try:
            # as it is (its group length recomputed): the output's file meta is
            # made from it, as from a native source's
            write_file_meta_info(buffer, meta, enforce_standard=False)
        except Exception as exc:
            raise_outside_causes(exc)
            raise PermanentError("invalid_dicom", f"cannot rewrite the file meta: {exc}") from exc
        return buffer.getvalue()


def _deflated(file: BinaryIO) -> _Deflated | None:
    """What :class:`_Deflated` says of ``file`` (at its start) if its file meta names
    Deflated Explicit VR Little Endian; None for anything else."""
    size = file.seek(0, io.SEEK_END)
    file.seek(0)
    head = file.read(_META_BYTES)
    if head[128:132] != b"DICM" or _DEFLATED_UID not in head:
        return None  # the quick answer for every other object (60 us less: parse below)
    file.seek(0)
    try:
        preamble = read_preamble(file, force=False)
        meta = _read_file_meta_info(file)
        syntax = str(meta.get("TransferSyntaxUID", "") or "").strip("\0 ")
    except Exception as exc:  # not Part 10, or a file meta the parser names
        raise_outside_causes(exc)
        return None
    if syntax != DeflatedExplicitVRLittleEndian or preamble is None:
        return None
    return _Deflated(preamble, meta, file.tell(), size)


class _Spool:
    """Inflated bytes: in memory up to ``memory_bytes``, then in a temporary file."""

    def __init__(self, memory_bytes: int) -> None:
        self._memory_bytes = memory_bytes
        self.file: BinaryIO = io.BytesIO()
        self.on_disk = False

    def write(self, data: bytes) -> None:
        if not self.on_disk and self.file.tell() + len(data) >= self._memory_bytes:
            disk = tempfile.TemporaryFile(prefix="dcmpress-inflated-")  # noqa: SIM115 - close()
            assert isinstance(self.file, io.BytesIO)
            disk.write(self.file.getbuffer())
            self.file, self.on_disk = disk, True
        self.file.write(data)

    def contents(self) -> bytes | BinaryIO:
        """Bytes if in memory, else the file, at its start."""
        if not self.on_disk:
            assert isinstance(self.file, io.BytesIO)
            return self.file.getvalue()
        self.file.flush()
        self.file.seek(0)
        return self.file

    def crc32(self, start: int) -> int:
        """The CRC-32 of what was written from ``start`` on (the end stays the end)."""
        end = self.file.tell()
        self.file.seek(start)
        crc = 0
        while chunk := self.file.read(min(OUTPUT_BYTES, end - self.file.tell())):
            crc = zlib.crc32(chunk, crc)
        self.file.seek(end)
        return crc

    def close(self) -> None:
        self.file.close()


class _DoesNotInflate(Exception):
    def __init__(self, inflated: int, error: zlib.error) -> None:
        super().__init__(str(error))
        self.inflated = inflated


def _inflate(file: BinaryIO, found: _Deflated, limit: int, spool: _Spool) -> None:
    """Inflate the data set of ``file`` into ``spool``. A zlib stream (with header) is
    inflated too, and a data set that is not deflated at all copied as it is, each with
    a warning."""
    file.seek(found.start)
    head = file.read(INPUT_BYTES)
    if not head:
        raise PermanentError(
            "invalid_dicom", "the file meta names Deflated Explicit VR Little Endian, but no "
            "data set follows it",
        )  # fmt: skip
    start = spool.file.tell()  # of the data set in the spool
    try:
        trailing = _inflate_stream(file, head, -zlib.MAX_WBITS, found, limit, spool)
    except _DoesNotInflate as raw:
        if raw.inflated:
            raise _corrupt(raw) from raw
        file.seek(found.start + len(head))  # nothing inflated: start again after ``head``
        if _zlib_header(head):
            warnings.warn(
                "the data set is deflated with a zlib header (PS3.5 A.5: raw deflate)",
                stacklevel=2,
            )
            try:
                trailing = _inflate_stream(file, head, zlib.MAX_WBITS, found, limit, spool)
            except _DoesNotInflate as wrapped:
                raise _corrupt(wrapped) from wrapped
        elif looks_like_raw_dataset(head[:2]) and not _starts_like_deflate(head):
            warnings.warn(
                "the file meta names Deflated Explicit VR Little Endian, but the data set "
                "is not deflated: read as it is",
                stacklevel=2,
            )
            _copy(file, head, spool)
            return
        else:
            raise _corrupt(raw) from raw
    if trailing:
        _after_the_stream(file.read(min(trailing, _GZIP_TRAILER.size + 1)), trailing, spool, start)


def _after_the_stream(tail: bytes, trailing: int, spool: _Spool, start: int) -> None:
    """Check what follows the deflated stream (``trailing`` bytes, ``tail`` their first):
    the null padding, or a gzip trailer (the CRC-32 and size of the inflated data set,
    as DCTOOL writes) that must match what was inflated; warn of anything else."""
    if tail == _PADDING:
        return
    inflated = spool.file.tell() - start
    if trailing - _GZIP_TRAILER.size in (0, 1) and tail[_GZIP_TRAILER.size :] in (b"", _PADDING):
        crc, size = _GZIP_TRAILER.unpack(tail[: _GZIP_TRAILER.size])
        if size == inflated % 2**32:
            if crc != spool.crc32(start):
                raise PermanentError(
                    "invalid_dicom",
                    "the inflated data set does not match the CRC-32 written after the "
                    "deflated stream (a gzip trailer): the stream is corrupt",
                )
            return
    warnings.warn(f"{trailing} bytes after the end of the deflated data set ignored", stacklevel=3)


def _inflate_stream(
    file: BinaryIO, head: bytes, wbits: int, found: _Deflated, limit: int, spool: _Spool
) -> int:
    """Inflate ``head`` and the rest of ``file`` into ``spool``; return the number of
    bytes after the end of the deflated stream (the file left at them)."""
    inflater = zlib.decompressobj(wbits)
    inflated = 0
    chunk = head
    position = found.start  # of ``chunk`` in the file
    while chunk:
        pending = chunk
        while True:
            try:
                out = inflater.decompress(pending, OUTPUT_BYTES)
            except zlib.error as exc:
                raise _DoesNotInflate(inflated, exc) from exc
            inflated += len(out)
            if inflated > limit:
                read = position + len(chunk) - len(inflater.unconsumed_tail) - found.start
                raise _too_large(limit, read, found)
            spool.write(out)
            pending = inflater.unconsumed_tail
            if inflater.eof or (not pending and len(out) < OUTPUT_BYTES):
                break
        if inflater.eof:
            end = position + len(chunk) - len(inflater.unused_data)
            file.seek(end)
            return found.size - end
        position += len(chunk)
        chunk = file.read(INPUT_BYTES)
    raise PermanentError(
        "invalid_dicom",
        f"the deflated data set is truncated: its {found.size - found.start} bytes end "
        f"within the deflated stream, after {inflated} inflated bytes",
    )


def _copy(file: BinaryIO, head: bytes, spool: _Spool) -> None:
    chunk = head
    while chunk:
        spool.write(chunk)
        chunk = file.read(INPUT_BYTES)


def _starts_like_deflate(data: bytes) -> bool:
    """The first bytes of ``data`` inflate without error: a deflate stream (corrupt
    later on, as it is not inflated in full), not a data set written as it is (the
    block header the first bytes of an element make is one zlib refuses at once)."""
    try:
        zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[:_PROBE_BYTES], 1)
    except zlib.error:
        return False
    return True


def _zlib_header(data: bytes) -> bool:
    """``data`` starts with a zlib header (RFC 1950: deflate, a valid check value)."""
    return (
        len(data) >= 2
        and data[0] & 0x0F == 8
        and data[0] >> 4 <= 7
        and ((data[0] << 8 | data[1]) % 31 == 0)
    )


def _corrupt(error: _DoesNotInflate) -> PermanentError:
    return PermanentError(
        "invalid_dicom",
        f"the deflated data set is corrupt ({error}) after at least {error.inflated} "
        "inflated bytes",
    )


def _too_large(limit: int, read: int, found: _Deflated) -> PermanentError:
    return PermanentError(
        "inflated_too_large",
        f"the deflated data set inflates to more than {limit // MIB} MiB, the limit "
        f"{_SETTING}; stopped after {read} of its "
        f"{found.size - found.start} deflated bytes",
    )
