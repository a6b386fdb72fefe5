"""Large native multi-frame objects, a group of frames at a time (worker/codec/frames.py).

The frame path must write exactly what the whole-object path writes, verify the file
it wrote, and hold only a group of frames at a time.
"""

from __future__ import annotations

import io
import math
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from dcmpress.stack.samples import make_image, to_bytes
from tests.support import assert_lossless, independent_decode, read, source_pixels
from tests.synthetic import enhanced_ct
from worker.codec import frames as frames_module
from worker.codec import parse
from worker.codec.engine import Result, process
from worker.codec.frames import FRAMES_ABOVE, GROUP_BYTES, WRITE_CHUNK_BYTES
from worker.codec.options import CompressionOptions

CASES: dict[str, dict[str, Any]] = {
    "12-bit": {"rows": 40, "cols": 48, "frames": 5, "bits_stored": 12},
    "signed 16-bit": {"rows": 40, "cols": 48, "frames": 5, "signed": True},
    "8-bit": {"rows": 40, "cols": 48, "frames": 5, "bits_allocated": 8},
    "RGB": {"rows": 40, "cols": 48, "frames": 5, "bits_allocated": 8, "samples": 3},
    "RGB planar": {
        "rows": 40, "cols": 48, "frames": 5, "bits_allocated": 8, "samples": 3, "planar": 1,
    },
    "implicit VR": {
        "rows": 40, "cols": 48, "frames": 5, "bits_stored": 12, "syntax": ImplicitVRLittleEndian,
    },
    "32-bit, 16 stored": {"rows": 40, "cols": 48, "frames": 5, "bits_allocated": 32,
                          "bits_stored": 16},
    "odd sizes": {"rows": 33, "cols": 37, "frames": 3, "bits_stored": 12},
}  # fmt: skip


@pytest.fixture
def groups_of_two(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Groups of two frames of these small images (Plan.per_group): several groups
    per object, whose Pixel Data is left in the file as a large one's is."""
    real = frames_module.Plan.__init__

    def two_per_group(self: frames_module.Plan, *args: Any) -> None:
        real(self, *args[:-1], 2)

    monkeypatch.setattr(frames_module.Plan, "__init__", two_per_group)
    monkeypatch.setattr(parse, "DEFER_SIZE", 1024)
    yield


def as_file(data: bytes) -> BinaryIO:
    file = tempfile.TemporaryFile()  # noqa: SIM115 - the caller's, in a with block
    file.write(data)
    file.seek(0)
    return file


def framed(data: bytes, options: CompressionOptions) -> Result:
    """The frame path (any object size): the output must be a temporary file."""
    with as_file(data) as file:
        result = process(file, options, frames_above=1)
    if result.state == "done":
        assert not isinstance(result.output, bytes), "the frame path was not taken"
    return result


def output_bytes(result: Result) -> bytes:
    """The written output; a temporary file is read and removed."""
    assert result.output is not None
    if isinstance(result.output, bytes):
        return result.output
    result.output.seek(0)
    data = result.output.read()
    result.close()
    return data


@pytest.mark.parametrize("target", ["jpeg-ls", "rle", "j2k"])
@pytest.mark.parametrize("case", CASES)
def test_frame_by_frame_writes_exactly_what_the_whole_object_path_writes(
    case: str, target: str, groups_of_two: None
) -> None:
    if target == "j2k" and case == "odd sizes":
        pytest.skip("openjpeg needs 32-pixel sides")  # refused alike on both paths
    ds = make_image(**CASES[case])
    data = to_bytes(ds)
    options = CompressionOptions(target=target)
    whole = process(data, options)
    result = framed(data, options)
    assert (result.state, result.code) == (whole.state, whole.code), result.message
    assert result.message == whole.message
    written = output_bytes(result)
    assert written == whole.output
    assert result.bytes_out == len(written)
    assert_lossless(Result(**{**result.__dict__, "output": written}), source_pixels(ds))


@pytest.mark.parametrize("extended", [False, True])
def test_offset_tables_match_the_whole_object_path(extended: bool, groups_of_two: None) -> None:
    data = to_bytes(make_image(40, 48, frames=7, bits_stored=12))
    options = CompressionOptions(target="jpeg-ls", encapsulate_ext=extended)
    written = output_bytes(framed(data, options))
    assert written == process(data, options).output
    out = read(written)
    assert ("ExtendedOffsetTable" in out) is extended


@pytest.mark.parametrize("target", ["jpeg-ls-near", "j2k-lossy"])
def test_lossy_results_carry_the_same_attributes(target: str, groups_of_two: None) -> None:
    ds = enhanced_ct(frames=5, rows=40, cols=48)
    data = to_bytes(ds)
    options = CompressionOptions(target=target)
    whole = read(output_bytes(process(data, options)))
    out = read(output_bytes(framed(data, options)))
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionRatio == whole.LossyImageCompressionRatio
    assert out.LossyImageCompressionMethod == whole.LossyImageCompressionMethod
    assert out.SOPInstanceUID != ds.SOPInstanceUID  # a new instance, as PS3.3 asks
    assert len(out.PerFrameFunctionalGroupsSequence) == 5
    for name in ("ImageType", "NumberOfFrames"):
        assert out.get(name) == whole.get(name)
    np.testing.assert_array_equal(out.pixel_array, whole.pixel_array)


def with_stray_bit_in_last_frame() -> bytes:
    ds = make_image(40, 48, frames=5, bits_stored=12)
    arr = np.frombuffer(ds.PixelData, dtype="<u2").copy().reshape(5, 40, 48)
    arr[4, 3, 3] |= 0x8000  # a bit above High Bit 11, in the last group only
    ds.PixelData = arr.tobytes()
    return to_bytes(ds)


def test_high_bits_in_a_late_group_are_counted_and_kept_ones_refused(
    groups_of_two: None,
) -> None:
    data = with_stray_bit_in_last_frame()
    cleared = framed(data, CompressionOptions(target="jpeg-ls"))
    whole = process(data, CompressionOptions(target="jpeg-ls"))
    assert cleared.state == "done"
    output_bytes(cleared)
    assert cleared.notices == whole.notices
    assert "1 pixel had bit 15 set above High Bit 11" in cleared.message
    kept = framed(data, CompressionOptions(target="jpeg-ls", high_bits="keep"))
    assert (kept.state, kept.code, kept.copy_source) == ("skipped", "high_bits_set", True)
    assert kept.output is None


def test_a_corrupt_frame_in_the_written_file_fails_verification(
    groups_of_two: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failure injection: one encoded frame of a later group is damaged before it is
    spooled; only decoding the written file can see it."""
    calls = []
    real = frames_module.encode_pixels

    def damaging(*args: Any, **kwargs: Any) -> Dataset:
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            pixels = bytearray(result.PixelData)
            pixels[-40] ^= 0xFF
            result.PixelData = bytes(pixels)
        return result

    monkeypatch.setattr(frames_module, "encode_pixels", damaging)
    data = to_bytes(make_image(40, 48, frames=5, bits_stored=12))
    result = framed(data, CompressionOptions(target="rle"))
    assert (result.state, result.code) == ("failed", "verification_failed"), result.message
    assert result.output is None
    assert len(calls) == 3  # three groups encoded


def test_pixel_data_cut_short_is_a_specific_error(groups_of_two: None) -> None:
    data = to_bytes(make_image(40, 48, frames=5, bits_stored=12))
    result = framed(data[:-1000], CompressionOptions(target="jpeg-ls"))
    assert result.code == "invalid_pixel_data", result.message
    assert "frame 5" in result.message


def test_small_files_and_single_frames_take_the_whole_object_path() -> None:
    options = CompressionOptions(target="jpeg-ls")
    for ds in (make_image(64, 64, frames=3), make_image(512, 512)):
        with as_file(to_bytes(ds)) as file:
            result = process(file, options)  # the default threshold
        assert isinstance(result.output, bytes)


def test_a_large_volume_is_never_held_whole(tmp_path: Path) -> None:
    """With the defaults: a volume above FRAMES_ABOVE, read from a file, peaks at a few
    groups of frames in Python and numpy allocations."""
    frames = FRAMES_ABOVE // (512 * 512 * 2) + 8
    ds = make_image(512, 512, frames=frames, bits_stored=12)
    path = tmp_path / "volume.dcm"
    path.write_bytes(to_bytes(ds))
    del ds
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with path.open("rb") as file:
            result = process(file, CompressionOptions(target="rle"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.state == "done", result.message
    # a few groups' worth, whatever the object's size (the whole-object path: ~3x it)
    assert peak < 6 * GROUP_BYTES, f"peak {peak / 2**20:.0f} MiB for {size / 2**20:.0f} MiB"
    assert peak < 0.5 * size
    written = output_bytes(result)
    decoded = independent_decode(written)
    assert decoded.shape == (frames, 512, 512)
    np.testing.assert_array_equal(decoded, source_pixels(dcmread(io.BytesIO(path.read_bytes()))))


def test_the_output_is_written_in_large_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom writes a buffered value in reads of its ``buffered_read_size`` (8 KiB
    unless set): the output's spooled frames are read in WRITE_CHUNK_BYTES instead."""
    asked: list[int] = []
    real = frames_module.Joined.read

    def counted(self: frames_module.Joined, size: int | None = -1, /) -> bytes:
        data = real(self, size)
        if data:
            asked.append(-1 if size is None else size)
        return data

    monkeypatch.setattr(frames_module.Joined, "read", counted)
    ds = make_image(256, 256, frames=48, bits_stored=12)
    result = framed(to_bytes(ds), CompressionOptions(target="rle"))
    assert result.state == "done", result.message
    written = output_bytes(result)
    assert written[128:132] == b"DICM"
    assert len(written) > 2 * WRITE_CHUNK_BYTES  # several reads even in large ones
    # (pydicom also peeks at the first bytes of the value)
    assert len(asked) <= math.ceil(len(written) / WRITE_CHUNK_BYTES) + 2, asked


@hyp_settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(data=st.data())
def test_property_the_frame_path_writes_what_the_whole_path_writes(data: st.DataObject) -> None:
    """Over sizes, bit depths, signedness, colour, planar layout, frame counts, stray
    high bits and targets: the same outcome, message and bytes, group by group."""
    samples = data.draw(st.sampled_from([1, 3]), "samples")
    allocated = data.draw(st.sampled_from([8] if samples == 3 else [8, 16, 32]), "allocated")
    stored = data.draw(st.integers(1, min(allocated, 16)), "stored")
    kwargs: dict[str, Any] = {
        "rows": data.draw(st.integers(1, 40), "rows"),
        "cols": data.draw(st.integers(1, 40), "cols"),
        "frames": data.draw(st.integers(2, 6), "frames"),
        "bits_allocated": allocated,
        "bits_stored": stored,
        "signed": samples == 1 and data.draw(st.booleans(), "signed"),
        "samples": samples,
        "planar": data.draw(st.sampled_from([0, 1]), "planar") if samples == 3 else 0,
        "seed": data.draw(st.integers(0, 3), "seed"),
    }
    ds = make_image(**kwargs)
    if allocated > stored and data.draw(st.booleans(), "stray high bit"):
        words = np.frombuffer(ds.PixelData, dtype=f"<u{allocated // 8}").copy()
        words[data.draw(st.integers(0, words.size - 1), "where")] |= 1 << (allocated - 1)
        ds.PixelData = words.tobytes()
    target = data.draw(st.sampled_from(["jpeg-ls", "rle", "j2k", "htj2k"]), "target")
    options = CompressionOptions(target=[target], min_ratio=0)
    data_bytes = to_bytes(ds)
    whole = process(data_bytes, options)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parse, "DEFER_SIZE", 1)  # every Pixel Data left in the file
        per_group = data.draw(st.integers(1, 3), "frames per group")
        real = frames_module.Plan.__init__

        def grouped(self: frames_module.Plan, *args: Any) -> None:
            real(self, *args[:-1], per_group)

        patch.setattr(frames_module.Plan, "__init__", grouped)
        with as_file(data_bytes) as file:
            result = process(file, options, frames_above=1)
    assert (result.state, result.code, result.message) == (
        whole.state, whole.code, whole.message,
    ), kwargs  # fmt: skip
    event(f"{whole.state}/{whole.code}")
    if whole.output is None:
        assert result.output is None
        return
    assert not isinstance(result.output, bytes), "the frame path was not taken"
    assert output_bytes(result) == whole.output, kwargs


def test_groups_carry_only_the_image_pixel_attributes(
    groups_of_two: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Enhanced object's per-frame functional groups (an item per frame) are never
    copied per group, yet the output carries them exactly as the whole path writes."""
    seen: list[Dataset] = []
    real = frames_module.decode_source

    def spy(ds: Dataset) -> Any:
        seen.append(ds)
        return real(ds)

    monkeypatch.setattr(frames_module, "decode_source", spy)
    data = to_bytes(enhanced_ct(frames=5, rows=40, cols=48))
    options = CompressionOptions(target="jpeg-ls")
    written = output_bytes(framed(data, options))
    assert written == process(data, options).output
    groups = [ds for ds in seen if "PerFrameFunctionalGroupsSequence" not in ds]
    assert len(groups) >= 6  # three groups encoded, three verified
    assert all(int(ds.NumberOfFrames) <= 2 for ds in groups)
    assert len(read(written).PerFrameFunctionalGroupsSequence) == 5
