"""Every target x every plugin x the common kinds of image: correct, verified, valid."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from dcmpress.stack.samples import make_image, to_bytes
from tests.support import assert_lossless, independent_decode, read, run, source_pixels
from worker.codec.targets import TARGETS

PLUGINS = [(t.name, p.name) for t in TARGETS.values() for p in t.plugins]

IMAGES: dict[str, dict[str, Any]] = {
    "mono8": {"bits_allocated": 8},
    "mono12_in_16": {"bits_stored": 12},
    "mono16_unsigned": {"bits_stored": 16},
    "ct_signed_12": {"bits_stored": 12, "signed": True, "span": (-1024, 1800)},
    "ct_signed_16": {"bits_stored": 16, "signed": True, "span": (-1024, 3071)},
    "monochrome1": {"bits_stored": 10, "photometric": "MONOCHROME1"},
    "rgb_planar0": {"bits_allocated": 8, "samples": 3},
    "rgb_planar1": {"bits_allocated": 8, "samples": 3, "planar": 1},
    "ybr_full": {"bits_allocated": 8, "samples": 3, "photometric": "YBR_FULL"},
    "multiframe": {"bits_stored": 12, "frames": 3},
    "implicit_vr": {"bits_stored": 12, "syntax": ImplicitVRLittleEndian},
}


# (target, image) pairs PS3.5 8.2 defines no encoding of: refused before any codec
UNDEFINED = {("jpegxl", "ybr_full")}  # Table 8.2.15-1: YBR_FULL only for JPEG recompression


def image(kind: str):  # type: ignore[no-untyped-def]
    """Build the synthetic image called ``kind`` (CT-like spans stay off the limits)."""
    spec = dict(IMAGES[kind])
    span = spec.pop("span", None)
    ds = make_image(48, 40, **spec)
    if span is not None:
        arr = source_pixels(ds).astype(np.int64)
        low, high = span
        scaled = low + (arr - arr.min()) * (high - low) // max(1, int(np.ptp(arr)))
        ds.PixelData = scaled.astype(np.int16).tobytes()
    return ds


@pytest.mark.parametrize("kind", IMAGES)
@pytest.mark.parametrize(("target", "plugin"), PLUGINS)
def test_every_target_and_plugin_round_trips(target: str, plugin: str, kind: str) -> None:
    ds = image(kind)
    source = source_pixels(ds)
    # the quality guard off: noise at the default ratio is what it refuses (tested apart);
    # so are the outputs OHIF's loader shows wrong (tests/unit/test_colour.py)
    result = run(
        ds, target=[target], encoding_plugin=[plugin], min_ratio=0, min_psnr=0, viewer_safe=False
    )
    spec = TARGETS[target]
    if (target, kind) in UNDEFINED:
        assert (result.state, result.code) == ("skipped", "encoder_rejected"), result.message
        return
    assert result.state == "done", (result.code, result.message)
    assert result.plugin == plugin
    out = read(result.output or b"")
    # valid Part 10: preamble + DICM, file meta agrees with the dataset
    assert (result.output or b"")[128:132] == b"DICM"
    assert out.file_meta.TransferSyntaxUID == spec.uid
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPClassUID == out.SOPClassUID
    # every JPEG 2000 syntax codes RGB with the colour transform, which says YBR_RCT
    # (reversible) or YBR_ICT (irreversible, JPEG 2000 lossy) (PS3.5 8.2.4)
    transform = {"j2k-lossy": "YBR_ICT", "j2k": "YBR_RCT", "htj2k": "YBR_RCT"}.get(
        target.replace("-rpcl", ""), ""
    )
    rgb = ds.PhotometricInterpretation == "RGB"
    assert out.PhotometricInterpretation == (
        transform if rgb and transform else ds.PhotometricInterpretation
    )
    if not spec.lossy:
        assert_lossless(result, source)
        assert out.SOPInstanceUID == ds.SOPInstanceUID
        assert "LossyImageCompression" not in out
        return
    decoded = independent_decode(result.output or b"", plugin).astype(np.int64)
    error = int(np.abs(decoded - source.astype(np.int64)).max())
    if target == "jpeg-ls-near":
        assert error <= 2  # the default jls_error
        assert result.max_error == error
    else:
        assert result.psnr is not None and result.psnr > 10  # recorded; quality is j2k_cr's
    assert out.SOPInstanceUID != ds.SOPInstanceUID
    assert out.ImageType[0] == "DERIVED"
    assert out.LossyImageCompression == "01"
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID


def test_bits_stored_and_sign_survive_lossless_round_trip() -> None:
    ds = image("ct_signed_12")
    result = run(ds, target=["jpeg-ls"])
    out = assert_lossless(result, source_pixels(ds))
    assert (out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation) == (
        16,
        12,
        11,
        1,
    )


def test_ratio_and_sizes_are_reported() -> None:
    ds = image("mono12_in_16")
    data = to_bytes(ds)
    result = run(data, target=["jpeg-ls"])
    assert result.bytes_in == len(data)
    assert result.bytes_out == len(result.output or b"")
    assert result.ratio == pytest.approx(len(data) / result.bytes_out, rel=1e-3)
    assert result.ratio and result.ratio > 1.2
    assert set(result.timings) >= {"parse", "decode", "encode", "verify", "serialize"}


@pytest.mark.parametrize("name", ["j2k", "j2k-lossy"])
def test_jpeg_2000_is_verified_by_a_decoder_on_one_thread(name: str) -> None:
    """python-gdcm decodes JPEG 2000 on a thread per CPU: faster in a lone process, but
    1.2x the CPU per image and slower once every core runs a worker process. OpenJPEG
    through pylibjpeg decodes on the calling thread; GDCM stays the fallback (and the
    independent decoder of these tests)."""
    target = TARGETS[name]
    assert target.decoders[0] == "pylibjpeg"
    assert target.decoder() == "pylibjpeg"
