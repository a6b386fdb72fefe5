"""Object lists given as manifests, read as a stream of :class:`ObjectRef` pages.

Three formats are understood, told apart by their first bytes (:func:`detect_format`):

- ``batch-csv``: an S3 Batch Operations CSV manifest, ``bucket,key[,versionId]`` per row,
  no header, keys URL-encoded.
- ``s3-urls``: one ``s3://bucket/key`` per line, keys taken literally.
- ``inventory``: the ``manifest.json`` of an S3 Inventory report in CSV format; its gzipped
  data files are opened one after the other.

Nothing holds a whole manifest: files are read one line at a time through a fixed-size
buffer and gunzipped as they stream, so a manifest of a billion keys costs the same memory
as one of ten. Only an inventory's ``manifest.json`` (an index of data files, kilobytes) is
parsed whole.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
import re
import zlib
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast
from urllib.parse import unquote_plus

from producer.sources import ObjectRef
from worker.runtime.contract import S3Location

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from worker.runtime.storage import Storage

__all__ = [
    "ManifestError",
    "ManifestFormat",
    "Opener",
    "detect_format",
    "open_local",
    "read_batch_csv",
    "read_inventory",
    "read_manifest",
    "read_s3_urls",
    "storage_opener",
]

Opener = Callable[[str], BinaryIO]
"""Opens a location (a local path or ``s3://bucket/key``) for binary reading."""

ManifestFormat = Literal["inventory", "batch-csv", "s3-urls"]

HEAD_BYTES = 64 * 1024  # what format detection looks at; also the read size
MAX_LINE_BYTES = 1024 * 1024  # keys are <= 1 KiB; a longer line means a wrong file
MAX_INVENTORY_MANIFEST_BYTES = 16 * 1024 * 1024  # it lists data files (~200 B each), not objects
_GZIP_MAGIC = b"\x1f\x8b"
# Permissive on purpose: legacy and S3-compatible buckets allow capitals and underscores.
_BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_BUCKET_ARN = re.compile(r"arn:[^:]+:s3:::(.+)")
_UNSUPPORTED_INVENTORY_FORMATS = {"ORC", "PARQUET"}


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file and the line."""

    def __init__(self, name: str, line: int | None, problem: str) -> None:
        where = f"{name}, line {line}" if line is not None else name
        super().__init__(f"{where}: {problem}")
        self.name = name
        self.line = line
        self.problem = problem


# --- streams ---------------------------------------------------------------------------


class _RawReader(io.RawIOBase):
    """Any ``read(n)`` stream (boto3's StreamingBody, a file) as a raw stream.

    ``io.BufferedReader`` on top gives fast ``readline`` and a ``peek`` that never loses
    bytes; reads are filled completely so one ``peek`` sees the whole head. Optionally
    hashes what passes through, to check an inventory data file's ``MD5checksum``.
    """

    def __init__(self, stream: BinaryIO | gzip.GzipFile, *, hashed: bool = False) -> None:
        super().__init__()
        self._stream = stream
        self.md5 = hashlib.md5(usedforsecurity=False) if hashed else None
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            # bounded: the stream may allocate what it is asked for before reading
            chunk = self._stream.read(min(len(view) - filled, HEAD_BYTES))
            if not chunk:
                break
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
            self.size += len(chunk)
            if self.md5 is not None:
                self.md5.update(chunk)
        return filled


def _buffered(stream: BinaryIO | gzip.GzipFile, *, hashed: bool = False) -> io.BufferedReader:
    return io.BufferedReader(_RawReader(stream, hashed=hashed), buffer_size=HEAD_BYTES)


def _line_reader(stream: BinaryIO) -> BinaryIO:
    """``stream`` itself when its ``readline`` is already buffered (files, gzip, BytesIO)."""
    if isinstance(stream, io.BufferedIOBase):
        return stream
    return _buffered(stream)  # e.g. boto3's StreamingBody: IOBase.readline reads byte by byte


def _open_sniffed(location: str, open_location: Opener, stack: ExitStack) -> tuple[bytes, BinaryIO]:
    """Open ``location``, gunzip it if its bytes say gzip; return its head and the stream.

    The head is peeked, not consumed. Every layer is registered on ``stack`` for closing.
    """
    raw = stack.enter_context(open_location(location))
    buffered = stack.enter_context(_buffered(raw))
    head = buffered.peek(HEAD_BYTES)[:HEAD_BYTES]
    if not head.startswith(_GZIP_MAGIC):
        return head, buffered
    # by content, not by name: S3 objects are often gzipped without a .gz suffix
    unzipped = stack.enter_context(gzip.GzipFile(fileobj=buffered, mode="rb"))
    buffered = stack.enter_context(_buffered(unzipped))
    try:
        head = buffered.peek(HEAD_BYTES)[:HEAD_BYTES]
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ManifestError(location, None, f"corrupt gzip data: {exc}") from exc
    return head, buffered


def open_local(location: str) -> BinaryIO:
    """Open a local manifest (a path or ``file://`` URL); a path ending ``.gz`` is gunzipped."""
    if location.startswith("s3://"):
        raise ValueError(f"{location}: open_local reads local files only; pass an S3 opener")
    path = location.removeprefix("file://")
    if path.endswith(".gz"):
        return cast(BinaryIO, gzip.open(path, "rb"))
    return open(path, "rb")  # the caller closes it


def storage_opener(storage: Storage) -> Opener:
    """An :data:`Opener` of ``s3://bucket/key`` through ``storage``, else of a local file."""

    def open_location(location: str) -> BinaryIO:
        if location.startswith("s3://"):
            where = S3Location.parse(location)
            return cast(BinaryIO, storage.open_stream(where.bucket, where.prefix))
        return open_local(location)

    return open_location


class _Lines:
    """Numbered UTF-8 text lines of a binary stream, one ``readline`` at a time.

    Decoding line by line (not in 8 KiB chunks as ``TextIOWrapper`` does) lets an encoding
    error name its line. ``number`` is the line last returned, so for a CSV row spanning
    lines it is the row's last line.
    """

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self._stream = _line_reader(stream)
        self._name = name
        self.number = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        try:
            raw = self._stream.readline(MAX_LINE_BYTES + 1)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise ManifestError(self._name, self.number + 1, f"corrupt gzip data: {exc}") from exc
        if not raw:
            raise StopIteration
        self.number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise ManifestError(
                self._name, self.number, f"line longer than {MAX_LINE_BYTES} bytes; not a manifest?"
            )
        if self.number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]  # Excel and Windows tools write one
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(
                self._name, self.number, f"not UTF-8 text (invalid byte at column {exc.start + 1})"
            ) from exc


def _csv_rows(lines: _Lines, name: str) -> Iterator[list[str]]:
    """CSV rows of ``lines``; a CSV syntax error becomes a ManifestError with its line."""
    reader = csv.reader(lines, strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ManifestError(name, lines.number, f"bad CSV: {exc}") from exc
        yield row


def _is_blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


# --- values ----------------------------------------------------------------------------


def _decode_key(encoded: str, name: str, line: int) -> str:
    """An object key from its URL-encoded form, as S3 writes and reads it in manifests.

    Both CSV formats encode keys (S3 User Guide: "Object keys must be URL-encoded" for
    Batch Operations CSV; inventory CSV keys "must be decoded before you can use" them).
    ``unquote_plus``, not ``unquote``: inventory CSV writes a space as ``+`` and a literal
    plus as ``%2B`` (cloud-custodian#1997), and Batch Operations, which takes inventory
    reports and CSV manifests alike, decodes ``+`` as a space (powertools-lambda-python
    #3572). AWS's example ``object%20key%20with%20spaces`` decodes the same either way;
    a literal ``+`` must be written ``%2B``, as URL encoding requires anyway.
    """
    if not encoded:
        raise ManifestError(name, line, "empty object key")
    try:
        key = unquote_plus(encoded, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            name, line, f"key {encoded!r} does not decode to UTF-8 (is it URL-encoded?)"
        ) from exc
    if not key:
        raise ManifestError(name, line, "empty object key")
    return key


def _check_bucket(bucket: str, name: str, line: int | None) -> str:
    if not _BUCKET_NAME.fullmatch(bucket):
        raise ManifestError(name, line, f"{bucket!r} is not a bucket name")
    return bucket


# --- formats ---------------------------------------------------------------------------


def detect_format(location: str, head: bytes) -> ManifestFormat:
    """Tell a manifest's format from its first bytes (``location`` names it in errors).

    A JSON object with ``"files"`` and ``"fileFormat"`` is an S3 Inventory
    ``manifest.json``; a first line (after blank and ``#`` lines) starting ``s3://`` is a
    list of S3 URLs; anything else is read as an S3 Batch Operations CSV.
    """
    if head.startswith(_GZIP_MAGIC):
        raise ManifestError(location, None, "gzip-compressed; read it with read_manifest")
    text = head.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="replace")
    if text.lstrip().startswith("{"):
        if '"files"' in text and '"fileFormat"' in text:
            return "inventory"
        raise ManifestError(
            location,
            None,
            'JSON, but not an S3 Inventory manifest.json (no "files" and "fileFormat")',
        )
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return "s3-urls" if stripped[:5].lower() == "s3://" else "batch-csv"
    return "batch-csv"


def read_batch_csv(stream: BinaryIO, name: str = "manifest") -> Iterator[ObjectRef]:
    """Objects of an S3 Batch Operations CSV manifest: ``bucket,key[,versionId]`` rows.

    No header. Keys are URL-encoded (decoded as :func:`_decode_key` explains); an empty
    version id means the current version. Tolerates a UTF-8 BOM, CRLF line ends, blank
    lines and quoted fields. The stream is not closed.
    """
    lines = _Lines(stream, name)
    checked = ""  # manifests name one bucket again and again: check it once
    for row in _csv_rows(lines, name):
        if _is_blank(row):
            continue
        if len(row) not in (2, 3):
            raise ManifestError(
                name, lines.number, f"expected bucket,key[,versionId]; found {len(row)} fields"
            )
        bucket = row[0].strip()
        if bucket != checked:
            checked = _check_bucket(bucket, name, lines.number)
        key = _decode_key(row[1], name, lines.number)
        version_id = row[2].strip() if len(row) == 3 else ""
        yield ObjectRef(bucket, key, version_id=version_id or None)


def read_s3_urls(stream: BinaryIO, name: str = "manifest") -> Iterator[ObjectRef]:
    """Objects of a list of ``s3://bucket/key`` URLs, one per line.

    Keys are taken literally (not URL-decoded), everything after the bucket's ``/``.
    Blank lines and lines starting with ``#`` are skipped; surrounding whitespace is
    stripped, so keys cannot begin or end with whitespace here. The stream is not closed.
    """
    lines = _Lines(stream, name)
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text[:5].lower() != "s3://":
            raise ManifestError(name, lines.number, f"expected s3://bucket/key, found {text!r}")
        bucket, slash, key = text[5:].partition("/")
        if not slash or not key:
            raise ManifestError(name, lines.number, f"no object key in {text!r}")
        yield ObjectRef(_check_bucket(bucket, name, lines.number), key)


def _read_small(stream: BinaryIO, limit: int, name: str) -> bytes:
    """All of a small stream, in chunks: ``read(limit)`` would allocate ``limit`` up front."""
    chunks: list[bytes] = []
    size = 0
    while chunk := stream.read(HEAD_BYTES):
        size += len(chunk)
        if size > limit:
            raise ManifestError(name, None, f"larger than {limit} bytes; not a manifest.json?")
        chunks.append(chunk)
    return b"".join(chunks)


def _field(document: dict[str, Any], field: str, name: str) -> Any:
    if field not in document:
        raise ManifestError(name, None, f'not an S3 Inventory manifest: no "{field}"')
    return document[field]


def _inventory_bucket(value: object, name: str) -> str:
    """``arn:aws:s3:::bucket`` (as S3 writes ``destinationBucket``) or a plain name."""
    if not isinstance(value, str):
        raise ManifestError(name, None, f"destinationBucket {value!r} is not a string")
    match = _BUCKET_ARN.fullmatch(value)
    return _check_bucket(match.group(1) if match else value, name, None)


class _InventoryColumns:
    """Where the fields dcmpress needs sit in an inventory row, from ``fileSchema``."""

    def __init__(self, schema: object, name: str) -> None:
        if not isinstance(schema, str):
            raise ManifestError(name, None, "fileSchema is not a comma-separated string")
        columns = [column.strip().lower() for column in schema.split(",")]
        for required in ("bucket", "key"):
            if required not in columns:
                raise ManifestError(name, None, f'fileSchema has no "{required.title()}" column')
        self.count = len(columns)
        self.bucket = columns.index("bucket")
        self.key = columns.index("key")
        self.version_id = _index(columns, "versionid")
        self.is_latest = _index(columns, "islatest")
        self.is_delete_marker = _index(columns, "isdeletemarker")
        self.size = _index(columns, "size")
        self.etag = _index(columns, "etag")


def _index(columns: list[str], column: str) -> int | None:
    return columns.index(column) if column in columns else None


def _flag(row: list[str], index: int | None, default: bool, name: str, line: int) -> bool:
    if index is None:
        return default
    value = row[index].strip().lower()
    if value in ("true", "false"):
        return value == "true"
    if not value:
        return default
    raise ManifestError(name, line, f"expected true or false, found {row[index]!r}")


def read_inventory(
    manifest: BinaryIO,
    open_location: Opener,
    name: str = "manifest.json",
    *,
    include_versions: bool = False,
) -> Iterator[ObjectRef]:
    """Objects of an S3 Inventory report, from its ``manifest.json``.

    Each data file listed under ``files`` is opened as
    ``s3://<destination bucket>/<file key>``, gunzipped as it streams and parsed by
    ``fileSchema`` (keys URL-decoded; ``Size``, ``ETag`` and ``VersionId`` used when
    present). Delete markers are always skipped, and versions that are not the latest
    unless ``include_versions``. A data file whose ``MD5checksum`` or ``size`` does not
    match what was read fails after its rows (it was truncated or replaced). Only the CSV
    output format can be read. The manifest stream is not closed.
    """
    data = _read_small(manifest, MAX_INVENTORY_MANIFEST_BYTES, name)
    try:
        document = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ManifestError(name, exc.lineno, f"not valid JSON: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(name, None, "not UTF-8 JSON") from exc
    if not isinstance(document, dict):
        raise ManifestError(name, None, "not an S3 Inventory manifest: not a JSON object")
    file_format = _field(document, "fileFormat", name)
    if str(file_format).upper() in _UNSUPPORTED_INVENTORY_FORMATS:
        raise ManifestError(
            name,
            None,
            f"S3 Inventory fileFormat {file_format} is not supported; configure the inventory "
            "report with output format CSV and use its next manifest.json",
        )
    if str(file_format).upper() != "CSV":
        raise ManifestError(name, None, f"unknown S3 Inventory fileFormat {file_format!r}")
    columns = _InventoryColumns(_field(document, "fileSchema", name), name)
    destination = _inventory_bucket(_field(document, "destinationBucket", name), name)
    source_bucket = str(document.get("sourceBucket") or "")
    files = _field(document, "files", name)
    if not isinstance(files, list):
        raise ManifestError(name, None, '"files" is not a list')
    for number, entry in enumerate(files, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise ManifestError(name, None, f'files[{number - 1}] has no "key"')
        yield from _read_inventory_file(
            f"s3://{destination}/{entry['key']}",
            open_location,
            columns,
            source_bucket,
            include_versions,
            expected_md5=entry.get("MD5checksum"),
            expected_size=entry.get("size"),
        )


def _read_inventory_file(
    location: str,
    open_location: Opener,
    columns: _InventoryColumns,
    source_bucket: str,
    include_versions: bool,
    *,
    expected_md5: object,
    expected_size: object,
) -> Iterator[ObjectRef]:
    with ExitStack() as stack:
        counter = _RawReader(stack.enter_context(open_location(location)), hashed=True)
        counted = stack.enter_context(io.BufferedReader(counter, buffer_size=HEAD_BYTES))
        stored = counted.peek(len(_GZIP_MAGIC)).startswith(_GZIP_MAGIC)
        stream: BinaryIO = counted
        if stored:
            unzipped = stack.enter_context(gzip.GzipFile(fileobj=counted, mode="rb"))
            stream = stack.enter_context(_buffered(unzipped))
        lines = _Lines(stream, location)
        for row in _csv_rows(lines, location):
            if _is_blank(row):
                continue
            ref = _inventory_ref(row, columns, source_bucket, include_versions, location, lines)
            if ref is not None:
                yield ref
        # The checksum covers the stored (gzipped) bytes; an opener that already
        # decompressed them leaves nothing to check.
        if stored:
            while counted.read(HEAD_BYTES):
                pass
            _check_stored(counter, location, expected_md5, expected_size)


def _inventory_ref(
    row: list[str],
    columns: _InventoryColumns,
    source_bucket: str,
    include_versions: bool,
    name: str,
    lines: _Lines,
) -> ObjectRef | None:
    line = lines.number
    if len(row) != columns.count:
        raise ManifestError(
            name, line, f"{len(row)} fields, but fileSchema names {columns.count} columns"
        )
    if _flag(row, columns.is_delete_marker, False, name, line):
        return None  # a delete marker has no data to compress
    latest = _flag(row, columns.is_latest, True, name, line)
    if not latest and not include_versions:
        return None
    bucket = _check_bucket(row[columns.bucket] or source_bucket, name, line)
    key = _decode_key(row[columns.key], name, line)
    version_id = row[columns.version_id] if columns.version_id is not None else ""
    if not version_id and not latest:
        # An all-versions inventory leaves the null version's id empty; only "null"
        # addresses it once it is no longer the latest (AWS: inventory-configure-bops).
        version_id = "null"
    size: int | None = None
    if columns.size is not None and row[columns.size]:
        try:
            size = int(row[columns.size])
        except ValueError:
            raise ManifestError(name, line, f"size {row[columns.size]!r} is not a number") from None
    etag = row[columns.etag].strip('"') if columns.etag is not None else ""
    return ObjectRef(bucket, key, etag, size, version_id or None)


def _check_stored(
    raw: _RawReader, location: str, expected_md5: object, expected_size: object
) -> None:
    if raw.md5 is None:
        return
    if isinstance(expected_size, int) and raw.size != expected_size:
        raise ManifestError(
            location,
            None,
            f"read {raw.size} bytes, manifest.json says {expected_size}: truncated or replaced",
        )
    if isinstance(expected_md5, str) and raw.md5.hexdigest() != expected_md5.lower():
        raise ManifestError(
            location, None, "MD5 differs from manifest.json's MD5checksum: truncated or replaced"
        )


# --- entry point -----------------------------------------------------------------------


def _pages(refs: Iterator[ObjectRef], page_size: int) -> Iterator[list[ObjectRef]]:
    page: list[ObjectRef] = []
    for ref in refs:
        page.append(ref)
        if len(page) == page_size:
            yield page
            page = []
    if page:
        yield page


def read_manifest(
    location: str,
    open_location: Opener,
    page_size: int = 1000,
    *,
    include_versions: bool = False,
) -> Iterator[list[ObjectRef]]:
    """Pages of at most ``page_size`` objects listed by the manifest at ``location``.

    The format is detected from the first bytes (gzip is undone first, whatever the name);
    ``include_versions`` applies to S3 Inventory reports, whose data files
    ``open_location`` must open as ``s3://`` locations. Every file is closed when the
    iteration ends, fails or is abandoned.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, not {page_size}")
    with ExitStack() as stack:
        head, stream = _open_sniffed(location, open_location, stack)
        manifest_format = detect_format(location, head)
        refs: Iterator[ObjectRef]
        if manifest_format == "inventory":
            refs = read_inventory(
                stream, open_location, location, include_versions=include_versions
            )
        elif manifest_format == "s3-urls":
            refs = read_s3_urls(stream, location)
        else:
            refs = read_batch_csv(stream, location)
        try:
            yield from _pages(refs, page_size)
        finally:
            if isinstance(refs, Generator):
                refs.close()  # before the files it reads are closed
