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
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmwrite, examples
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dcmpress.stack.samples import make_image, to_bytes
from tests.support import independent_decode, run, source_pixels
from tests.synthetic import enhanced_ct, mr_with_embedded_overlays, private_part10, with_syntax
from worker.codec.engine import process
from worker.codec.options import CompressionOptions

Mutation = Callable[[Dataset], None]
TARGETS = (
    ["jpeg-ls"], ["jpeg-ls-near"], ["j2k"], ["j2k-lossy"], ["rle"], ["htj2k"], ["jpegxl"],
    ["jpeg-ls", "rle"],
)  # fmt: skip
# Codes that describe the object itself, not what one target can take of it
INPUT_CODES = frozenset(
    {
        "not_dicom", "invalid_dicom", "invalid_pixel_data", "no_pixel_data",
        "not_an_instance", "media_directory", "unknown_transfer_syntax", "float_pixel_data",
        "unsupported_high_bit", "unsupported_overlay", "high_bits_set", "already_compressed",
        "no_decoder", "unwritable_dataset",
    }
)  # fmt: skip
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
    codes: dict[str, str] = {}
    for target in TARGETS:
        result = run(data, target=target, transcode=transcode)
        assert result.code != "internal_error", (target, result.message)
        if len(target) == 1:
            codes[target[0]] = result.code
        if result.state == "done" and result.target in LOSSLESS:
            expected = source_pixels(ds)
            decoded = independent_decode(result.output or b"", result.plugin or "")
            assert decoded.shape == expected.shape, target
            np.testing.assert_array_equal(decoded, expected)
    # the same input, the same code: what describes the object is found before any
    # target sees it, so every target names it alike
    about_input = {target: code for target, code in codes.items() if code in INPUT_CODES}
    if about_input:
        assert set(codes.values()) == set(about_input.values()) and len(set(codes.values())) == 1, (
            codes
        )


def _odd_objects() -> dict[str, bytes]:
    """Objects whose kind is odd rather than broken: a transfer syntax pydicom 3.0 does
    not know (JPEG XL, a private one), data sets of private elements only, and Pixel
    Data whose header the file ends in."""
    item = Dataset()
    item.add_new(Tag(0x0009, 0x1002), "LO", "x")
    private_sequence = Dataset()
    private_sequence.add_new(Tag(0x0009, 0x1001), "SQ", [item])
    un_sequence = Dataset()
    un_sequence.add_new(Tag(0x0029, 0x1010), "UN", b"\x02\x00\x10\x00\x04\x00\x00\x00abcd")
    image = to_bytes(make_image(40, 40, bits_stored=12))
    pixel_data = image.find(b"\xe0\x7f\x10\x00")
    return {
        "jpeg-xl-syntax": with_syntax(make_image(40, 40), "1.2.840.10008.1.2.4.110"),
        "private-syntax": with_syntax(make_image(40, 40), "1.2.840.113619.5.2"),
        "private-sequence-only": private_part10(private_sequence),
        "un-sequence-only": private_part10(un_sequence),
        "cut-in-pixel-data-header": image[: pixel_data + 6],
    }


def test_an_estimate_over_every_broken_and_odd_object_completes(tmp_path: Path) -> None:
    """`dcmpress estimate` decides what an object is as the worker does
    (worker.codec.parse): no object ends the run, and each header's kind agrees with
    the engine's outcome of the object."""
    from dcmpress.estimate import (
        NOT_AN_INSTANCE,
        NOT_DICOM,
        UNREADABLE,
        LocalSource,
        Plan,
        read_header,
        run_estimate,
    )
    from producer.sources import KeyFilter

    files: dict[str, bytes] = {}
    for base in sorted(BASES):
        for mutation in sorted(MUTATIONS):
            ds = copy.deepcopy(BASES[base]())
            MUTATIONS[mutation](ds)
            data = _serialised(ds)
            assert data is not None
            files[f"{base}/{mutation}.dcm"] = data
    files |= {f"odd/{name}.dcm": data for name, data in _odd_objects().items()}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    source = LocalSource([tmp_path], KeyFilter())
    everything = len(files)
    plan = Plan(sample=everything, headers=everything, processes=1)
    population, headers, samples = run_estimate(source, CompressionOptions(), None, plan)
    assert population.objects == everything
    assert len(headers) == len(samples) == everything
    outcomes = {sample.key: sample.code for sample in samples}
    assert "internal_error" not in outcomes.values()
    for header in headers:
        code = outcomes[header.key]
        assert (header.kind == NOT_DICOM) == (code == "not_dicom"), (header, code)
        if header.kind == NOT_AN_INSTANCE:
            assert code == "not_an_instance", (header, code)
        if header.kind == UNREADABLE:
            assert code in ("invalid_dicom", "invalid_pixel_data"), (header, code)
            assert not header.note.startswith("internal error"), header
    # the objects of the issue, one by one, as the header phase reads them
    entries = {entry.key: entry for entry in source.entries()}
    odd = {name: read_header(source, entries[str(tmp_path / f"odd/{name}.dcm")], None)
           for name in _odd_objects()}  # fmt: skip
    assert odd["jpeg-xl-syntax"].kind == "CT compressed"  # JPEG XL: encapsulated pixels
    assert odd["private-syntax"].kind == "CT"  # an unknown encoding (the engine copies it)
    assert odd["private-sequence-only"].kind == odd["un-sequence-only"].kind == NOT_AN_INSTANCE
    assert outcomes[str(tmp_path / "odd/cut-in-pixel-data-header.dcm")] == "invalid_pixel_data"


SINGLE_TARGETS = [target[0] for target in TARGETS if len(target) == 1] + ["htj2k-rpcl"]


def _cut_in_pixel_data_header(into: int) -> bytes:
    image = to_bytes(make_image(40, 40, bits_stored=12))
    return image[: image.find(b"\xe0\x7f\x10\x00") + into]


def _frames_declared(value: object, frames: int = 3) -> bytes:
    ds = make_image(40, 40, frames=frames, bits_stored=12)
    ds.NumberOfFrames = value
    data = _serialised(ds)
    assert data is not None
    return data


@pytest.mark.parametrize(
    "data",
    [
        _frames_declared(0),  # pydicom reads 0 as 1, then returns all 3 frames
        _frames_declared(2),
        _frames_declared(0, frames=1),
        *(_cut_in_pixel_data_header(into) for into in (1, 2, 4, 6, 8, 10)),
    ],
    ids=["frames-0-of-3", "frames-2-of-3", "frames-0-of-1",
         *(f"cut-{into}-into-pixel-data" for into in (1, 2, 4, 6, 8, 10))],
)  # fmt: skip
def test_damaged_pixel_data_is_invalid_pixel_data_under_every_target(data: bytes) -> None:
    """Not image_too_small under one target and encoder_rejected under another, nor
    no_pixel_data for Pixel Data that is there but cut short: the code says what is
    wrong with the object, and the object is copied unchanged."""
    for target in SINGLE_TARGETS:
        result = run(data, target=[target])
        assert (result.state, result.code) == ("failed", "invalid_pixel_data"), (
            target, result.message)  # fmt: skip
        assert result.copied and result.message.endswith("copied unchanged")


@pytest.mark.parametrize("declared", [0, 2], ids=["frames-0-of-3", "frames-2-of-3"])
def test_frame_counts_are_refused_alike_on_the_frame_path(declared: int, deferred: None) -> None:
    """Read from a file frame group by frame group (worker/codec/frames.py), the same
    object gets the same code and message as from bytes."""
    data = _frames_declared(declared)
    whole = run(data, target=["jpeg-ls"])
    with tempfile.TemporaryFile() as file:
        file.write(data)
        framed = process(file, CompressionOptions(target=["jpeg-ls"]), frames_above=1)
    assert (framed.state, framed.code, framed.message) == (
        "failed", "invalid_pixel_data", whole.message)  # fmt: skip
