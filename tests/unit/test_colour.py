"""Photometric Interpretation of colour outputs: what the codestream holds, what the IOD
allows (PS3.5 8.2.4; PS3.3 C.7.6.3.1.2, C.8.5.6.1.2, C.8.5.6.1.16, C.8.12.4.1.5)."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.encaps import generate_frames

from dcmpress.stack.samples import make_image
from tests.support import assert_lossless, read, run, source_pixels
from tests.synthetic import WHOLE_SLIDE_STORAGE, ultrasound
from worker.codec.plugins.j2k import Coding, coding

OPHTHALMIC_16_BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.2"

# SOC, SIZ (length 41: 2 + 36 + 3 bytes for one component), COD, SOT
_SIZ = b"\xff\x51" + (41).to_bytes(2, "big") + bytes(39)


def _codestream(mct: int, wavelet: int) -> bytes:
    cod = b"\xff\x52\x00\x0c" + bytes([0, 0, 0, 1, mct, 5, 4, 4, 0, wavelet])
    return b"\xff\x4f" + _SIZ + cod + b"\xff\x90\x00\x0a" + bytes(8)


@pytest.mark.parametrize(
    ("mct", "wavelet", "transform"),
    [(1, 1, "YBR_RCT"), (1, 0, "YBR_ICT"), (0, 1, ""), (0, 0, "")],
)
def test_the_cod_marker_says_which_colour_transform(mct: int, wavelet: int, transform: str) -> None:
    found = coding(_codestream(mct, wavelet))
    assert found == Coding(mct=bool(mct), reversible=bool(wavelet))
    assert found.transform == transform


def test_a_codestream_without_cod_is_refused() -> None:
    with pytest.raises(ValueError, match="no COD"):
        coding(b"\xff\x4f" + _SIZ + b"\xff\x90\x00\x0a" + bytes(8))


@pytest.mark.parametrize("target", ["j2k", "j2k-lossy", "htj2k"])
def test_ybr_full_of_a_general_iod_is_coded_as_it_is(target: str) -> None:
    # Secondary Capture: the Image Pixel module allows YBR_FULL under JPEG 2000 without
    # a colour transform (PS3.5 Table 8.2.4-1), and the samples stay exact
    # (HTJ2K's is refused by default as OHIF's loader shows it wrong: written when asked)
    ds = make_image(40, 48, bits_allocated=8, samples=3, photometric="YBR_FULL", seed=3)
    viewer_safe = not target.startswith("htj2k")
    result = run(ds, target=[target], min_ratio=0, min_psnr=0, viewer_safe=viewer_safe)
    assert result.state == "done", result.message
    out = read(result.output or b"")
    assert out.PhotometricInterpretation == "YBR_FULL"
    frame = next(generate_frames(out.PixelData, number_of_frames=1))
    assert coding(frame).transform == ""
    if target != "j2k-lossy":
        assert_lossless(result, source_pixels(ds))


@pytest.mark.parametrize("target", ["jpeg-ls", "j2k", "rle", "htj2k"])
def test_ybr_full_is_never_written_where_the_iod_has_no_ybr_full(target: str) -> None:
    # VL Whole Slide Microscopy: RGB, YBR_FULL_422, YBR_ICT, YBR_RCT only (C.8.12.4.1.5)
    ds = make_image(64, 64, bits_allocated=8, samples=3, photometric="YBR_FULL",
                    sop_class=WHOLE_SLIDE_STORAGE)  # fmt: skip
    result = run(ds, target=[target], min_ratio=0)
    assert (result.state, result.code) == ("skipped", "unsupported_photometric")


def test_a_us_ybr_full_422_source_goes_to_rle_with_planar_configuration_1() -> None:
    # US: YBR_FULL under RLE only (C.8.5.6.1.2), and then color-by-plane (C.8.5.6.1.16)
    ds = ultrasound("YBR_FULL_422")
    result = run(ds, target=["j2k", "jpeg-ls", "rle"], min_ratio=0)
    out = assert_lossless(result, source_pixels(ds))
    assert result.target == "rle"
    assert (out.PhotometricInterpretation, out.PlanarConfiguration) == ("YBR_FULL", 1)


@pytest.mark.parametrize(
    ("image", "target", "fallback"),
    [
        ({"bits_allocated": 16, "samples": 3}, "rle", "jpeg-ls"),
        ({"bits_allocated": 8, "samples": 3, "photometric": "YBR_FULL"}, "htj2k", "j2k"),
        ({"bits_allocated": 16, "samples": 3}, "htj2k", "jpeg-ls"),
        ({"bits_allocated": 8, "signed": True}, "rle", "jpeg-ls"),
        ({"bits_allocated": 8, "signed": True}, "j2k", "jpegxl"),
        (
            {"bits_allocated": 16, "samples": 3, "sop_class": OPHTHALMIC_16_BIT},
            "j2k",
            "jpeg-ls",
        ),
    ],
)
def test_outputs_the_viewer_shows_wrong_go_to_the_next_target(
    image: dict[str, Any], target: str, fallback: str
) -> None:
    ds = make_image(48, 48, seed=4, **image)
    alone = run(ds, target=[target], min_ratio=0)
    assert (alone.state, alone.code, alone.copy_source) == ("skipped", "viewer_unsafe", True)
    assert "OHIF" in alone.message and "viewer_safe false" in alone.message
    result = run(ds, target=[target, fallback], min_ratio=0)
    assert_lossless(result, source_pixels(ds))
    assert result.target == fallback
    auto = run(ds, target=["auto"], auto_candidates=[target, fallback], min_ratio=0)
    assert auto.target == fallback
    forced = run(ds, target=[target], min_ratio=0, viewer_safe=False)
    assert_lossless(forced, source_pixels(ds))
    assert forced.target == target


@pytest.mark.parametrize("target", ["j2k", "j2k-lossy", "htj2k"])
def test_16_bit_rgb_stays_rgb_without_a_colour_transform(target: str) -> None:
    """OHIF's loader turns YBR_RCT / YBR_ICT into 8-bit samples: 16-bit colour is
    written RGB, no MCT, in every JPEG 2000 syntax; 8-bit RGB keeps the transform.
    (HTJ2K colour without the transform is refused by default: the loader scrambles it.)"""
    for bits, transform in ((16, ""), (8, "YBR_ICT" if target == "j2k-lossy" else "YBR_RCT")):
        ds = make_image(48, 48, bits_allocated=bits, samples=3, seed=5)
        result = run(ds, target=[target], min_ratio=0, min_psnr=0, viewer_safe=False)
        assert result.state == "done", result.message
        out = read(result.output or b"")
        frame = next(generate_frames(out.PixelData, number_of_frames=1))
        assert coding(frame).transform == transform
        assert out.PhotometricInterpretation == (transform or "RGB")
