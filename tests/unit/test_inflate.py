"""Deflated Explicit VR Little Endian sources, inflated as a stream (worker/codec/inflate.py).

A deflated object is inflated into a native temporary file and read as a native one
is: a large multi-frame one frame group by frame group, in bounded memory; one that
inflates past ``max_inflated_mb`` is stopped there; a stream that does not inflate is
``invalid_dicom``.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGLSLossless

from dcmpress.stack.samples import make_image
from tests.support import assert_lossless, from_file, independent_decode, source_pixels
from tests.synthetic import with_syntax
from worker import procfs
from worker.codec import inflate
from worker.codec.engine import process
from worker.codec.inflate import cgroup_memory_limit, usable_memory
from worker.codec.options import CompressionOptions, EngineSettings

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
_PIXEL_DATA_OW = struct.pack("<HH2sH", 0x7FE0, 0x0010, b"OW", 0)  # then a 4-byte length


def sparse_frame(index: int, rows: int, cols: int) -> np.ndarray:
    """A frame of zeros with a 16x16 block whose place and values follow ``index``:
    every frame differs, and the whole deflates about 500 times."""
    frame = np.zeros((rows, cols), "<u2")
    top, left = (index * 37) % (rows - 16), (index * 53) % (cols - 16)
    frame[top : top + 16, left : left + 16] = (np.arange(256).reshape(16, 16) * (index + 1)) % 4096
    return frame


def write_deflated_volume(
    file: Any,
    rows: int,
    cols: int,
    frames: int,
    wbits: int = -zlib.MAX_WBITS,
    gzip_trailer: bool = False,
) -> None:
    """A Deflated Explicit VR Little Endian CT of ``frames`` :func:`sparse_frame` frames,
    deflated a frame at a time (never whole in memory) into ``file``; with
    ``gzip_trailer``, the data set's CRC-32 and size after the stream, as DCTOOL writes."""
    ds = make_image(rows, cols, bits_stored=12)
    del ds.PixelData
    ds.NumberOfFrames = frames
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    meta.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta)
    file.write(meta.getvalue())
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    size = rows * cols * 2 * frames
    parts = [body.getvalue() + _PIXEL_DATA_OW + struct.pack("<L", size)]
    deflater = zlib.compressobj(6, zlib.DEFLATED, wbits)
    crc, inflated, written = 0, 0, 0
    for index in range(-1, frames):
        part = parts[0] if index < 0 else sparse_frame(index, rows, cols).tobytes()
        crc, inflated = zlib.crc32(part, crc), inflated + len(part)
        written += file.write(deflater.compress(part))
    written += file.write(deflater.flush())
    if gzip_trailer:
        written += file.write(struct.pack("<LL", crc, inflated))
    if written % 2:
        file.write(b"\0")  # as pydicom pads an odd stream


def deflated_volume(rows: int, cols: int, frames: int, **options: Any) -> bytes:
    buffer = io.BytesIO()
    write_deflated_volume(buffer, rows, cols, frames, **options)
    return buffer.getvalue()


def deflated(ds: Dataset) -> bytes:
    """``ds`` written by pydicom in Deflated Explicit VR Little Endian."""
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def meta_end(data: bytes) -> int:
    """The offset of the data set after the file meta of a Part 10 file."""
    group_length = struct.unpack("<L", data[140:144])[0]
    return 144 + group_length


def assert_frames_equal(written: bytes, rows: int, cols: int, frames: int) -> None:
    """Decode ``written`` frame by frame with GDCM (not the engine's decoder) and compare
    each frame with :func:`sparse_frame`."""
    ds = dcmread(io.BytesIO(written))
    assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
    decoded = get_decoder(JPEGLSLossless).iter_array(ds, raw=True, decoding_plugin="gdcm")
    count = 0
    for index, (frame, _) in enumerate(decoded):
        np.testing.assert_array_equal(frame, sparse_frame(index, rows, cols))
        count += 1
    assert count == frames


CHILD = """
import json, sys
from worker.codec.engine import process
from worker.procfs import peak_rss
from worker.codec.options import CompressionOptions

source, mode, output = sys.argv[1:4]
with open(source, "rb") as file:
    data = file.read() if mode == "bytes" else file
    result = process(data, CompressionOptions(min_ratio=0))  # else the defaults
    if result.output is not None:
        if not isinstance(result.output, bytes):
            result.output.seek(0)
        with open(output, "wb") as out:
            out.write(result.output if isinstance(result.output, bytes) else result.output.read())
print(json.dumps({"state": result.state, "code": result.code, "message": result.message,
                  "warnings": result.warnings, "peak": peak_rss()}))
"""


@pytest.fixture(scope="module")
def volume_256_mib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("deflated") / "volume.dcm"
    with path.open("wb") as file:
        write_deflated_volume(file, 512, 512, 512)  # 256 MiB of Pixel Data
    return path


@pytest.mark.skipif(procfs.peak_rss() is None, reason="reads VmHWM from /proc")
@pytest.mark.parametrize("mode", ["bytes", "file"])
def test_a_256_mib_deflated_object_peaks_under_300_mib(
    volume_256_mib: Path, mode: str, tmp_path: Path
) -> None:
    """A 0.5 MB object whose Pixel Data inflates to 256 MiB, compressed with the default
    limit in a process of its own, as bytes (a small S3 object) or from a file. Inflated
    whole (before), the process peaked at 850 MiB; a native one of the same pixels on
    the frame path peaks at about 100 MiB (a Python process with its imports: 80)."""
    if inflate.worker_default_mb() < 256:
        pytest.skip(f"this machine's default max_inflated_mb is {inflate.worker_default_mb()}")
    assert volume_256_mib.stat().st_size < MIB
    output = tmp_path / "out.dcm"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(volume_256_mib), mode, str(output)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (outcome["state"], outcome["code"]) == ("done", "compressed"), outcome["message"]
    assert outcome["warnings"] == []
    assert outcome["peak"] < 300 * MIB, f"peak {outcome['peak'] / MIB:.0f} MiB"
    assert_frames_equal(output.read_bytes(), 512, 512, 512)


@pytest.mark.parametrize("mode", ["bytes", "file"])
def test_an_object_inflating_past_the_limit_is_stopped_there(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 MiB of Pixel Data in 130 KB, 8 MiB allowed: refused with its own code, having
    held little more than a read and the in-memory part of the spool; the spool is
    closed (with O_TMPFILE it has no name to look for: its descriptor is counted)."""
    data = deflated_volume(512, 512, 128)
    assert len(data) < MIB
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    options = CompressionOptions(max_inflated_mb=8)
    descriptors = procfs.open_descriptors()
    tracemalloc.start()
    try:
        if mode == "bytes":
            result = process(data, options)
        else:
            with tempfile.TemporaryFile() as file:
                file.write(data)
                file.seek(0)
                result = process(file, options)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (result.state, result.code) == ("failed", "inflated_too_large")
    assert "more than 8 MiB" in result.message and "max_inflated_mb" in result.message
    assert result.copied and result.output is None  # the source, unchanged
    assert peak - len(data) < 12 * MIB, f"peak {peak / MIB:.1f} MiB"
    assert list(tmp_path.iterdir()) == []
    assert procfs.open_descriptors() == descriptors


def test_the_limit_counts_the_inflated_data_set_not_the_file() -> None:
    data = deflated_volume(512, 512, 6)  # 3 MiB of Pixel Data
    assert process(data, CompressionOptions(max_inflated_mb=4)).code == "compressed"
    assert process(data, CompressionOptions(max_inflated_mb=2)).code == "inflated_too_large"


@pytest.mark.parametrize(
    "case",
    [
        {"bits_stored": 12},
        {"bits_stored": 12, "frames": 4},
        {"bits_allocated": 8, "samples": 3},
        {"bits_stored": 16, "signed": True},
    ],
    ids=["12-bit", "multi-frame", "RGB", "signed"],
)
@pytest.mark.parametrize("target", ["jpeg-ls", "rle", "j2k"])
def test_a_small_deflated_object_compresses_losslessly(case: dict[str, Any], target: str) -> None:
    ds = make_image(40, 48, **case)
    expected = source_pixels(ds)
    result = process(deflated(ds), CompressionOptions(target=target, min_ratio=0))
    assert result.warnings == []
    written = assert_lossless(result, expected)
    assert written.PatientName == ds.PatientName
    assert written.SOPInstanceUID == ds.SOPInstanceUID  # lossless: kept
    assert written.file_meta.TransferSyntaxUID != DeflatedExplicitVRLittleEndian


def test_a_deflated_multi_frame_object_takes_the_frame_path(deferred: None) -> None:
    ds = make_image(40, 48, frames=5, bits_stored=12)
    expected = source_pixels(ds)
    descriptors = procfs.open_descriptors()
    result, written = from_file(deflated(ds), CompressionOptions(target="jpeg-ls", min_ratio=0))
    np.testing.assert_array_equal(independent_decode(written), expected)
    assert result.state == "done"
    # from bytes as well: a small object from S3 whose pixels inflate past frames_above
    result = process(deflated(ds), CompressionOptions(target="rle", min_ratio=0), frames_above=1)
    assert not isinstance(result.output, bytes | None), "the frame path was not taken"
    result.output.seek(0)
    np.testing.assert_array_equal(independent_decode(result.output.read()), expected)
    result.close()
    assert procfs.open_descriptors() == descriptors  # the spools and outputs are closed


def _first_block_corrupt(ds: Dataset) -> bytes:
    """``ds`` deflated in two parts, the second's first block header made invalid
    (block type 3, reserved): the stream breaks after the first part inflated."""
    meta = DicomBytesIO()
    meta.write(b"\0" * 128 + b"DICM")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    write_file_meta_info(meta, ds.file_meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    raw = body.getvalue()
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = deflater.compress(raw[:1000]) + deflater.flush(zlib.Z_FULL_FLUSH)
    rest = deflater.compress(raw[1000:]) + deflater.flush()
    return meta.getvalue() + first + b"\x07" + rest[1:]


def test_a_corrupt_deflated_stream_is_invalid_dicom() -> None:
    ds = make_image(64, 64, bits_stored=12)
    result = process(_first_block_corrupt(ds), CompressionOptions())
    assert (result.state, result.code) == ("failed", "invalid_dicom")
    assert "corrupt (Error -3 while decompressing data: invalid block type)" in result.message
    data = deflated(make_image(64, 64, bits_stored=12))
    start = meta_end(data)
    garbage = data[:start] + b"\xff" * 64 + data[start + 64 :]
    result = process(garbage, CompressionOptions())
    assert result.code == "invalid_dicom"
    assert result.message.startswith("the deflated data set is corrupt (Error -3"), result.message


@pytest.mark.parametrize("mode", ["bytes", "file"])
def test_a_truncated_deflated_stream_is_invalid_dicom(mode: str) -> None:
    data = deflated(make_image(64, 64, bits_stored=12))
    cut = data[: meta_end(data) + (len(data) - meta_end(data)) // 2]
    if mode == "bytes":
        result = process(cut, CompressionOptions())
    else:
        with tempfile.TemporaryFile() as file:
            file.write(cut)
            file.seek(0)
            result = process(file, CompressionOptions())
    assert (result.state, result.code) == ("failed", "invalid_dicom")
    assert "truncated" in result.message
    nothing = data[: meta_end(data)]
    result = process(nothing, CompressionOptions())
    assert result.code == "invalid_dicom" and "no data set follows" in result.message


def test_bytes_after_the_deflated_stream_are_ignored_with_a_warning() -> None:
    ds = make_image(64, 64, bits_stored=12)
    expected = source_pixels(ds)
    data = deflated(ds)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflater.decompress(data[meta_end(data) :])
    result = process(data + b"trailing garbage", CompressionOptions(min_ratio=0))
    assert_lossless(result, expected)
    extra = len(inflater.unused_data) + 16  # pydicom pads an odd stream with a null
    assert f"{extra} bytes after the end of the deflated data set ignored" in result.warnings


def test_a_single_null_after_an_odd_stream_is_its_padding() -> None:
    for frames in range(3, 20):  # the first volume whose stream has an odd length
        data = deflated_volume(64, 64, frames)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflater.decompress(data[meta_end(data) :])
        if inflater.unused_data:
            break
    assert inflater.eof and inflater.unused_data == b"\0"
    result = process(data, CompressionOptions(min_ratio=0))
    assert result.state == "done" and result.warnings == []
    assert_frames_equal(result.output, 64, 64, frames)  # type: ignore[arg-type]


@pytest.mark.parametrize("frames", [3, 4])  # either parity: padded or not
def test_a_gzip_trailer_after_the_stream_is_checked(frames: int) -> None:
    """DCTOOL writes the data set's CRC-32 and size after the stream (pydicom's
    image_dfl.dcm): a match is silent, a mismatch proves the stream corrupt."""
    data = deflated_volume(64, 64, frames, gzip_trailer=True)
    result = process(data, CompressionOptions(min_ratio=0))
    assert result.state == "done" and result.warnings == [], result.message
    assert_frames_equal(result.output, 64, 64, frames)  # type: ignore[arg-type]
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflater.decompress(data[meta_end(data) :])
    trailer = len(data) - len(inflater.unused_data)  # the offset of the CRC
    damaged = data[:trailer] + bytes([data[trailer] ^ 1]) + data[trailer + 1 :]
    result = process(damaged, CompressionOptions())
    assert (result.state, result.code) == ("failed", "invalid_dicom")
    assert "does not match the CRC-32" in result.message


def test_a_data_set_not_deflated_after_all_is_read_as_it_is() -> None:
    """The file meta says deflated, the data set is native explicit VR: read as such."""
    ds = make_image(64, 64, bits_stored=12)
    expected = source_pixels(ds)
    mislabelled = with_syntax(ds, DeflatedExplicitVRLittleEndian)
    assert DeflatedExplicitVRLittleEndian.encode() in mislabelled[: meta_end(mislabelled)]
    result = process(mislabelled, CompressionOptions(min_ratio=0))
    assert_lossless(result, expected)
    assert any("not deflated" in warning for warning in result.warnings)


def test_a_zlib_stream_is_inflated_too() -> None:
    data = deflated_volume(64, 64, 3, wbits=zlib.MAX_WBITS)
    result = process(data, CompressionOptions())
    assert result.state == "done", result.message
    assert any("zlib header" in warning for warning in result.warnings)
    written = result.output
    assert isinstance(written, bytes)
    assert_frames_equal(written, 64, 64, 3)


def test_native_and_other_objects_are_not_touched() -> None:
    for data in (b"not dicom at all", deflated(make_image(8, 8))[:100]):
        with inflate.native_source(data, CompressionOptions()) as source:
            assert source is data
    native = io.BytesIO()
    make_image(8, 8).save_as(native, enforce_file_format=True)
    with inflate.native_source(native.getvalue(), CompressionOptions()) as source:
        assert source == native.getvalue()


def test_the_default_limit_is_a_share_of_memory() -> None:
    assert inflate.default_limit_mb(8 * 1024 * MIB, 4) == 256  # 8 GiB, 4 processes
    assert inflate.default_limit_mb(None, 4) == inflate.UNKNOWN_MEMORY_LIMIT_MB
    assert inflate.default_limit_mb(MIB, 64) == 1
    memory = usable_memory()
    assert memory is not None
    expected = inflate.default_limit_mb(memory, inflate.worker_processes())
    assert inflate.worker_default_mb() == expected
    assert inflate.limit_bytes(CompressionOptions()) == expected * MIB
    assert inflate.limit_bytes(CompressionOptions(max_inflated_mb=3)) == 3 * MIB


def test_the_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCMPRESS_MAX_INFLATED_MB", "640")
    assert EngineSettings().compression_options().max_inflated_mb == 640
    with pytest.raises(ValueError):
        CompressionOptions(max_inflated_mb=0)


def test_the_cgroup_memory_limit_caps_the_memory(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("2147483648\n")
    assert cgroup_memory_limit(v2) == 2 * 1024 * MIB
    assert usable_memory(v2) == min(2 * 1024 * MIB, usable_memory(tmp_path / "none") or 2**63)
    (v2 / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("1073741824\n")
    assert cgroup_memory_limit(v1) == 1024 * MIB
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_memory_limit(v1) is None  # v1's "no limit"
    assert cgroup_memory_limit(tmp_path / "none") is None


def test_the_estimate_reads_the_header_of_a_large_deflated_object(tmp_path: Path) -> None:
    """A deflated stream cut short cannot be inflated whole (as pydicom tries, in the
    estimate's ranged header reads), but its start inflates: the header of a 9 MB
    deflated object that deflates little is read from its first 64 KiB, as the engine
    reads the object (inflated, native), not given up as unreadable after 4 MiB."""
    from dcmpress.estimate import HEAD_FIRST, HEAD_MOST, Entry, LocalSource, read_header
    from producer.sources import KeyFilter

    data = deflated(make_image(512, 512, frames=20, bits_stored=12))
    assert len(data) > HEAD_MOST
    path = tmp_path / "deflated.dcm"
    path.write_bytes(data)
    header = read_header(LocalSource([tmp_path], KeyFilter()), Entry(str(path), len(data)), None)
    assert (header.kind, header.modality, header.bytes_read) == ("CT", "CT", HEAD_FIRST)
