"""JPEG XL Lossless target (worker/codec/plugins/jpegxl.py): pixel-identical through
imagecodecs' libjxl, the UID, encoder and decoder pydicom 3.0 lacks, valid Part 10
files, never a default."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
from pydicom import dcmread, examples
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import compress
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import UID, JPEGLSLossless

from dcmpress.stack.samples import make_image, to_bytes
from tests.support import LOSSLESS_CASES, assert_lossless, from_file, read, run, source_pixels
from tests.synthetic import with_syntax
from worker.codec.engine import Result, process
from worker.codec.options import CompressionOptions
from worker.codec.plugins.jpegxl import JPEG_XL_LOSSLESS
from worker.codec.targets import TARGETS, auto_candidates, plugin_status

IMAGES = LOSSLESS_CASES


CODESTREAM = b"\xff\x0a"
CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"


def image(kind: str) -> Dataset:
    return make_image(**{"rows": 48, "cols": 40, **IMAGES[kind]})


def codestreams(data: bytes) -> list[bytes]:
    out = read(data)
    count = int(out.get("NumberOfFrames", 1) or 1)
    return list(generate_frames(out.PixelData, number_of_frames=count))


@pytest.mark.parametrize("kind", IMAGES)
def test_every_image_kind_round_trips(kind: str) -> None:
    ds = image(kind)
    source = source_pixels(ds)
    result = run(ds, target=["jpegxl"], min_ratio=0)
    assert (result.target, result.plugin) == ("jpegxl", "imagecodecs")
    out = assert_lossless(result, source)  # decoded by libjxl through pydicom
    data = result.output or b""
    assert data[128:132] == b"DICM"
    assert out.file_meta.TransferSyntaxUID == JPEG_XL_LOSSLESS
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == ds.SOPInstanceUID
    assert out.PhotometricInterpretation == ds.PhotometricInterpretation  # RGB stays RGB
    assert out["PixelData"].VR == "OB" and out["PixelData"].is_undefined_length
    frames = codestreams(data)
    assert len(frames) == int(ds.get("NumberOfFrames", 1) or 1)
    # a bare codestream; above 12 bits a level 10 one, which ISO/IEC 18181-2 wants
    # announced by a Level box, so libjxl writes it in a container (signed samples are
    # coded as whole words of Bits Allocated bits)
    depth = int(ds.BitsAllocated if ds.PixelRepresentation else ds.BitsStored)
    level_10 = depth > 12
    assert all(frame.startswith(CONTAINER if level_10 else CODESTREAM) for frame in frames)


@pytest.mark.parametrize("bits_stored", [8, 12, 16])
def test_signed_pixels_are_coded_as_sign_extended_words(bits_stored: int) -> None:
    """JPEG XL has no sign: the decoded words must be the values for a reader that does
    not sign-extend from High Bit (a PACS, a viewer), so whole words are coded."""
    allocated = 8 if bits_stored == 8 else 16
    ds = make_image(32, 32, bits_allocated=allocated, bits_stored=bits_stored, signed=True)
    source = source_pixels(ds)
    assert source.min() < 0
    result = run(ds, target=["jpegxl"], min_ratio=0)
    assert_lossless(result, source)
    samples = imagecodecs.jpegxl_decode(codestreams(result.output or b"")[0])
    assert samples.dtype == np.dtype(f"u{allocated // 8}")
    np.testing.assert_array_equal(samples.view(f"i{allocated // 8}"), source)


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [
        ({"bits_allocated": 8, "samples": 3, "photometric": "YBR_FULL"}, "YBR_FULL"),
        ({"bits_allocated": 8, "photometric": "PALETTE COLOR"}, "PALETTE COLOR"),
        ({"bits_allocated": 8, "samples": 3, "signed": True}, "Pixel Representation 1"),
    ],
)
def test_what_table_8_2_15_1_does_not_define_is_refused(kwargs: dict[str, Any], what: str) -> None:
    result = run(make_image(40, 40, **kwargs), target=["jpegxl"])
    assert (result.state, result.code, result.copy_source) == ("skipped", "encoder_rejected", True)
    assert what in result.message
    if not kwargs.get("signed"):  # signed colour: no syntax takes it
        fallback = run(make_image(40, 40, **kwargs), target=["jpegxl", "rle"], min_ratio=0)
        assert (fallback.state, fallback.target) == ("done", "rle")


def test_more_than_16_bits_go_to_a_fallback() -> None:
    ds = make_image(40, 40, bits_allocated=32, bits_stored=20)
    result = run(ds, target=["jpegxl", "j2k"])
    assert (result.state, result.target) == ("done", "j2k")


@pytest.mark.parametrize("name", ["ct", "mr", "rgb_color"])
def test_pydicom_examples_round_trip(name: str) -> None:
    data = to_bytes(getattr(examples, name))
    result = run(data, target=["jpegxl"], min_ratio=0)
    assert_lossless(result, source_pixels(read(data)))


def test_the_effort_is_a_plugin_option() -> None:
    ds = make_image(96, 96, bits_stored=12)
    fast = run(ds, target=["jpegxl"], min_ratio=0)
    slower = run(ds, target=["jpegxl"], min_ratio=0, plugin_options={"jpegxl_effort": 3})
    assert_lossless(slower, source_pixels(ds))
    assert codestreams(fast.output or b"") != codestreams(slower.output or b"")


def test_pydicom_knows_the_uid_and_compresses_and_decodes_with_the_plugin() -> None:
    uid = UID("1.2.840.10008.1.2.4.110")
    assert uid.name == "JPEG XL Lossless" and uid.is_encapsulated and uid.is_little_endian
    assert "imagecodecs" in get_encoder(uid).available_plugins
    assert "imagecodecs" in get_decoder(uid).available_plugins
    ds = make_image(64, 64, bits_stored=12, signed=True, frames=2)
    expected = ds.pixel_array.copy()
    compress(ds, uid, encoding_plugin="imagecodecs")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    back = dcmread(io.BytesIO(buffer.getvalue()))
    assert back.file_meta.TransferSyntaxUID == uid
    np.testing.assert_array_equal(back.pixel_array, expected)


def test_jpeg_xl_sources_are_transcoded_when_asked() -> None:
    ds = make_image(48, 48, bits_stored=12, signed=True)
    source = source_pixels(ds)
    jxl = run(ds, target=["jpegxl"]).output or b""
    copied = run(jxl, target=["jpeg-ls"])
    assert (copied.state, copied.code) == ("skipped", "already_compressed")
    result = run(jxl, target=["jpeg-ls"], transcode=True)
    out = assert_lossless(result, source)
    assert out.file_meta.TransferSyntaxUID == JPEGLSLossless


def test_a_broken_jpeg_xl_source_is_invalid_pixel_data_under_transcode() -> None:
    ds = make_image(32, 32)
    ds.PixelData = encapsulate([b"\xff\x0a" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    result = run(with_syntax(ds, "1.2.840.10008.1.2.4.110"), target=["jpeg-ls"], transcode=True)
    assert (result.state, result.code) == ("failed", "invalid_pixel_data")


def test_jpeg_xl_is_never_chosen_unasked() -> None:
    assert CompressionOptions().target != ["jpegxl"]
    assert "jpegxl" not in [target.name for target in auto_candidates()]
    assert "jpegxl" not in [target.name for target in CompressionOptions(target="auto").targets()]
    target = TARGETS["jpegxl"]
    [plugin] = target.plugins
    assert plugin_status(target, plugin).available
    assert target.decoder() == "imagecodecs"


@pytest.mark.parametrize("kind", [{"bits_stored": 12}, {"bits_allocated": 8, "samples": 3}])
def test_large_multi_frame_files_get_the_same_bytes_group_by_group(
    kind: dict[str, Any], deferred: None
) -> None:
    ds = make_image(40, 48, frames=5, **kind)
    data = to_bytes(ds)
    options = CompressionOptions(target=["jpegxl"])
    whole = process(data, options)
    _, written = from_file(data, options)
    assert written == whole.output
    assert_lossless(Result("done", "compressed", "", len(data), output=written), source_pixels(ds))


def test_dcmtk_reads_the_file(tmp_path: Path) -> None:
    dcmdump = shutil.which("dcmdump")
    if dcmdump is None:
        pytest.skip("dcmdump is not installed (apt-get install dcmtk)")
    path = tmp_path / "jpegxl.dcm"
    result = run(make_image(40, 40, frames=2), target=["jpegxl"], min_ratio=0)
    path.write_bytes(result.output or b"")
    proc = subprocess.run([dcmdump, str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "1.2.840.10008.1.2.4.110" in proc.stdout and "PixelSequence #=3" in proc.stdout
