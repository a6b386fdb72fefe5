"""No input reaches ``internal_error`` because of what it contains.

Real archives hold every inconsistency the standard forbids. Each mutation below
breaks one thing (a missing or absurd Image Pixel attribute, a truncated or padded
Pixel Data, a broken overlay group...) in one of several base objects; every target
must then end with a declared code other than ``internal_error``, and whatever ends
``done`` under a lossless target must decode, independently, to the source pixels.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from pydicom import dcmwrite, examples
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dcmpress.stack.samples import make_image, to_bytes
from tests.support import independent_decode, run, source_pixels
from tests.synthetic import enhanced_ct, mr_with_embedded_overlays

Mutation = Callable[[Dataset], None]
TARGETS = (["jpeg-ls"], ["jpeg-ls-near"], ["j2k"], ["j2k-lossy"], ["rle"], ["jpeg-ls", "rle"])
LOSSLESS = ("jpeg-ls", "rle", "j2k")

BASES: dict[str, Callable[[], Dataset]] = {
    "ct-signed": lambda: make_image(40, 40, bits_stored=12, signed=True),
    "rgb": lambda: make_image(40, 40, bits_allocated=8, samples=3),
    "multiframe": lambda: make_image(40, 40, frames=3, bits_stored=12),
    "overlays": lambda: mr_with_embedded_overlays((12, 15))[0],
    "enhanced-ct": lambda: enhanced_ct(frames=2, rows=40, cols=40),
    "example-ct": lambda: examples.ct,
    "example-palette": lambda: examples.palette_color,
    "example-j2k": lambda: examples.jpeg2k,
}


def _delete(keyword: str) -> Mutation:
    def mutate(ds: Dataset) -> None:
        if keyword in ds:
            delattr(ds, keyword)

    return mutate


def _set(keyword: str, value: object) -> Mutation:
    def mutate(ds: Dataset) -> None:
        setattr(ds, keyword, value)

    return mutate


def _set_tag(group: int, element: int, vr: str, value: object) -> Mutation:
    def mutate(ds: Dataset) -> None:
        ds.add_new(Tag(group, element), vr, value)

    return mutate


def _resize_pixels(change: int | None) -> Mutation:
    """Cut or pad native Pixel Data by ``change`` bytes; None empties it."""

    def mutate(ds: Dataset) -> None:
        if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_encapsulated:
            data = ds.PixelData
            if change is None:
                ds.PixelData = b""
            else:
                ds.PixelData = data[:change] if change < 0 else data + b"\0" * change

    return mutate


def _mutations() -> Iterator[tuple[str, Mutation]]:
    for keyword in (
        "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
        "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames",
        "PlanarConfiguration", "SOPInstanceUID", "ImageType", "Modality",
        "StudyInstanceUID", "SeriesInstanceUID", "PixelData",
    ):  # fmt: skip
        yield f"no-{keyword}", _delete(keyword)
    values: dict[str, tuple[object, ...]] = {
        "Rows": (0, 1, 65535),
        "Columns": (0, 3),
        "BitsAllocated": (0, 12, 24, 64),
        "BitsStored": (0, 17, 33),
        "HighBit": (100, 0),
        "PixelRepresentation": (2,),
        "SamplesPerPixel": (0, 2, 4),
        "PhotometricInterpretation": (
            "",
            "FOO",
            "YBR_ICT",
            "YBR_FULL_422",
            "MONOCHROME1",
            "PALETTE COLOR",
            "RGB",
        ),
        "NumberOfFrames": (0, 2, 1000),
        "PlanarConfiguration": (1, 5),
        "ImageType": ("", "X"),
        "LossyImageCompression": ("99", "01"),
        "SegmentationType": ("BINARY",),
        "SOPInstanceUID": ("",),
        "SOPClassUID": ("", "1.2.3"),
    }
    for keyword, options in values.items():
        for value in options:
            yield f"{keyword}={value!r}", _set(keyword, value)
    yield "overlay-bit-position-text", _set_tag(0x6000, 0x0102, "LO", "x")
    yield "overlay-bits-allocated-only", _set_tag(0x6004, 0x0100, "US", 16)
    yield "overlay-rows-mismatch", _set_tag(0x6000, 0x0010, "US", 7)
    yield "overlay-frames-zero", _set_tag(0x6000, 0x0015, "IS", 0)
    yield "overlay-origin-beyond", _set_tag(0x6000, 0x0051, "US", 9)
    for change in (-1, -2, 2, 100):
        yield f"pixel-data{change:+d}", _resize_pixels(change)
    yield "pixel-data-empty", _resize_pixels(None)


MUTATIONS = dict(_mutations())


def _serialised(ds: Dataset) -> bytes | None:
    for strict in (True, False):
        try:
            if strict:
                return to_bytes(ds)
            buffer = io.BytesIO()
            dcmwrite(buffer, ds, enforce_file_format=False)
            return buffer.getvalue()
        except Exception:
            continue
    return None


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.CRITICAL)  # internal errors would be logged with a traceback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("base", sorted(BASES))
def test_a_broken_object_ends_with_a_specific_code(base: str, mutation: str) -> None:
    ds = copy.deepcopy(BASES[base]())
    MUTATIONS[mutation](ds)
    data = _serialised(ds)
    assert data is not None, "pydicom cannot write this mutation: feed it another way"
    transcode = ds.file_meta.TransferSyntaxUID.is_encapsulated
    for target in TARGETS:
        result = run(data, target=target, transcode=transcode)
        assert result.code != "internal_error", (target, result.message)
        if result.state == "done" and result.target in LOSSLESS:
            expected = source_pixels(ds)
            decoded = independent_decode(result.output or b"", result.plugin or "")
            assert decoded.shape == expected.shape, target
            np.testing.assert_array_equal(decoded, expected)
