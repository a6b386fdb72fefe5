"""Manifests: every format read as pages of ObjectRef, in bounded memory, errors with lines."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import time
import tracemalloc
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

from producer.manifests import (
    ManifestError,
    Opener,
    detect_format,
    open_local,
    read_batch_csv,
    read_inventory,
    read_manifest,
    read_s3_urls,
)
from producer.sources import ObjectRef

INVENTORY_SCHEMA = (
    "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, "
    "StorageClass, IsMultipartUploaded, ReplicationStatus, EncryptionStatus, "
    "ObjectLockRetainUntilDate, ObjectLockMode, ObjectLockLegalHoldStatus, "
    "IntelligentTieringAccessTier, BucketKeyStatus, ChecksumAlgorithm"
)


def s3_opener(root: Path, opened: list[BinaryIO] | None = None) -> Opener:
    """``s3://bucket/key`` read from ``root/bucket/key`` as stored (not gunzipped)."""

    def open_location(location: str) -> BinaryIO:
        if location.startswith("s3://"):
            bucket, _, key = location[5:].partition("/")
            stream: BinaryIO = (root / bucket / key).open("rb")
        else:
            stream = open_local(location)
        if opened is not None:
            opened.append(stream)
        return stream

    return open_location


def all_refs(location: Path | str, opener: Opener = open_local, **options: Any) -> list[ObjectRef]:
    return [ref for page in read_manifest(str(location), opener, **options) for ref in page]


def write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


class ChunkyBody:
    """Like boto3's StreamingBody: only read(n), and it returns at most a few bytes."""

    def __init__(self, data: bytes, chunk: int = 7) -> None:
        self._data = io.BytesIO(data)
        self._chunk = chunk
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        return self._data.read(self._chunk if size < 0 else min(size, self._chunk))

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> ChunkyBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- S3 Batch Operations CSV -----------------------------------------------------------


def test_batch_csv_keys_are_url_decoded_with_plus_as_space(tmp_path: Path) -> None:
    manifest = write(
        tmp_path / "manifest.csv",
        "Examplebucket,object%20key%20with%20spaces\n"
        "archive,scan+one/a+b.dcm\n"
        "archive,C%2B%2B/x%2By.dcm\n"
        "archive,caf%C3%A9/%E2%9C%93.dcm\n"
        "archive,raw café.dcm\n"
        'archive,"a,b%2Cc.dcm"\n'
        'archive,"with ""quotes"".dcm"\n'
        "archive,dir/plain.dcm\n",
    )
    assert [(ref.bucket, ref.key) for ref in all_refs(manifest)] == [
        ("Examplebucket", "object key with spaces"),
        ("archive", "scan one/a b.dcm"),
        ("archive", "C++/x+y.dcm"),
        ("archive", "café/✓.dcm"),
        ("archive", "raw café.dcm"),
        ("archive", "a,b,c.dcm"),
        ("archive", 'with "quotes".dcm'),
        ("archive", "dir/plain.dcm"),
    ]


def test_batch_csv_takes_version_ids_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    manifest = write(
        tmp_path / "manifest.csv",
        b"\xef\xbb\xbfarchive,a.dcm,PZ9ibn9D5lP6p298B7S9_ceqx1n5EJ0p\r\n"
        b"\r\n"
        b"archive,b%20c.dcm,imHf3FAiRsvBW_EHB8GOu.NHunHO1gVs\r\n"
        b"   \r\n"
        b"archive,d.dcm,\r\n"
        b"archive,e.dcm",
    )
    assert all_refs(manifest) == [
        ObjectRef("archive", "a.dcm", version_id="PZ9ibn9D5lP6p298B7S9_ceqx1n5EJ0p"),
        ObjectRef("archive", "b c.dcm", version_id="imHf3FAiRsvBW_EHB8GOu.NHunHO1gVs"),
        ObjectRef("archive", "d.dcm"),
        ObjectRef("archive", "e.dcm"),
    ]


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        (b"archive,a.dcm\nonly-a-key.dcm\n", 2, "found 1 fields"),
        (b"archive,a.dcm\n\narchive,b.dcm,v1,extra\n", 3, "found 4 fields"),
        (b"archive,a.dcm\nnot a bucket!,b.dcm\n", 2, "not a bucket name"),
        (b"archive,a.dcm\narchive,\n", 2, "empty object key"),
        (b"archive,%FF%FE.dcm\n", 1, "does not decode to UTF-8"),
        (b"archive,a.dcm\narchive,b.dcm\narchive,\xff.dcm\n", 3, "not UTF-8 text"),
        (b'archive,a.dcm\narchive,"b.dcm\n', 2, "bad CSV"),
        (b'archive,"a"b.dcm\n', 1, "bad CSV"),
        (b"archive," + b"k" * (2 * 1024 * 1024), 1, "line longer than"),
    ],
    ids=[
        "one-field",
        "four-fields",
        "bad-bucket",
        "empty-key",
        "bad-percent",
        "not-utf8",
        "open-quote",
        "stray-quote",
        "no-newline",
    ],
)
def test_malformed_batch_csv_row_names_file_and_line(
    content: bytes, line: int, problem: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        list(read_batch_csv(io.BytesIO(content), name="s3://m/manifest.csv"))
    assert caught.value.line == line
    assert f"s3://m/manifest.csv, line {line}: " in str(caught.value)
    assert problem in str(caught.value)


def test_a_streaming_body_that_returns_a_few_bytes_per_read_is_read_whole() -> None:
    data = "".join(f"archive,dir/f%20{i}.dcm\n" for i in range(500)).encode()
    body = ChunkyBody(data)
    refs = list(read_batch_csv(cast(BinaryIO, body)))
    assert [ref.key for ref in refs] == [f"dir/f {i}.dcm" for i in range(500)]
    assert not body.closed  # the caller owns the stream

    pages = list(read_manifest("s3://m/manifest.csv", lambda _: cast(BinaryIO, ChunkyBody(data))))
    assert sum(len(page) for page in pages) == 500


# --- s3:// URL lists -------------------------------------------------------------------


def test_s3_url_list_keys_are_taken_literally(tmp_path: Path) -> None:
    manifest = write(
        tmp_path / "keys.txt",
        "# exported 2024-05-01\r\n"
        "\r\n"
        "s3://archive/a b/c+d%20e.dcm\r\n"
        "   s3://archive/caf\u00e9/\u2713.dcm   \r\n"
        "  # indented comment\n"
        "s3://other.bucket/x#1.dcm\n",
    )
    assert all_refs(manifest) == [
        ObjectRef("archive", "a b/c+d%20e.dcm"),
        ObjectRef("archive", "café/✓.dcm"),
        ObjectRef("other.bucket", "x#1.dcm"),
    ]


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        ("s3://archive/a.dcm\n\ns3://archive\n", 3, "no object key"),
        ("s3://archive/a.dcm\ns3://archive/\n", 2, "no object key"),
        ("s3://archive/a.dcm\nhttps://archive/b.dcm\n", 2, "expected s3://bucket/key"),
        ("# c\ns3://bad bucket/a.dcm\n", 2, "not a bucket name"),
    ],
    ids=["bucket-only", "empty-key", "not-s3", "bad-bucket"],
)
def test_malformed_s3_url_names_its_line(content: str, line: int, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        list(read_s3_urls(io.BytesIO(content.encode()), name="keys.txt"))
    assert caught.value.line == line
    assert f"keys.txt, line {line}: " in str(caught.value)
    assert problem in str(caught.value)


# --- S3 Inventory ----------------------------------------------------------------------


def inventory_row(
    key: str,
    version: str = "",
    latest: bool = True,
    delete_marker: bool = False,
    size: str = "1500",
    etag: str = "",
) -> list[str]:
    """One row of INVENTORY_SCHEMA, the key already URL-encoded as S3 writes it."""
    return [
        "archive",
        key,
        version,
        "true" if latest else "false",
        "true" if delete_marker else "false",
        "" if delete_marker else size,
        "2024-08-15T15:28:26.000Z",
        "" if delete_marker else etag or f"etag-{len(key)}",
        "STANDARD",
        "false",
        "",
        "SSE-S3",
        "",
        "",
        "",
        "",
        "DISABLED",
        "",
    ]


def write_inventory(
    root: Path,
    data_files: list[list[list[str]]],
    *,
    schema: str = INVENTORY_SCHEMA,
    file_format: str = "CSV",
    corrupt_md5: bool = False,
) -> Path:
    """A manifest.json and its gzipped CSV data files in ``root/<destination bucket>/``."""
    files = []
    for number, rows in enumerate(data_files):
        text = io.StringIO()
        csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
        stored = gzip.compress(text.getvalue().encode())
        key = f"inv/archive/config/data/part-{number}.csv.gz"
        write(root / "inventory-dest" / key, stored)
        md5 = hashlib.md5(stored, usedforsecurity=False).hexdigest()
        files.append(
            {"key": key, "size": len(stored), "MD5checksum": "0" * 32 if corrupt_md5 else md5}
        )
    manifest = {
        "sourceBucket": "archive",
        "destinationBucket": "arn:aws:s3:::inventory-dest",
        "version": "2016-11-30",
        "creationTimestamp": "1514944800000",
        "fileFormat": file_format,
        "fileSchema": schema,
        "files": files,
    }
    path = root / "inventory-dest/inv/archive/config/2024-08-16T01-00Z/manifest.json"
    return write(path, json.dumps(manifest, indent=2))


def versioned_inventory(root: Path) -> Path:
    return write_inventory(
        root,
        [
            [
                inventory_row("scan+one/a%2Bb.dcm", "v2", etag="e-a2"),
                inventory_row("scan+one/a%2Bb.dcm", "v1", latest=False, size="900", etag="e-a1"),
                inventory_row("deleted.dcm", "v9", delete_marker=True),
                inventory_row("deleted.dcm", "v8", latest=False, etag="e-d8"),
                inventory_row("nullver.dcm", "v5", etag="e-n5"),
                inventory_row("nullver.dcm", "", latest=False, etag="e-n0"),
            ],
            [
                inventory_row("caf%C3%A9/%E2%9C%93.dcm", "v3", size="12500", etag="e-c"),
                inventory_row("x%2Cy+z.dcm", "v4", size="100", etag="e-x"),
            ],
        ],
    )


def test_inventory_yields_latest_versions_of_two_gzip_data_files(tmp_path: Path) -> None:
    manifest = versioned_inventory(tmp_path)
    assert all_refs(manifest, s3_opener(tmp_path)) == [
        ObjectRef("archive", "scan one/a+b.dcm", "e-a2", 1500, "v2"),
        ObjectRef("archive", "nullver.dcm", "e-n5", 1500, "v5"),
        ObjectRef("archive", "café/✓.dcm", "e-c", 12500, "v3"),
        ObjectRef("archive", "x,y z.dcm", "e-x", 100, "v4"),
    ]


def test_inventory_with_versions_adds_noncurrent_ones_but_never_delete_markers(
    tmp_path: Path,
) -> None:
    manifest = versioned_inventory(tmp_path)
    refs = all_refs(manifest, s3_opener(tmp_path), include_versions=True)
    assert [(ref.key, ref.version_id, ref.size) for ref in refs] == [
        ("scan one/a+b.dcm", "v2", 1500),
        ("scan one/a+b.dcm", "v1", 900),
        ("deleted.dcm", "v8", 1500),
        ("nullver.dcm", "v5", 1500),
        ("nullver.dcm", "null", 1500),  # the null version, addressable only as "null"
        ("café/✓.dcm", "v3", 12500),
        ("x,y z.dcm", "v4", 100),
    ]


def test_current_versions_inventory_without_version_columns(tmp_path: Path) -> None:
    manifest = write_inventory(
        tmp_path,
        [[["archive", "a%20b.dcm", "2048", "2024-08-15T15:28:26.000Z", "abc123"]]],
        schema="Bucket, Key, Size, LastModifiedDate, ETag",
    )
    assert all_refs(manifest, s3_opener(tmp_path)) == [
        ObjectRef("archive", "a b.dcm", "abc123", 2048, None)
    ]


def test_boto3_streaming_bodies_are_read_as_they_come(tmp_path: Path) -> None:
    from botocore.response import StreamingBody

    manifest = versioned_inventory(tmp_path)
    bodies: list[StreamingBody] = []

    def open_location(location: str) -> BinaryIO:
        path = manifest if location == "s3://m/manifest.json" else tmp_path / location[5:]
        data = path.read_bytes()
        bodies.append(StreamingBody(io.BytesIO(data), len(data)))
        return cast(BinaryIO, bodies[-1])

    refs = all_refs("s3://m/manifest.json", open_location)
    assert [ref.key for ref in refs] == [
        "scan one/a+b.dcm",
        "nullver.dcm",
        "café/✓.dcm",
        "x,y z.dcm",
    ]
    assert len(bodies) == 3 and all(body._raw_stream.closed for body in bodies)


@pytest.mark.parametrize("file_format", ["ORC", "Parquet"])
def test_orc_and_parquet_inventories_are_rejected_with_what_to_do(
    tmp_path: Path, file_format: str
) -> None:
    manifest = write_inventory(tmp_path, [], file_format=file_format)
    with pytest.raises(ManifestError, match=f"{file_format} is not supported.*output format CSV"):
        all_refs(manifest, s3_opener(tmp_path))


def test_inventory_row_not_matching_the_schema_names_data_file_and_line(tmp_path: Path) -> None:
    rows = [inventory_row("a.dcm", "v1"), inventory_row("b.dcm", "v1")[:5]]
    manifest = write_inventory(tmp_path, [rows])
    with pytest.raises(ManifestError) as caught:
        all_refs(manifest, s3_opener(tmp_path))
    message = str(caught.value)
    assert message.startswith("s3://inventory-dest/inv/archive/config/data/part-0.csv.gz, line 2")
    assert "5 fields, but fileSchema names 18 columns" in message


def test_inventory_data_file_with_other_md5_fails(tmp_path: Path) -> None:
    manifest = write_inventory(tmp_path, [[inventory_row("a.dcm", "v1")]], corrupt_md5=True)
    with pytest.raises(ManifestError, match=r"part-0\.csv\.gz: MD5 differs"):
        all_refs(manifest, s3_opener(tmp_path))


def test_truncated_inventory_data_file_fails(tmp_path: Path) -> None:
    manifest = write_inventory(tmp_path, [[inventory_row(f"k{i}.dcm") for i in range(2000)]])
    data = tmp_path / "inventory-dest/inv/archive/config/data/part-0.csv.gz"
    data.write_bytes(data.read_bytes()[:-40])
    with pytest.raises(ManifestError, match=r"part-0\.csv\.gz, line \d+: corrupt gzip data"):
        all_refs(manifest, s3_opener(tmp_path))


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"fileFormat": "CSV", "files": []}, 'no "fileSchema"'),
        ({"fileFormat": "CSV", "fileSchema": "Key, Size", "files": []}, 'no "Bucket" column'),
        (
            {"fileFormat": "CSV", "fileSchema": "Bucket, Key", "files": []},
            'no "destinationBucket"',
        ),
        ({"fileFormat": "JSON", "files": []}, "unknown S3 Inventory fileFormat"),
    ],
)
def test_incomplete_inventory_manifest_is_rejected(document: dict[str, Any], problem: str) -> None:
    with pytest.raises(ManifestError, match=problem):
        list(read_inventory(io.BytesIO(json.dumps(document).encode()), open_local))


# --- detection, gzip, pages, closing ---------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b'{\n  "sourceBucket" : "a",\n  "fileFormat" : "CSV",\n  "files" : [', "inventory"),
        (b'\xef\xbb\xbf{"fileFormat": "CSV", "files": []}', "inventory"),
        (b"# my keys\n\n  s3://archive/a.dcm\n", "s3-urls"),
        (b"S3://archive/a.dcm\n", "s3-urls"),
        (b"archive,a.dcm\n", "batch-csv"),
        (b"\xef\xbb\xbfarchive,s3%3A%2F%2Fx.dcm\r\n", "batch-csv"),
        (b"", "batch-csv"),
    ],
)
def test_format_is_detected_from_the_head(head: bytes, expected: str) -> None:
    assert detect_format("m", head) == expected


def test_json_that_is_no_inventory_manifest_is_refused() -> None:
    with pytest.raises(ManifestError, match=r"^m\.json: JSON, but not an S3 Inventory"):
        detect_format("m.json", b'{"objects": []}')


def test_gzipped_manifest_is_read_by_content_whatever_its_name(tmp_path: Path) -> None:
    text = "archive,a%20b.dcm\narchive,c.dcm\n"
    plain = all_refs(write(tmp_path / "m.csv", text))
    suffixed = write(tmp_path / "m.csv.gz", gzip.compress(text.encode()))
    unsuffixed = write(tmp_path / "archive/m-gz", gzip.compress(text.encode()))
    assert all_refs(suffixed) == plain  # open_local gunzips .gz
    assert all_refs("s3://archive/m-gz", s3_opener(tmp_path)) == plain  # bytes say gzip
    assert all_refs(unsuffixed) == plain


def test_objects_come_in_pages_of_page_size(tmp_path: Path) -> None:
    manifest = write(tmp_path / "m.txt", "".join(f"s3://b/{i}.dcm\n" for i in range(5)))
    pages = list(read_manifest(str(manifest), open_local, page_size=2))
    assert [[ref.key for ref in page] for page in pages] == [
        ["0.dcm", "1.dcm"],
        ["2.dcm", "3.dcm"],
        ["4.dcm"],
    ]
    with pytest.raises(ValueError, match="page_size"):
        next(read_manifest(str(manifest), open_local, page_size=0))


def test_every_file_is_closed_when_reading_stops_early(tmp_path: Path) -> None:
    manifest = write_inventory(tmp_path, [[inventory_row(f"k{i}.dcm") for i in range(30)]] * 2)
    opened: list[BinaryIO] = []
    pages = read_manifest(str(manifest), s3_opener(tmp_path, opened), page_size=10)
    assert isinstance(pages, Generator)
    assert len(next(pages)) == 10
    assert len(opened) == 2 and not any(stream.closed for stream in opened)
    pages.close()
    assert all(stream.closed for stream in opened)


def test_every_file_is_closed_after_an_error(tmp_path: Path) -> None:
    rows = [inventory_row("a.dcm"), ["archive", "short"]]
    manifest = write_inventory(tmp_path, [rows])
    opened: list[BinaryIO] = []
    with pytest.raises(ManifestError):
        all_refs(manifest, s3_opener(tmp_path, opened))
    assert len(opened) == 2 and all(stream.closed for stream in opened)


# --- scale -----------------------------------------------------------------------------

MEMORY_LIMIT = 20 * 1024 * 1024


def _count(location: str, opener: Opener) -> tuple[int, ObjectRef | None]:
    count, last = 0, None
    for page in read_manifest(location, opener):
        count += len(page)
        last = page[-1]
    return count, last


def _measure(read: Callable[[], tuple[int, ObjectRef | None]]) -> tuple[float, int, Any]:
    """Seconds of an untraced run, then the traced peak of a second one."""
    start = time.perf_counter()
    read()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    try:
        result = read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return seconds, peak, result


def _big_manifest_line(i: int) -> str:
    """Keys shaped like a DICOM archive's (UIDs); every tenth URL-encoded (spaces, plus)."""
    if i % 10 == 3:
        return f"archive-bucket,import%20{i % 13}/scan+{i:07d}%2B.dcm\r\n"
    return f"archive-bucket,1.2.840.10008.{i % 1000}/1.2.840.{i}/{i}.dcm\r\n"


def test_a_million_line_manifest_is_read_in_bounded_memory(tmp_path: Path) -> None:
    lines = 1_000_000
    manifest = tmp_path / "big.csv"
    with manifest.open("w", encoding="utf-8", newline="") as out:  # streamed, 10,000 at a time
        for block in range(0, lines, 10_000):
            out.write("".join(_big_manifest_line(i) for i in range(block, block + 10_000)))
    size = manifest.stat().st_size
    seconds, peak, (count, last) = _measure(lambda: _count(str(manifest), open_local))
    print(
        f"\n1M-line batch CSV ({size / 2**20:.0f} MiB): {lines / seconds:,.0f} lines/s, "
        f"traced peak {peak / 2**20:.2f} MiB"
    )
    assert count == lines
    assert last == ObjectRef("archive-bucket", "1.2.840.10008.999/1.2.840.999999/999999.dcm")
    assert size > 2 * MEMORY_LIMIT  # holding the file would break the limit
    assert peak < MEMORY_LIMIT


def test_a_large_inventory_is_read_in_bounded_memory(tmp_path: Path) -> None:
    rows = 200_000
    manifest = write_inventory(
        tmp_path,
        [
            [
                inventory_row(f"study%20{i % 101}/im+{i:07d}.dcm", f"v{i}")
                for i in range(start, start + rows // 2)
            ]
            for start in (0, rows // 2)
        ],
    )
    seconds, peak, (count, _) = _measure(lambda: _count(str(manifest), s3_opener(tmp_path)))
    print(
        f"\n{rows:,}-row inventory in 2 gzip data files: {rows / seconds:,.0f} rows/s, "
        f"traced peak {peak / 2**20:.2f} MiB"
    )
    assert count == rows
    assert peak < MEMORY_LIMIT
