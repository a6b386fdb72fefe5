"""The imagecodecs RLE plugin writes standard DICOM RLE (PS3.5 Annex G)."""

from __future__ import annotations

import struct

import pytest
from pydicom.encaps import generate_frames

from dcmpress.stack.samples import make_image
from tests.support import assert_lossless, read, run, source_pixels
from worker.codec.plugins import packbits


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rows": 1, "cols": 1},
        {"rows": 7, "cols": 131, "bits_stored": 12},  # odd width, rows longer than 128
        {"rows": 33, "cols": 300, "bits_allocated": 8},
        {"rows": 16, "cols": 17, "samples": 3, "bits_allocated": 8},
        {"rows": 20, "cols": 20, "signed": True, "bits_stored": 16},
        {"rows": 24, "cols": 24, "frames": 3, "bits_stored": 10},
    ],
)
def test_results_decode_identical_elsewhere(kwargs: dict[str, int]) -> None:
    ds = make_image(**kwargs)
    result = run(ds, target=["rle"], encoding_plugin="imagecodecs", min_ratio=0)
    assert result.plugin == "imagecodecs"
    assert_lossless(result, source_pixels(ds))  # decoded by pydicom's own RLE decoder


def test_runs_longer_than_a_packbits_run_and_constant_rows() -> None:
    ds = make_image(40, 400, bits_stored=12)
    arr = ds.pixel_array.copy()
    arr[:20] = 7  # constant rows: replicate runs of 128 and a remainder
    arr[20:, ::2] = 4095  # alternating values: literal runs only
    ds.PixelData = arr.tobytes()
    result = run(ds, target=["rle"], encoding_plugin="imagecodecs", min_ratio=0)
    assert_lossless(result, arr)
    assert result.bytes_out < result.bytes_in


def test_segments_are_even_and_the_header_points_at_them() -> None:
    ds = make_image(9, 13, samples=3, bits_allocated=8)  # odd plane sizes
    result = run(ds, target=["rle"], encoding_plugin="imagecodecs", min_ratio=0)
    assert result.output is not None
    frame = next(generate_frames(read(result.output).PixelData, number_of_frames=1))
    count, *offsets = struct.unpack("<16L", frame[:64])
    assert count == 3  # one segment per byte of each sample
    used = offsets[:count]
    assert used[0] == 64 and offsets[count:] == [0] * (15 - count)
    ends = [*used[1:], len(frame)]
    assert all((end - start) % 2 == 0 for start, end in zip(used, ends, strict=True))


def test_more_segments_than_the_header_holds_are_refused() -> None:
    class Runner:
        bits_allocated, samples_per_pixel, rows, columns = 64, 3, 1, 1

        def get_option(self, name: str, default: str) -> str:
            return default

    with pytest.raises(ValueError, match="at most 15"):
        packbits.encode_frame(bytes(24), Runner())
