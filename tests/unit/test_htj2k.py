"""HTJ2K lossless targets (worker/codec/plugins/htj2k.py): pixel-identical through
pydicom's own decoder (OpenJPEG, not the OpenJPH that encoded), the codestream PS3.5
asks for, valid Part 10 files, and pydicom's compress() API."""

from __future__ import annotations

import copy
import io
import math
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread, examples
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import compress
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import ImplicitVRLittleEndian

from dcmpress.stack.samples import make_image, to_bytes
from tests.support import LOSSLESS_CASES, assert_lossless, from_file, read, run, source_pixels
from worker.codec.engine import Result, process
from worker.codec.options import CompressionOptions
from worker.codec.plugins.htj2k import HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL
from worker.codec.targets import get_target, plugin_status

HTJ2K_TARGETS = ["htj2k", "htj2k-rpcl"]  # the second: an earlier name of the first
UIDS = {"htj2k": HTJ2K_LOSSLESS_RPCL, "htj2k-rpcl": HTJ2K_LOSSLESS_RPCL}

# Every Image Pixel case the other lossless targets take
IMAGES: dict[str, dict[str, Any]] = {
    **LOSSLESS_CASES,
    "YBR_FULL": {"bits_allocated": 8, "samples": 3, "photometric": "YBR_FULL"},
    "implicit VR source": {"bits_stored": 12, "syntax": ImplicitVRLittleEndian},
    "2x300": {"rows": 2, "cols": 300, "bits_stored": 12},
}


def image(kind: str) -> Dataset:
    return make_image(**{"rows": 48, "cols": 40, **IMAGES[kind]})


def markers(codestream: bytes) -> dict[int, bytes]:
    """The main header's marker segments of a J2C codestream, up to the first tile."""
    assert codestream[:2] == b"\xff\x4f", "not a raw J2C codestream (SOC)"
    found: dict[int, bytes] = {}
    position = 2
    while position < len(codestream):
        marker, length = struct.unpack(">HH", codestream[position : position + 4])
        if marker == 0xFF90:  # SOT: the first tile begins
            break
        found[marker] = codestream[position + 4 : position + 2 + length]
        position += 2 + length
    return found


SIZ, CAP, COD, TLM = 0xFF51, 0xFF50, 0xFF52, 0xFF55


def frames_of(data: bytes) -> list[bytes]:
    out = read(data)
    count = int(out.get("NumberOfFrames", 1) or 1)
    return list(generate_frames(out.PixelData, number_of_frames=count))


@pytest.mark.parametrize("kind", IMAGES)
@pytest.mark.parametrize("target", HTJ2K_TARGETS)
def test_every_image_kind_round_trips_through_pydicoms_decoder(target: str, kind: str) -> None:
    ds = image(kind)
    source = source_pixels(ds)
    # colour without the transform is refused by default: OHIF's loader scrambles it
    result = run(ds, target=[target], min_ratio=0, viewer_safe=False)
    assert (result.target, result.plugin) == ("htj2k", "imagecodecs")
    out = assert_lossless(result, source)  # decoded by pylibjpeg-openjpeg
    data = result.output or b""
    assert data[128:132] == b"DICM"
    assert out.file_meta.TransferSyntaxUID == UIDS[target]
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == ds.SOPInstanceUID
    assert "LossyImageCompression" not in out
    assert out["PixelData"].VR == "OB" and out["PixelData"].is_undefined_length
    assert int(out.get("NumberOfFrames", 1) or 1) == int(ds.get("NumberOfFrames", 1) or 1)
    assert (out.BitsStored, out.PixelRepresentation) == (ds.BitsStored, ds.PixelRepresentation)


@pytest.mark.parametrize(
    ("photometric", "written", "mct"),
    [("RGB", "YBR_RCT", 1), ("YBR_FULL", "YBR_FULL", 0), ("MONOCHROME2", "MONOCHROME2", 0)],
)
def test_the_colour_transform_is_used_exactly_when_the_result_says_ybr_rct(
    photometric: str, written: str, mct: int
) -> None:
    samples = 1 if photometric == "MONOCHROME2" else 3
    ds = make_image(40, 40, bits_allocated=8, samples=samples, photometric=photometric)
    result = run(ds, target=["htj2k"], min_ratio=0, viewer_safe=False)
    out = assert_lossless(result, source_pixels(ds))
    assert out.PhotometricInterpretation == written  # PS3.5 8.2.4
    cod = markers(frames_of(result.output or b"")[0])[COD]
    assert cod[4] == mct  # SGcod: multiple component transformation


def test_the_reversible_colour_transform_pays_on_photographs() -> None:
    ds = examples.rgb_color
    with_rct = run(to_bytes(ds), target=["htj2k"])
    plain = copy.deepcopy(ds)
    compress(plain, HTJ2K_LOSSLESS_RPCL, encoding_plugin="imagecodecs", generate_instance_uid=False)
    assert with_rct.output is not None
    assert len(with_rct.output) < 0.7 * len(plain.PixelData)  # measured: about half


@pytest.mark.parametrize(
    ("kind", "precision", "signed"),
    [
        ("8-bit", 8, 0),
        ("8 stored in 16", 8, 0),
        ("12-bit", 12, 0),
        ("signed 12-bit", 12, 1),
        ("16-bit", 16, 0),
        ("signed 16-bit", 16, 1),
        ("1 bit stored", 1, 0),
        ("RGB 16-bit", 16, 0),
    ],
)
def test_the_codestream_is_rpcl_htj2k_with_tlm_and_precision_bits_stored(
    kind: str, precision: int, signed: int
) -> None:
    """PS3.5 10.18 (.202): RPCL, TLM markers; 8.2.4: SIZ says Bits Stored and the sign of
    Pixel Representation, for every component."""
    result = run(image(kind), target=["htj2k"], min_ratio=0, viewer_safe=False)
    codestream = frames_of(result.output or b"")[0]
    found = markers(codestream)
    assert CAP in found  # Part 15 capabilities: HT code-blocks
    siz = found[SIZ]
    components = struct.unpack(">H", siz[34:36])[0]
    assert components == (3 if "RGB" in kind else 1)
    for index in range(components):  # Ssiz: precision - 1, sign bit
        assert siz[36 + 3 * index] == (precision - 1) | (signed << 7)
    cod = found[COD]
    assert cod[1] == 2  # progression order RPCL
    assert struct.unpack(">H", cod[2:4])[0] == 1  # one quality layer
    assert cod[8] & 0x40  # code-block style: HT
    assert cod[9] == 1  # reversible 5/3 wavelet
    # TLM: one entry per tile-part, a tile-part per resolution (levels + 1)
    tlm = found[TLM]
    entries = tile_parts(codestream)
    assert len(entries) == cod[5] + 1
    index_bytes, length_bytes = (tlm[1] >> 4) & 3, 4 if tlm[1] & 0x40 else 2  # Stlm
    size = index_bytes + length_bytes
    lengths = [
        int.from_bytes(tlm[i + index_bytes : i + size], "big") for i in range(2, len(tlm), size)
    ]
    assert lengths == entries


def tile_parts(codestream: bytes) -> list[int]:
    """Psot of each tile-part, walking SOT to SOT from the end of the main header."""
    position = codestream.index(b"\xff\x90")
    lengths = []
    while codestream[position : position + 2] == b"\xff\x90":
        psot = struct.unpack(">I", codestream[position + 6 : position + 10])[0]
        lengths.append(psot)
        position += psot
    assert codestream[position : position + 2] == b"\xff\xd9"  # EOC (then even-length padding)
    return lengths


def test_a_decoder_of_201_reads_the_202_codestream() -> None:
    """A .202 codestream is a .201 one: relabelled, it decodes the same."""
    ds = make_image(80, 72, bits_stored=12, signed=True)
    result = run(ds, target=["htj2k"], min_ratio=0)
    relabelled = read(result.output or b"")
    relabelled.file_meta.TransferSyntaxUID = HTJ2K_LOSSLESS
    np.testing.assert_array_equal(relabelled.pixel_array, source_pixels(ds))


@pytest.mark.parametrize("bits_stored", [10, 12, 14])
def test_narrow_unsigned_values_use_their_whole_range(bits_stored: int) -> None:
    """Values at both ends of Bits Stored survive the level shift of the precision."""
    ds = make_image(40, 40, bits_stored=bits_stored)
    values = np.zeros((40, 40), dtype=np.uint16)
    values[::2] = 2**bits_stored - 1
    ds.PixelData = values.tobytes()
    assert_lossless(run(ds, target=["htj2k"], min_ratio=0), values)


@pytest.mark.parametrize(("rows", "cols"), [(40, 48), (8, 4100), (3000, 16)])
def test_rpcl_decomposes_until_the_base_resolution_is_at_most_64_pixels(
    rows: int, cols: int
) -> None:
    ds = make_image(rows, cols, bits_allocated=8)
    result = run(ds, target=["htj2k"], min_ratio=0)
    assert_lossless(result, source_pixels(ds))
    levels = markers(frames_of(result.output or b"")[0])[COD][5]
    assert math.ceil(max(rows, cols) / 2**levels) <= 64
    assert levels >= 5


def test_every_frame_is_its_own_codestream_with_an_offset_table() -> None:
    ds = make_image(40, 40, frames=5, bits_stored=12)
    result = run(ds, target=["htj2k"], encapsulate_ext=True)
    out = assert_lossless(result, source_pixels(ds))
    frames = frames_of(result.output or b"")
    assert len(frames) == 5 and all(frame[:4] == b"\xff\x4f\xff\x51" for frame in frames)
    offsets = struct.unpack("<5Q", out.ExtendedOffsetTable)
    assert offsets[0] == 0 and list(offsets) == sorted(offsets)


@pytest.mark.parametrize("name", ["ct", "mr", "rgb_color", "palette_color"])
@pytest.mark.parametrize("target", HTJ2K_TARGETS)
def test_pydicom_examples_round_trip(name: str, target: str) -> None:
    ds = getattr(examples, name)
    data = to_bytes(ds)
    source = source_pixels(read(data))
    result = run(data, target=[target], min_ratio=0, viewer_safe=False)
    out = assert_lossless(result, source)
    assert out.file_meta.TransferSyntaxUID == UIDS[target]


def test_pydicom_compress_works_with_the_registered_plugin() -> None:
    for uid in (HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL):
        assert "imagecodecs" in get_encoder(uid).available_plugins
        ds = make_image(64, 64, bits_stored=12, signed=True)
        expected = ds.pixel_array.copy()
        compress(ds, uid, encoding_plugin="imagecodecs")
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        back = dcmread(io.BytesIO(buffer.getvalue()))
        assert back.file_meta.TransferSyntaxUID == uid
        np.testing.assert_array_equal(back.pixel_array, expected)


def test_images_outside_the_encoding_profile_are_refused_before_encoding() -> None:
    ds = make_image(40, 40, bits_allocated=8, samples=3, signed=True)
    result = run(ds, target=["htj2k"])
    assert (result.state, result.code) == ("skipped", "encoder_rejected")
    assert "Pixel Representation 1" in result.message
    fallback = run(make_image(40, 40, bits_allocated=32, bits_stored=20), target=["htj2k", "j2k"])
    assert (fallback.state, fallback.target) == ("done", "j2k")  # 32-bit precision: j2k


def test_doctor_reports_the_plugin_available() -> None:
    for name in HTJ2K_TARGETS:
        target = get_target(name)
        [plugin] = target.plugins
        assert plugin_status(target, plugin).available
        assert target.decoder() == "pylibjpeg"  # OpenJPEG verifies what OpenJPH wrote


# -- the frame-group path of large multi-frame files ---------------------------------


@pytest.mark.parametrize("target", HTJ2K_TARGETS)
@pytest.mark.parametrize(
    "kind", [{"bits_stored": 12}, {"bits_allocated": 8, "samples": 3}, {"signed": True}]
)
def test_large_multi_frame_files_get_the_same_bytes_group_by_group(
    target: str, kind: dict[str, Any], deferred: None
) -> None:
    ds = make_image(40, 48, frames=5, **kind)
    data = to_bytes(ds)
    options = CompressionOptions(target=[target], viewer_safe=False)
    whole = process(data, options)
    _, written = from_file(data, options)
    assert written == whole.output
    assert_lossless(Result("done", "compressed", "", len(data), output=written), source_pixels(ds))


def test_dcmtk_reads_the_files(tmp_path: Path) -> None:
    dcmdump = shutil.which("dcmdump")
    if dcmdump is None:
        pytest.skip("dcmdump is not installed (apt-get install dcmtk)")
    for target in HTJ2K_TARGETS:
        result = run(make_image(40, 40, frames=2, bits_stored=12), target=[target], min_ratio=0)
        path = tmp_path / f"{target}.dcm"
        path.write_bytes(result.output or b"")
        proc = subprocess.run([dcmdump, str(path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert str(UIDS[target]) in proc.stdout and "PixelSequence #=3" in proc.stdout
