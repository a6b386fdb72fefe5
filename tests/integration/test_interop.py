"""Interoperability: what dcmpress writes, DCMTK and GDCM read back exactly.

Every lossless output of a synthesized set is decoded by other toolkits - `gdcmconv
--raw` (GDCM), `dcmdjpls` / `dcmdrle` (DCMTK), pydicom - and its pixels (read raw: no
colour conversion hides a wrong Photometric Interpretation) and overlay planes
compared with the source. Outputs go through `dciodvfy` (dicom3tools) beside their
sources: an output may not show an error its source did not have. `.ci/run` installs
the three packages; without them these tests skip with a message.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread, examples
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.overlays.numpy_handler import get_overlay_array
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
)

from dcmpress.stack.samples import make_image, to_bytes
from tests.support import run, source_pixels
from tests.synthetic import (
    enhanced_ct,
    enhanced_mr,
    mr_with_embedded_overlays,
    ultrasound,
    whole_slide,
)
from worker.codec.plugins.htj2k import HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL
from worker.codec.plugins.j2k import coding
from worker.codec.plugins.jpegxl import JPEG_XL_LOSSLESS
from worker.codec.targets import TARGETS

pytestmark = pytest.mark.integration


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install dcmtk libgdcm-tools dicom3tools)")
    return path


def _overlay_mr() -> Dataset:
    return mr_with_embedded_overlays((12, 13, 14, 15))[0]


def _overlay_bit_15_multiframe() -> Dataset:
    return mr_with_embedded_overlays((15,), frames=3)[0]


def _single_string_image_type() -> Dataset:
    ds = make_image(64, 64, bits_stored=12, seed=4)
    ds.ImageType = "ORIGINAL PRIMARY"
    return ds


SOURCES: dict[str, Callable[[], Dataset]] = {
    "ct-12-signed": lambda: make_image(64, 64, bits_stored=12, signed=True),
    "cr-14": lambda: make_image(80, 72, bits_stored=14, seed=1),
    "mono-16-full": lambda: make_image(48, 48, bits_stored=16, seed=2),
    "mono-8": lambda: make_image(40, 44, bits_allocated=8, seed=3),
    "odd-size": lambda: make_image(33, 35, bits_stored=12, seed=5),
    "rgb": lambda: make_image(40, 48, bits_allocated=8, samples=3, seed=6),
    "rgb-planar-1": lambda: make_image(40, 48, bits_allocated=8, samples=3, planar=1, seed=7),
    "multiframe": lambda: make_image(40, 40, frames=4, bits_stored=12, seed=8),
    "big-endian": lambda: make_image(40, 40, bits_stored=12, syntax=ExplicitVRBigEndian),
    "implicit": lambda: make_image(40, 40, bits_stored=10, syntax=ImplicitVRLittleEndian),
    "overlays-12-15": _overlay_mr,
    "overlay-15-multiframe": _overlay_bit_15_multiframe,
    "example-ct": lambda: examples.ct,
    "example-mr": lambda: examples.mr,
    "example-rgb": lambda: examples.rgb_color,
    "example-overlay": lambda: examples.overlay,  # separate Overlay Data, kept as is
    "us-rgb": lambda: ultrasound("RGB"),
    "us-ybr-full-422": lambda: ultrasound("YBR_FULL_422"),
    "enhanced-mr": lambda: enhanced_mr(frames=3),
}
LOSSLESS = ("jpeg-ls", "rle", "j2k")
DCMTK_DECODER = {"jpeg-ls": "dcmdjpls", "rle": "dcmdrle"}
# GDCM 3.0 and DCMTK decode neither HTJ2K nor JPEG XL: pydicom alone reads those back
ALL_LOSSLESS = (*LOSSLESS, "htj2k", "jpegxl")


def _native_pixels(path: Path) -> tuple[np.ndarray, Dataset]:
    ds = dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, raw=True)
    return arr, ds


def _expected_overlays(ds: Dataset) -> dict[int, np.ndarray]:
    """The overlay planes of the source, taken from its stored words independently."""
    planes: dict[int, np.ndarray] = {}
    if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:
        return planes
    for group in range(0x6000, 0x6020, 2):
        if (group, 0x0102) in ds and (group, 0x3000) not in ds:
            bit = int(ds[group, 0x0102].value)
            words = np.frombuffer(ds.PixelData, "<u2").reshape(-1, int(ds.Rows), int(ds.Columns))
            planes[group] = ((words >> bit) & 1).astype(bool)
    return planes


# free DCMTK has no JPEG 2000 decoder: GDCM decodes three targets, DCMTK two of them,
# pydicom (its default plugin for each syntax, raw) every one
DECODERS = (
    [("gdcm", target) for target in LOSSLESS]
    + [("dcmtk", t) for t in DCMTK_DECODER]
    + [("pydicom", t) for t in ALL_LOSSLESS]
)


@pytest.mark.parametrize("name", sorted(SOURCES))
@pytest.mark.parametrize(("toolkit", "target"), DECODERS, ids=[f"{k}-{t}" for k, t in DECODERS])
def test_lossless_outputs_decode_identically_in_other_toolkits(
    name: str, target: str, toolkit: str, tmp_path: Path
) -> None:
    tool = {"gdcm": "gdcmconv", "pydicom": ""}.get(toolkit, DCMTK_DECODER.get(target, ""))
    tool = _tool(tool) if tool else ""
    ds = SOURCES[name]()
    source = source_pixels(ds)
    result = run(ds, target=[target], min_ratio=0)
    if result.state != "done":  # e.g. J2K refuses sides under 32 px: nothing written
        assert result.state == "skipped" and result.output is None, result.message
        return
    written = tmp_path / "out.dcm"
    written.write_bytes(result.output or b"")
    if toolkit == "pydicom":
        decoded, decoded_ds = _native_pixels(written)  # the syntax's default plugin, raw
    else:
        decoded_path = tmp_path / "decoded.dcm"
        args = [tool, "--raw", str(written), str(decoded_path)] if toolkit == "gdcm" else [
            tool, str(written), str(decoded_path)
        ]  # fmt: skip
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        decoded, decoded_ds = _native_pixels(decoded_path)
        assert not decoded_ds.file_meta.TransferSyntaxUID.is_encapsulated
    np.testing.assert_array_equal(decoded.reshape(source.shape), source)
    for group, planes in _expected_overlays(ds).items():
        if toolkit == "gdcm" and len(planes) > 1:
            # GDCM 3.0 rewrites only the first frame of a multi-frame overlay (its
            # Overlay class is single-frame); DCMTK's decode checks every frame
            planes = planes[:1]
            decoded_ds[group, 0x0015].value = 1
        plane = np.asarray(get_overlay_array(decoded_ds, group), bool)
        np.testing.assert_array_equal(plane.reshape(planes.shape), planes)


LOSSY_SOURCES: dict[str, Callable[[], Dataset]] = {
    "example-ct": lambda: examples.ct,
    "example-mr": lambda: examples.mr,
    "single-string-image-type": _single_string_image_type,
    "multiframe": lambda: make_image(40, 40, frames=3, bits_stored=12, seed=8),
    "rgb": lambda: make_image(64, 64, bits_allocated=8, samples=3, seed=6),
    "overlays-12-15": _overlay_mr,
    "enhanced-ct": lambda: enhanced_ct(frames=3),
    "whole-slide": lambda: whole_slide(frames=4),
}


# Attributes whose "Unrecognized enumerated value <X>" keeps its value: a source's error
# for YBR_FULL_422 must not hide an output's for YBR_FULL
_COLOUR_ATTRIBUTES = ("<Photometric Interpretation>", "<Planar Configuration>")


def _dciodvfy_errors(tool: str, path: Path) -> set[str]:
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    # "Unrecognized enumerated value <X> for ..." names the value, which may change
    return {
        line if any(name in line for name in _COLOUR_ATTRIBUTES)
        else re.sub(r"value <[^>]*>", "value <...>", line)
        for line in lines
        if "Error" in line
    }  # fmt: skip


# dciodvfy reports every MR Pulse Sequence attribute of a DERIVED Enhanced MR image as
# "present when condition unsatisfied (which may not be present otherwise)"; PS3.3
# C.8.13.4 (Table C.8-87) says of each "Required if Image Type Value 1 is ORIGINAL or
# MIXED. May be present otherwise." (or "Otherwise may be present if ... DERIVED and",
# conditions these sources meet), and A.36-2 the same of the module: the validator's
# older reading, not the standard's.
_NOT_IN_STANDARD = re.compile(
    r"Attribute present when condition unsatisfied \(which may not be present otherwise\)"
    r" Type 1C Conditional Element=<\w+> Module=<MRPulseSequence>"
)
# dciodvfy (2022) knows neither HTJ2K nor JPEG XL and cannot read their files: it checks
# them under the syntax whose colour rules they share (PS3.3 C.8.5.6.1.2: reversible JPEG
# 2000 - YBR_RCT; lossless without a colour transform - RGB)
_VALIDATED_AS = {
    HTJ2K_LOSSLESS: JPEG2000Lossless,
    HTJ2K_LOSSLESS_RPCL: JPEG2000Lossless,
    JPEG_XL_LOSSLESS: JPEGLSLossless,
}
COLOUR_AND_MR_SOURCES = ("us-rgb", "us-ybr-full-422", "enhanced-mr")


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("name", COLOUR_AND_MR_SOURCES)
def test_colour_and_enhanced_mr_outputs_add_no_dciodvfy_error(
    name: str, target: str, tmp_path: Path
) -> None:
    tool = _tool("dciodvfy")
    ds = SOURCES[name]()
    source_path = tmp_path / "source.dcm"
    source_path.write_bytes(to_bytes(ds))
    result = run(ds, target=[target], min_ratio=0)
    if name == "us-ybr-full-422" and target != "rle":
        # YBR_FULL is allowed in US under RLE only (PS3.3 C.8.5.6.1.2, C.8.5.6.1.16) and
        # does not become RGB without loss: nothing is written
        assert (result.state, result.code) == ("skipped", "unsupported_photometric")
        assert result.output is None
        return
    assert result.state == "done", result.message
    output = dcmread(io.BytesIO(result.output or b""))
    syntax = output.file_meta.TransferSyntaxUID
    if syntax in _VALIDATED_AS:
        output.file_meta.TransferSyntaxUID = _VALIDATED_AS[syntax]
    output_path = tmp_path / "output.dcm"
    output.save_as(output_path, enforce_file_format=True)
    new = _dciodvfy_errors(tool, output_path) - _dciodvfy_errors(tool, source_path)
    if str(output.ImageType[0]) == "DERIVED":
        new = {line for line in new if not _NOT_IN_STANDARD.search(line)}
    assert new == set()


@pytest.mark.parametrize(
    ("target", "photometric"),
    [("j2k", "YBR_RCT"), ("j2k-lossy", "YBR_ICT"), ("htj2k", "YBR_RCT"), ("jpeg-ls", "RGB"),
     ("rle", "RGB"), ("jpegxl", "RGB")],
)  # fmt: skip
def test_rgb_photometric_interpretation_follows_the_codestream(
    target: str, photometric: str
) -> None:
    # PS3.5 8.2.4: with the multiple component transform the result says YBR_RCT
    # (reversible) or YBR_ICT (irreversible), which the codestream's COD must show
    result = run(SOURCES["us-rgb"](), target=[target], min_ratio=0)
    assert result.state == "done", result.message
    out = dcmread(io.BytesIO(result.output or b""))
    assert (out.PhotometricInterpretation, out.PlanarConfiguration) == (photometric, 0)
    if target.startswith(("j2k", "htj2k")):
        for frame in generate_frames(out.PixelData, number_of_frames=1):
            assert coding(frame).transform == photometric


@pytest.mark.parametrize("target", ["jpeg-ls-near", "j2k-lossy"])
@pytest.mark.parametrize("name", sorted(LOSSY_SOURCES))
def test_lossy_outputs_add_no_dciodvfy_error(name: str, target: str, tmp_path: Path) -> None:
    tool = _tool("dciodvfy")
    ds = LOSSY_SOURCES[name]()
    source_path = tmp_path / "source.dcm"
    source_path.write_bytes(to_bytes(ds))
    result = run(ds, target=[target])
    assert result.state == "done", result.message
    output_path = tmp_path / "output.dcm"
    output_path.write_bytes(result.output or b"")
    new = _dciodvfy_errors(tool, output_path) - _dciodvfy_errors(tool, source_path)
    assert new == set()
