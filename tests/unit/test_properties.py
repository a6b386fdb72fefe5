"""Property: over the Image Pixel module's attribute space, a lossless target returns the
source pixels bit for bit, or refuses the image with the specific code the docs name.

Each example draws Rows, Columns, Number of Frames (present or absent), Samples per
Pixel with a fitting Photometric Interpretation, Planar Configuration, Bits Allocated,
Bits Stored, High Bit, Pixel Representation, a native transfer syntax and pixel values
over the whole stored range (extremes included), sometimes with bits set above High
Bit. The expected outcome comes from the docs' rules ("Inputs that are not simple",
"Bits above High Bit and embedded overlays", "Outcome codes") and the encoding profiles
of PS3.5 8.2, not from the engine; the pixels are decoded by another library than the
engine's verifier (tests/support.py).

CI runs a fixed, derandomized set of examples; for a search for new failures run
``HYPOTHESIS_PROFILE=thorough python -m pytest tests/unit/test_properties.py``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from dcmpress.stack.samples import make_image, pattern
from tests import docs
from tests.support import assert_lossless, read, run, source_pixels
from worker.codec.engine import Result
from worker.codec.targets import TARGETS

T = TypeVar("T")
Values = npt.NDArray[np.int64]

settings.register_profile(
    "dcmpress-fast",
    max_examples=250,
    derandomize=True,  # the same examples on every run: CI stays deterministic
    deadline=None,  # J2K and a forked GDCM take variable time per example
    database=None,  # nothing written into the work tree
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    settings.get_profile("dcmpress-fast"),
    max_examples=2000,
    derandomize=False,
)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "dcmpress-fast"))

# code -> state, from the docs' "Outcome codes" table
OUTCOME_CODES = docs.section("Outcome codes")
DOCUMENTED = dict(re.findall(r"^\| `([a-z_]+)` \| (done|skipped|failed) \|", OUTCOME_CODES, re.M))

PHOTOMETRICS = {1: ("MONOCHROME2", "MONOCHROME1", "PALETTE COLOR"), 3: ("RGB", "YBR_FULL")}
SYNTAX_UIDS = {"jpeg-ls": JPEGLSLossless, "j2k": JPEG2000Lossless, "rle": RLELossless}


# PS3.5 Tables 8.2.2-1 (RLE), 8.2.3-1 (JPEG-LS) and 8.2.4-1 (JPEG 2000): per Photometric
# Interpretation, the Bits Allocated and Bits Stored a syntax may hold. Colour and
# palette indices are unsigned only. pydicom's encoders refuse anything else
# (``encoder_rejected``, the message naming the attributes).
Profile = dict[str, tuple[frozenset[int], range]]
SIGNED_PHOTOMETRICS = frozenset({"MONOCHROME1", "MONOCHROME2"})


def _profile(
    bits_allocated: set[int], bits_stored: range, ybr_full: tuple[set[int], range]
) -> Profile:
    usual = (frozenset(bits_allocated), bits_stored)
    profile = dict.fromkeys(("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB"), usual)
    profile["YBR_FULL"] = (frozenset(ybr_full[0]), ybr_full[1])
    return profile


@dataclass(frozen=True)
class Limits:
    """What a lossless target can take: the docs' limits, then the PS3.5 profile."""

    bits_allocated: frozenset[int]  # after Bits Allocated 32 / Stored <= 16 moves to 16
    max_bits_stored: int
    profile: Profile
    min_side: int = 1  # "J2K with a side < 32 px: image_too_small"
    # "Tiny images under JPEG-LS: pyjpegls may refuse them: image_too_small"
    may_refuse_below_pixels: int = 0
    # "j2k: Bits Stored 1 ... unsupported_bits_stored" (openjpeg's 1-bit coding does not
    # always decode back: refused, so that a later target takes the image)
    min_bits_stored: int = 1


J2K_PROFILE = _profile({8, 16, 32}, range(1, 39), ({8, 16, 32}, range(1, 39)))
J2K_PROFILE["PALETTE COLOR"] = (frozenset({8, 16}), range(1, 17))
LIMITS = {
    "jpeg-ls": Limits(
        frozenset({8, 16}),
        16,
        _profile({8, 16}, range(2, 17), ({8}, range(2, 9))),
        may_refuse_below_pixels=256,
    ),
    "j2k": Limits(frozenset({8, 16, 32}), 24, J2K_PROFILE, min_side=32, min_bits_stored=2),
    "rle": Limits(frozenset({8, 16}), 32, _profile({8, 16}, range(1, 17), ({8}, range(1, 9)))),
}


@dataclass(frozen=True)
class Image:
    """A drawn Image Pixel module: attributes, pixel values and the words storing them."""

    rows: int
    columns: int
    frames: int
    number_of_frames_present: bool
    samples: int
    photometric: str
    planar: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    signed: bool
    syntax: UID
    values: Values  # (frames, rows, columns, samples), each within the Bits Stored range
    words: Values  # the same, as stored: sign-extended or not, perhaps with stray high bits

    @property
    def stray(self) -> npt.NDArray[np.bool_]:
        """Samples whose word is neither encoding of its value in Bits Stored bits.

        A value is stored either in its low Bits Stored bits or, when signed,
        sign-extended over Bits Allocated (PS3.5 8.1.1); anything else above is stray.
        """
        in_stored = self.values % (1 << self.bits_stored)
        in_allocated = self.values % (1 << self.bits_allocated)
        stray: npt.NDArray[np.bool_] = (self.words != in_stored) & (self.words != in_allocated)
        return stray

    @property
    def stray_bits(self) -> list[int]:
        """The bits above Bits Stored - 1 set in stray words."""
        above = np.bitwise_or.reduce(self.words[self.stray] >> self.bits_stored, initial=0)
        return [
            self.bits_stored + bit for bit in range(int(above).bit_length()) if above >> bit & 1
        ]

    def expected_pixels(self) -> npt.NDArray[np.generic]:
        """The pixel values as pydicom arranges a decoded native image (raw=True)."""
        dtype = np.dtype(f"{'i' if self.signed else 'u'}{max(self.bits_allocated, 8) // 8}")
        pixels = self.values.astype(dtype)
        if self.samples == 1:
            pixels = pixels[..., 0]
        return pixels if self.frames > 1 else pixels[0]


def mostly(usual: T, *rare: T, odds: int = 3) -> st.SearchStrategy[T]:
    """``usual`` ``odds`` times as often as all of ``rare``; shrinks towards ``usual``."""
    return st.sampled_from([usual] * (odds * len(rare)) + list(rare))


@st.composite
def pixel_values(draw: st.DrawFn, shape: tuple[int, int, int, int], low: int, high: int) -> Values:
    """Values in ``low..high``: noise, a smooth pattern, constants or sparse ones,
    with the range's extremes at a few drawn places."""
    kind = draw(st.sampled_from(("noise", "constant", "pattern", "sparse")))
    if kind == "noise":
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        full_range = draw(mostly(True, False))
        first = low if full_range else draw(st.integers(low, high))
        last = high if full_range else draw(st.integers(first, high))
        values = rng.integers(first, last, size=shape, endpoint=True, dtype=np.int64)
    elif kind == "constant":
        value = draw(
            st.sampled_from(sorted({low, high, min(max(0, low), high)})) | st.integers(low, high)
        )
        values = np.full(shape, value, dtype=np.int64)
    elif kind == "pattern":
        frames, rows, columns, samples = shape
        smooth = pattern(rows, columns, frames, samples, seed=draw(st.integers(0, 1000)))
        values = np.minimum(low + (smooth * (high - low + 1)).astype(np.int64), high)
    else:
        values = draw(arrays(np.int64, shape, elements=st.integers(low, high)))
    flat = values.reshape(-1)
    positions = st.integers(0, flat.size - 1)
    for index, extreme in draw(
        st.lists(st.tuples(positions, st.sampled_from((low, high))), max_size=4)
    ):
        flat[index] = extreme
    return values


@st.composite
def images(draw: st.DrawFn) -> Image:
    """Any native image of the Image Pixel module a lossless target might be given."""
    bits_allocated = draw(st.sampled_from((16, 8, 16, 8, 32, 1)))  # 1: always refused
    samples = 1 if bits_allocated == 1 else draw(st.sampled_from((1, 3)))
    photometric = draw(
        st.sampled_from(
            [
                name
                for name in PHOTOMETRICS[samples]
                if name != "PALETTE COLOR" or bits_allocated in (8, 16)
            ]
        )
    )
    bits_stored = draw(st.integers(1, bits_allocated))
    high_bit = draw(mostly(bits_stored - 1, *range(bits_allocated), odds=9))
    # colour and palette indices are unsigned (PS3.5 8.2): a signed one is refused
    signed = draw(st.booleans() if photometric in SIGNED_PHOTOMETRICS else mostly(False, True))
    frames = draw(st.integers(1, 3))
    side = st.integers(1, 70) | st.integers(32, 70)  # J2K needs 32
    rows, columns = draw(side), draw(side)
    shape = (frames, rows, columns, samples)
    if signed:
        low, high = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    else:
        low, high = 0, (1 << bits_stored) - 1
    values = draw(pixel_values(shape, low, high))
    sign_extended = signed and draw(mostly(True, False))
    words = values % (1 << (bits_allocated if sign_extended else bits_stored))
    if bits_stored < bits_allocated and draw(mostly(False, True)):
        bits = draw(st.lists(st.integers(bits_stored, bits_allocated - 1), min_size=1, unique=True))
        mask = sum(1 << bit for bit in bits)
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        share = draw(st.sampled_from((1.0, 0.0, 0.5, 0.01)))  # 0.0: only the first word
        chosen = rng.random(shape) < share
        chosen.reshape(-1)[0] = True
        words = np.where(chosen, words | mask, words)
    return Image(
        rows=rows,
        columns=columns,
        frames=frames,
        number_of_frames_present=frames > 1 or draw(st.booleans()),
        samples=samples,
        photometric=photometric,
        planar=draw(st.sampled_from((0, 1))) if samples == 3 else 0,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        high_bit=high_bit,
        signed=signed,
        syntax=draw(mostly(ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)),
        values=values,
        words=words,
    )


def dataset(image: Image) -> Dataset:
    """The image as a dataset of samples.py's kind, with the drawn words as Pixel Data."""
    ds = make_image(
        image.rows,
        image.columns,
        frames=image.frames,
        bits_allocated=image.bits_allocated,
        bits_stored=image.bits_stored,
        signed=image.signed,
        samples=image.samples,
        photometric=image.photometric,
        planar=image.planar,
        syntax=image.syntax,
    )
    ds.HighBit = image.high_bit
    if image.number_of_frames_present:
        ds.NumberOfFrames = image.frames
    big_endian = image.syntax == ExplicitVRBigEndian
    if image.photometric == "PALETTE COLOR":
        for colour in TINTS:
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", palette(colour, big_endian))
    ds.PixelData = pixel_data(image)
    return ds


TINTS = {"Red": 0x0000, "Green": 0x0F0F, "Blue": 0xFFFF}  # one LUT per colour, all distinct


def palette(colour: str, big_endian: bool) -> bytes:
    """A 256-entry, 16-bit LUT in the file's byte order (OW)."""
    entries = (np.arange(256, dtype=np.uint16) * 257) ^ np.uint16(TINTS[colour])
    return entries.astype(">u2" if big_endian else "<u2").tobytes()


def pixel_data(image: Image) -> bytes:
    """The stored words as native Pixel Data: planar or interleaved, packed if 1-bit."""
    words = image.words
    if image.planar == 1:
        words = words.transpose(0, 3, 1, 2)  # frame, sample, row, column
    if image.bits_allocated == 1:
        data = np.packbits(words.reshape(-1).astype(np.uint8), bitorder="little").tobytes()
    else:
        order = ">" if image.syntax == ExplicitVRBigEndian else "<"
        data = words.astype(f"{order}u{image.bits_allocated // 8}").tobytes()
    return data + b"\0" * (len(data) % 2)


Outcome = tuple[str, str]  # (code, the target that compressed the image, or "")


def expected_outcomes(image: Image, targets: list[str], high_bits: str) -> set[Outcome]:
    """Every outcome the docs' rules allow, in the engine's order: High Bit, then
    ``high_bits``, then each target in turn (a refusal's code is the first target's)."""
    if image.high_bit != image.bits_stored - 1:
        return {("unsupported_high_bit", "")}
    if high_bits == "keep" and image.stray.any():
        return {("high_bits_set", "")}
    bits_allocated = image.bits_allocated
    if bits_allocated == 32 and image.bits_stored <= 16:
        bits_allocated = 16  # "values moved to a 16-bit container (exact), then any target"
    outcomes: set[Outcome] = set()
    for target in targets:
        limits = LIMITS[target]
        if bits_allocated not in limits.bits_allocated:
            refusal = "unsupported_bits_allocated"
        elif not limits.min_bits_stored <= image.bits_stored <= limits.max_bits_stored:
            refusal = "unsupported_bits_stored"
        elif target == "rle" and image.samples == 3 and bits_allocated > 8:
            refusal = "viewer_unsafe"  # OHIF's loader: 16-bit RLE of one sample only
        elif image.samples == 1 and image.signed and bits_allocated == 8 and target != "jpeg-ls":
            refusal = "viewer_unsafe"  # OHIF's loader: signed 8-bit RLE, JPEG 2000 wrong
        elif min(image.rows, image.columns) < limits.min_side:
            refusal = "image_too_small"
        elif not in_profile(limits.profile, image, bits_allocated):
            refusal = "encoder_rejected"
        else:
            outcomes.add(("compressed", target))
            if image.rows * image.columns < limits.may_refuse_below_pixels:
                refusal = "image_too_small"  # or compressed; else the next target
            else:
                return outcomes
        if target == targets[0]:
            outcomes.add((refusal, ""))
    return outcomes


def in_profile(profile: Profile, image: Image, bits_allocated: int) -> bool:
    """Whether the syntax's PS3.5 encoding profile allows the image's attributes."""
    allowed_allocated, allowed_stored = profile[image.photometric]
    if image.signed and image.photometric not in SIGNED_PHOTOMETRICS:
        return False
    return bits_allocated in allowed_allocated and image.bits_stored in allowed_stored


def assert_specific_refusal(result: Result) -> None:
    """A refusal names a code the docs document, in its state, never internal_error."""
    assert result.code != "internal_error", result.message
    assert result.state in ("skipped", "failed"), (result.state, result.code, result.message)
    assert result.code in DOCUMENTED, f"undocumented code {result.code!r}: {result.message}"
    assert DOCUMENTED[result.code] == result.state, (result.code, result.state)
    assert result.output is None


def assert_compressed_exactly(result: Result, image: Image, ds: Dataset, target: str) -> None:
    """Bit-identical pixels, decoded independently, and the Image Pixel attributes the
    docs' rules give the result."""
    expected = image.expected_pixels()
    np.testing.assert_array_equal(source_pixels(ds), expected, "the test built the wrong image")
    if target == "jpeg-ls" and image.bits_stored in GDCM_REFUSES_JPEG_LS_BITS_STORED:
        out = assert_lossless_by_charls(result, expected)
    else:
        out = assert_lossless(result, expected)
    assert out.file_meta.TransferSyntaxUID == SYNTAX_UIDS[target]
    assert out.SOPInstanceUID == ds.SOPInstanceUID  # lossless keeps the instance
    moved_to_16 = image.bits_allocated == 32 and image.bits_stored <= 16
    assert (out.Rows, out.Columns, out.SamplesPerPixel) == (
        image.rows,
        image.columns,
        image.samples,
    )
    assert int(out.get("NumberOfFrames", 1) or 1) == image.frames
    assert out.BitsAllocated == (16 if moved_to_16 else image.bits_allocated)
    assert (out.BitsStored, out.HighBit) == (image.bits_stored, image.bits_stored - 1)
    assert out.PixelRepresentation == int(image.signed)
    # RGB under the JPEG 2000 family goes through the reversible colour transform, and
    # says so (PS3.5 8.2.4); the decoded pixels are the source's RGB all the same
    # (of 8 bits: deeper RGB stays RGB, as OHIF's loader shows only that right)
    transformed = image.photometric == "RGB" and target in ("j2k", "htj2k")
    transformed = transformed and out.BitsAllocated == 8
    assert out.PhotometricInterpretation == ("YBR_RCT" if transformed else image.photometric)
    if image.samples == 3:
        assert out.PlanarConfiguration == 0  # "output says Planar Configuration 0"
    else:
        assert "PlanarConfiguration" not in out  # Type 1C: with 3 samples only
    if image.photometric == "PALETTE COLOR":
        for colour in TINTS:
            written = out[f"{colour}PaletteColorLookupTableData"].value
            assert written == palette(colour, big_endian=False), colour  # little endian now
    assert_high_bits_notice(result, image)


# pydicom's GDCM plugin refuses JPEG-LS of these precisions (a GDCM decoding bug), and
# CharLS, the engine's verifier, is the only other JPEG-LS decoder a unit test has.
GDCM_REFUSES_JPEG_LS_BITS_STORED = (6, 7)


def assert_lossless_by_charls(result: Result, expected: npt.NDArray[np.generic]) -> Dataset:
    """As ``assert_lossless``, decoding the written bytes with pyjpegls (CharLS)."""
    assert result.state == "done" and result.output is not None, (result.code, result.message)
    out = read(result.output)
    decoded, _ = get_decoder(JPEGLSLossless).as_array(out, raw=True, decoding_plugin="pyjpegls")
    assert decoded.shape == expected.shape and decoded.dtype.kind == expected.dtype.kind
    np.testing.assert_array_equal(decoded, expected)
    return out


def assert_high_bits_notice(result: Result, image: Image) -> None:
    """Cleared stray bits are counted in the record; no notice without them."""
    stray = int(np.count_nonzero(image.stray))
    if not stray:
        assert result.notices == [], result.notices
        return
    bits = image.stray_bits
    summary = (
        f"{stray:,} pixel{'s' if stray != 1 else ''} had bit{'s' if len(bits) != 1 else ''} "
        f"{', '.join(map(str, bits))} set above High Bit {image.high_bit} that no overlay declares"
    )
    assert len(result.notices) == 1, result.notices
    assert result.notices[0].startswith(summary), (result.notices, summary)
    assert "not kept" in result.notices[0]
    assert summary in result.message


CASES = [
    pytest.param(["jpeg-ls"], "", id="jpeg-ls"),
    pytest.param(["j2k"], "", id="j2k"),
    *(
        pytest.param(["rle"], plugin.name, id=f"rle-{plugin.name}")
        for plugin in TARGETS["rle"].plugins
    ),
    pytest.param(["j2k", "rle"], "", id="j2k-then-rle"),
]


@pytest.mark.parametrize(("targets", "plugin"), CASES)
@PROFILE
@given(image=images(), high_bits=st.sampled_from(("clear", "keep")))
def test_lossless_targets_keep_every_pixel_or_refuse_with_a_specific_code(
    targets: list[str], plugin: str, image: Image, high_bits: str
) -> None:
    ds = dataset(image)
    plugins = [plugin] if plugin else []
    result = run(ds, target=targets, encoding_plugin=plugins, min_ratio=0, high_bits=high_bits)
    event(f"{result.target or targets[0]}: {result.state}/{result.code}")
    expected = expected_outcomes(image, targets, high_bits)
    assert (result.code, result.target or "") in expected, (result.code, result.message, expected)
    if result.state == "done":
        assert_compressed_exactly(result, image, ds, result.target or "")
    else:
        assert_specific_refusal(result)
        assert result.copy_source == (result.state == "skipped")  # skipped: copied unchanged
