"""Nothing lost, nothing silently changed: the real-archive cases of issue 9.

Embedded overlays, bits above High Bit, syntaxes pydicom does not know, objects that
are not instances, retired curve data, and the DICOM attributes of lossy results.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from pydicom import dcmwrite, examples
from pydicom.dataset import Dataset
from pydicom.overlays.numpy_handler import get_overlay_array
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from dcmpress.stack.samples import make_image, to_bytes
from tests.support import assert_lossless, independent_decode, read, run, source_pixels
from tests.synthetic import (
    LABEL_MAP_SEGMENTATION_STORAGE,
    enhanced_ct,
    mr_with_embedded_overlays,
    segmentation,
    whole_slide,
    with_syntax,
)
from worker.codec import compress as compress_module
from worker.codec.engine import process
from worker.codec.lossy import derived
from worker.codec.options import CompressionOptions
from worker.codec.targets import source_decoding_plugin
from worker.errors import PermanentError, one_line

LOSSLESS = ["jpeg-ls", "rle", "j2k"]


def masked(ds: Dataset) -> np.ndarray:
    """The source pixel values as DICOM defines them (low Bits Stored bits)."""
    return source_pixels(ds)


def assert_overlays(out: Dataset, expected: dict[int, np.ndarray]) -> None:
    """Every plane is Overlay Data now, decodes identical, and none is left embedded."""
    for group, planes in expected.items():
        assert out[Tag(group, 0x0100)].value == 1
        assert out[Tag(group, 0x0102)].value == 0
        decoded = np.asarray(get_overlay_array(out, group), dtype=bool)
        np.testing.assert_array_equal(decoded.reshape(planes.shape), planes)


# -- embedded overlays ---------------------------------------------------------------


@pytest.mark.parametrize("bits", [(12, 13, 14, 15), (15,)])
@pytest.mark.parametrize("target", LOSSLESS)
def test_embedded_overlays_are_moved_to_overlay_data_and_survive(
    bits: tuple[int, ...], target: str
) -> None:
    ds, expected = mr_with_embedded_overlays(bits)
    result = run(ds, target=[target], min_ratio=0)
    out = assert_lossless(result, masked(ds))
    assert_overlays(out, expected)
    assert "moved to Overlay Data" in result.message
    assert not any("above High Bit" in notice for notice in result.notices)  # all declared


def test_overlay_bits_are_exactly_the_source_words_high_bits() -> None:
    ds, _ = mr_with_embedded_overlays((12, 13, 14, 15))
    words = np.frombuffer(ds.PixelData, "<u2").reshape(1, 48, 40)
    out = read(run(ds, target=["jpeg-ls"]).output or b"")
    rebuilt = independent_decode(to_bytes(out)).astype(np.uint16).reshape(1, 48, 40)
    for index, bit in enumerate((12, 13, 14, 15)):
        plane = np.asarray(get_overlay_array(out, 0x6000 + 2 * index), bool).reshape(1, 48, 40)
        rebuilt |= plane.astype(np.uint16) << bit
    np.testing.assert_array_equal(rebuilt, words)  # pixels + planes = every stored bit


@pytest.mark.parametrize("frames_in_overlay", [None, 2])
def test_multi_frame_embedded_overlays_keep_every_frame(frames_in_overlay: int | None) -> None:
    ds, expected = mr_with_embedded_overlays((13,), frames=3, frames_in_overlay=frames_in_overlay)
    out = assert_lossless(run(ds, target=["jpeg-ls"]), masked(ds))
    assert_overlays(out, expected)
    assert int(out[Tag(0x6000, 0x0015)].value) == len(expected[0x6000])
    assert int(out[Tag(0x6000, 0x0051)].value) == 1


def test_big_endian_embedded_overlays_are_extracted_too() -> None:
    ds, expected = mr_with_embedded_overlays((15,))
    words = np.frombuffer(ds.PixelData, "<u2")
    ds.PixelData = words.astype(">u2").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    out = assert_lossless(run(ds, target=["rle"], min_ratio=0), (words & 0x0FFF).reshape(48, 40))
    assert_overlays(out, expected)


def test_lossy_targets_keep_the_overlays_exactly() -> None:
    ds, expected = mr_with_embedded_overlays((14, 15))
    result = run(ds, target=["jpeg-ls-near"], jls_error=2)
    assert result.state == "done", result.message
    assert_overlays(read(result.output or b""), expected)


def test_a_wrong_overlay_plane_fails_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    real = compress_module.write_overlay_data

    def flip_one_bit(ds: Dataset, found: Any) -> None:
        planes = found.overlays[0x6000]
        planes.flat[5] = ~planes.flat[5]
        real(ds, found)
        planes.flat[5] = ~planes.flat[5]  # the check compares with the true plane

    monkeypatch.setattr(compress_module, "write_overlay_data", flip_one_bit)
    ds, _ = mr_with_embedded_overlays((13,))
    result = run(ds, target=["jpeg-ls"])
    assert (result.state, result.code) == ("failed", "verification_failed")
    assert "overlay 6000" in result.message and result.output is None


def test_overlay_embedded_in_a_colour_image_is_left_uncompressed() -> None:
    ds = make_image(32, 32, bits_allocated=8, samples=3)
    ds.add_new(Tag(0x6000, 0x0100), "US", 8)
    ds.add_new(Tag(0x6000, 0x0102), "US", 7)
    result = run(ds, target=["jpeg-ls"])
    assert (result.state, result.code, result.copy_source) == (
        "skipped", "unsupported_overlay", True
    )  # fmt: skip


def test_overlay_bit_position_outside_the_word_is_refused() -> None:
    ds, _ = mr_with_embedded_overlays((13,))
    ds[Tag(0x6000, 0x0102)].value = 16
    assert run(ds, target=["jpeg-ls"]).code == "unsupported_overlay"


def test_separate_overlay_data_is_kept_byte_for_byte() -> None:
    ds = make_image(40, 40, bits_stored=12)
    plane = np.packbits(np.eye(40, dtype=bool).ravel(), bitorder="little").tobytes()
    for element, vr, value in ((0x10, "US", 40), (0x11, "US", 40), (0x40, "CS", "G"),
                               (0x50, "SS", [1, 1]), (0x100, "US", 1), (0x102, "US", 0),
                               (0x3000, "OW", plane)):  # fmt: skip
        ds.add_new(Tag(0x6000, element), vr, value)
    result = run(ds, target=["jpeg-ls"])
    out = assert_lossless(result, masked(ds))
    assert out[Tag(0x6000, 0x3000)].value == plane
    assert result.notices == []


# -- bits above High Bit -------------------------------------------------------------


def _with_stray_bits(signed: bool = False) -> Dataset:
    ds = make_image(32, 32, bits_stored=12, signed=signed)
    words = np.frombuffer(ds.PixelData, "<u2").copy()
    words[:100] |= 1 << 14
    ds.PixelData = words.tobytes()
    return ds


def test_undeclared_high_bits_are_cleared_and_counted_in_the_record() -> None:
    ds = _with_stray_bits()
    result = run(ds, target=["jpeg-ls"])
    out = assert_lossless(result, masked(ds))
    assert "100 pixels had bit 14 set above High Bit 11" in result.message
    assert result.notices and "not kept" in result.notices[0]
    assert int(independent_decode(result.output or b"").max()) < 2**12  # bit 14 is gone
    assert out.BitsStored == 12


def test_an_rle_result_with_bits_above_bits_stored_fails_verification(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RLE stores every bit it was given: the check decodes them as stored, so an
    encoder that sets a bit the source did not have is caught (pydicom's own
    correction of unused bits would have cleared it before the comparison)."""
    from pydicom.pixels.encoders.base import RLELosslessEncoder

    from worker.codec.plugins import packbits

    real = RLELosslessEncoder._available[packbits.LABEL]

    def sets_bit_14(src: bytes, runner: Any) -> bytes:
        words = np.frombuffer(src, "<u2").copy()
        words[:10] |= 1 << 14
        return bytes(real(words.tobytes(), runner))

    monkeypatch.setitem(RLELosslessEncoder._available, packbits.LABEL, sets_bit_14)
    ds = make_image(32, 32, bits_stored=12)
    result = run(ds, target=["rle"], encoding_plugin=[f"rle={packbits.LABEL}"])
    assert (result.state, result.code) == ("failed", "verification_failed"), result.message
    assert result.output is None
    assert run(ds, target=["rle"], encoding_plugin=["rle=pydicom"]).state == "done"


def test_high_bits_keep_leaves_the_object_uncompressed() -> None:
    ds = _with_stray_bits()
    result = run(ds, target=["jpeg-ls"], high_bits="keep")
    assert (result.state, result.code, result.copy_source) == ("skipped", "high_bits_set", True)
    assert "100 pixels" in result.message
    failed = run(ds, target=["jpeg-ls"], high_bits="keep", unsupported="fail")
    assert (failed.state, failed.code) == ("failed", "high_bits_set")


def test_sign_extended_negative_values_are_not_stray_bits() -> None:
    ds = make_image(32, 32, bits_stored=12, signed=True)  # int16, sign-extended
    assert int(source_pixels(ds).min()) < 0
    result = run(ds, target=["jpeg-ls"])
    assert_lossless(result, source_pixels(ds))
    assert result.notices == []


def test_unsigned_values_without_high_bits_have_no_notices() -> None:
    result = run(make_image(32, 32, bits_stored=12), target=["jpeg-ls"])
    assert (result.state, result.notices) == ("done", [])


def test_values_stored_in_the_high_bits_are_never_compressed_wrongly() -> None:
    ds = make_image(32, 32, bits_stored=12)
    words = np.frombuffer(ds.PixelData, "<u2")
    ds.PixelData = (words << 4).astype("<u2").tobytes()
    ds.HighBit = 15  # an old ACR-NEMA layout: the 12 bits are the high ones
    result = run(ds, target=["jpeg-ls"])
    assert (result.state, result.code, result.copy_source) == (
        "skipped", "unsupported_high_bit", True
    )  # fmt: skip


# -- transfer syntaxes pydicom does not know -----------------------------------------


def _encapsulated(uid: str) -> bytes:
    from pydicom.encaps import encapsulate

    ds = make_image(32, 32)
    ds.PixelData = encapsulate([b"\xff\x0a" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return with_syntax(ds, uid)


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
        "1.2.840.10008.1.2.4.111",  # JPEG XL JPEG Recompression
        "1.2.840.10008.1.2.4.112",  # JPEG XL
        "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
    ],
)
def test_newer_compressed_syntaxes_are_already_compressed(uid: str) -> None:
    result = run(_encapsulated(uid), target=["jpeg-ls"])
    assert (result.state, result.code, result.copy_source) == (
        "skipped", "already_compressed", True
    )  # fmt: skip
    assert result.transfer_syntax == uid


@pytest.mark.parametrize(
    ("uid", "code"),
    [
        # JPEG XL Lossless has a decoder now: tests/unit/test_jpegxl.py transcodes it
        ("1.2.840.10008.1.2.8.1", "no_decoder"),
        ("1.2.840.10008.1.2.4.111", "lossy_source"),
        ("1.2.840.10008.1.2.4.112", "lossy_source"),
    ],
)
def test_transcoding_newer_syntaxes_names_why_not(uid: str, code: str) -> None:
    result = run(_encapsulated(uid), target=["jpeg-ls"], transcode=True)
    assert (result.state, result.code, result.copy_source) == ("skipped", code, True)


@pytest.mark.parametrize("uid", ["1.2.3.4.5", "1.2.840.113619.5.2", "1.2.840.10008.1.2.999"])
@pytest.mark.parametrize("implicit", [False, True])
def test_unknown_transfer_syntaxes_are_copied_with_their_own_code(uid: str, implicit: bool) -> None:
    data = with_syntax(make_image(32, 32), uid, implicit=implicit)
    result = run(data, target=["jpeg-ls"])
    assert (result.state, result.code, result.copy_source) == (
        "skipped", "unknown_transfer_syntax", True
    )  # fmt: skip
    assert uid in result.message
    failed = run(data, target=["jpeg-ls"], unsupported="fail")
    assert (failed.state, failed.code) == ("failed", "unknown_transfer_syntax")


def test_papyrus_3_is_read_as_implicit_little_endian_and_compressed() -> None:
    ds = make_image(40, 40, bits_stored=12, syntax=ImplicitVRLittleEndian)
    expected = masked(ds)
    data = with_syntax(ds, "1.2.840.10008.1.20", implicit=True)
    assert_lossless(run(data, target=["jpeg-ls"]), expected)


# -- objects that are not instances ----------------------------------------------------


def test_dicomdir_is_copied_as_a_media_directory() -> None:
    result = run(to_bytes(examples.dicomdir), target=["jpeg-ls"])
    assert (result.state, result.code, result.copy_source) == ("skipped", "media_directory", True)


@pytest.mark.parametrize("with_pixels", [True, False])
@pytest.mark.parametrize("missing", ["SOPClassUID", "SOPInstanceUID"])
def test_data_sets_that_are_not_instances_are_copied(with_pixels: bool, missing: str) -> None:
    ds = make_image(32, 32)
    delattr(ds, missing)
    if not with_pixels:
        del ds.PixelData
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    result = run(buffer.getvalue(), target=["jpeg-ls"])
    assert (result.state, result.code, result.copy_source) == ("skipped", "not_an_instance", True)
    assert missing in result.message


# -- retired curve and overlay data in implicit VR -----------------------------------


def test_implicit_vr_curve_and_overlay_data_are_written_as_ow() -> None:
    ds = make_image(40, 40, bits_stored=12, syntax=ImplicitVRLittleEndian)
    curve = np.arange(8, dtype="<u2").tobytes()
    plane = np.packbits(np.eye(40, dtype=bool).ravel(), bitorder="little").tobytes()
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x50000010, "US", 4)
    ds.add_new(0x50000103, "US", 0)
    ds.add_new(0x50003000, "OW", curve)
    for element, vr, value in ((0x10, "US", 40), (0x11, "US", 40), (0x40, "CS", "G"),
                               (0x50, "SS", [1, 1]), (0x100, "US", 1), (0x102, "US", 0),
                               (0x3000, "OW", plane)):  # fmt: skip
        ds.add_new(Tag(0x6002, element), vr, value)
    data = to_bytes(ds)
    assert read(data)[0x50003000].VR == "OB or OW"  # as pydicom reads implicit VR
    out = assert_lossless(run(data, target=["jpeg-ls"]), masked(ds))
    assert (out[0x50003000].VR, out[0x50003000].value) == ("OW", curve)
    assert (out[0x60023000].VR, out[0x60023000].value) == ("OW", plane)


# -- lossy results carry correct DICOM -----------------------------------------------


def test_single_string_image_type_gets_value_1_exactly_derived() -> None:
    # "ORIGINAL PRIMARY" as one value (real CR): value 1 of the result is DERIVED, not
    # "DERIVED PRIMARY" that software testing value 1 misses; never split into letters
    ds = make_image(64, 64, bits_stored=12)
    ds.ImageType = "ORIGINAL PRIMARY"
    out = read(run(ds, target=["jpeg-ls-near"]).output or b"")
    assert out["ImageType"].VM == 2
    assert list(out.ImageType) == ["DERIVED", "PRIMARY"]


def test_single_string_frame_type_gets_value_1_exactly_derived() -> None:
    ds = enhanced_ct(frames=2)
    frame_type = ds.SharedFunctionalGroupsSequence[0].CTImageFrameTypeSequence[0]
    frame_type.FrameType = "ORIGINAL PRIMARY"
    result = run(ds, target=["jpeg-ls-near"])
    assert result.state == "done", result.message
    out = read(result.output or b"")
    shared = out.SharedFunctionalGroupsSequence[0]
    assert list(shared.CTImageFrameTypeSequence[0].FrameType) == ["DERIVED", "PRIMARY"]


@pytest.mark.parametrize(
    ("image_type", "expected"),
    [
        ("ORIGINAL PRIMARY", ["DERIVED", "PRIMARY"]),
        (["ORIGINAL", "PRIMARY", "AXIAL"], ["DERIVED", "PRIMARY", "AXIAL"]),
        (["DERIVED", "SECONDARY"], ["DERIVED", "SECONDARY"]),
        ("MIXED", ["DERIVED"]),
        (["", "PRIMARY"], ["DERIVED", "PRIMARY"]),
        ("PRIMARY", ["DERIVED", "PRIMARY"]),  # not a value 1 term: kept, not lost
    ],
)
def test_derived_image_type_values(image_type: object, expected: list[str]) -> None:
    assert derived(image_type) == expected


def test_general_image_lossy_derivation_is_recorded_at_the_top_level() -> None:
    ds = make_image(64, 64, bits_stored=12)
    out = read(run(ds, target=["jpeg-ls-near"]).output or b"")
    assert list(out.ImageType) == ["DERIVED", "PRIMARY", "AXIAL"]
    assert out.DerivationCodeSequence[0].CodeValue == "113040"
    reference = out.SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121320"
    assert out.SOPInstanceUID != ds.SOPInstanceUID


def test_enhanced_ct_lossy_derivation_lives_in_the_functional_groups() -> None:
    ds = enhanced_ct(frames=3)
    result = run(ds, target=["jpeg-ls-near"])
    assert result.state == "done", result.message
    out = read(result.output or b"")
    shared = out.SharedFunctionalGroupsSequence[0]
    assert list(shared.CTImageFrameTypeSequence[0].FrameType) == [
        "DERIVED", "PRIMARY", "AXIAL", "NONE"
    ]  # fmt: skip
    assert list(out.ImageType) == ["DERIVED", "PRIMARY", "AXIAL", "NONE"]
    derivation = shared.DerivationImageSequence[0]
    assert derivation.DerivationCodeSequence[0].CodeValue == "113040"
    source = derivation.SourceImageSequence[0]
    assert source.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert source.PurposeOfReferenceCodeSequence[0].CodeValue == "121320"
    for keyword in ("DerivationDescription", "SourceImageSequence", "DerivationCodeSequence"):
        assert keyword not in out  # the Enhanced CT IOD has no top-level derivation
    evidence = out.SourceImageEvidenceSequence[0]
    assert evidence.StudyInstanceUID == ds.StudyInstanceUID
    referenced = out.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert out.LossyImageCompression == "01"


def test_per_frame_derivation_gets_one_item_per_frame() -> None:
    ds = enhanced_ct(frames=3)
    for frame in ds.PerFrameFunctionalGroupsSequence:
        earlier = Dataset()
        earlier.DerivationDescription = "reconstructed"
        frame.DerivationImageSequence = Sequence([earlier])
    out = read(run(ds, target=["jpeg-ls-near"]).output or b"")
    assert "DerivationImageSequence" not in out.SharedFunctionalGroupsSequence[0]
    for number, frame in enumerate(out.PerFrameFunctionalGroupsSequence, start=1):
        items = frame.DerivationImageSequence
        assert [item.get("DerivationDescription", "")[:13] for item in items] == [
            "reconstructed", "Lossy compres"
        ]  # fmt: skip
        assert items[1].SourceImageSequence[0].ReferencedFrameNumber == number


def test_whole_slide_lossy_output_has_derived_frames_and_no_foreign_attributes() -> None:
    ds = whole_slide()
    result = run(ds, target=["jpeg-ls-near"])
    assert result.state == "done", result.message
    out = read(result.output or b"")
    frame_type = out.SharedFunctionalGroupsSequence[0].WholeSlideMicroscopyImageFrameTypeSequence
    assert list(frame_type[0].FrameType) == ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    assert list(out.ImageType) == ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    assert "SourceImageEvidenceSequence" not in out
    assert "SourceImageSequence" not in out


@pytest.mark.parametrize(
    "ds",
    [
        segmentation(),
        segmentation(LABEL_MAP_SEGMENTATION_STORAGE, kind="LABELMAP"),
        segmentation(make_image().SOPClassUID, kind="FRACTIONAL"),  # known by its type only
    ],
    ids=["fractional-seg", "label-map", "segmentation-type"],
)
@pytest.mark.parametrize("target", ["jpeg-ls-near", "j2k-lossy"])
def test_segmentations_are_never_compressed_lossily(ds: Dataset, target: str) -> None:
    result = run(ds, target=[target])
    assert (result.state, result.code, result.copy_source) == ("skipped", "label_data", True)
    lossless = run(ds, target=[target, "jpeg-ls"], min_ratio=0)
    assert_lossless(lossless, source_pixels(ds))
    assert lossless.target == "jpeg-ls"


def test_once_lossy_native_pixels_are_never_compressed_lossily_again() -> None:
    ds = make_image(64, 64, bits_stored=12)
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = "8"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    for target in ("jpeg-ls-near", "j2k-lossy"):
        result = run(ds, target=[target])
        assert (result.state, result.code, result.copy_source) == ("skipped", "lossy_source", True)
    lossless = run(ds, target=["jpeg-ls-near", "jpeg-ls"])
    out = assert_lossless(lossless, source_pixels(ds))
    assert (out.LossyImageCompression, out.LossyImageCompressionMethod) == ("01", "ISO_10918_1")
    assert out.SOPInstanceUID == ds.SOPInstanceUID


# -- records are clean ---------------------------------------------------------------


def test_messages_are_one_line() -> None:
    assert one_line("a\nTraceback (most recent call last):\n  File x\r\n\tb") == (
        "a Traceback (most recent call last): File x b"
    )
    assert PermanentError("invalid_dicom", "one\ntwo").message == "one two"
    assert len(one_line("x" * 5000)) == 1000


def test_an_internal_error_with_a_multi_line_text_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(*_: Any, **__: Any) -> Any:
        raise RuntimeError("first line\nTraceback (most recent call last):\n  more")

    monkeypatch.setattr("worker.codec.engine._classify", explode)
    result = process(to_bytes(make_image(32, 32)), CompressionOptions())
    assert (result.state, result.code) == ("failed", "internal_error")
    assert "\n" not in result.message and "first line" in result.message


def test_a_data_set_that_cannot_be_rewritten_is_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise ValueError("With tag (0009,1010) got exception:\nbad value")

    monkeypatch.setattr(compress_module, "dcmwrite", refuse)
    result = run(make_image(32, 32), target=["jpeg-ls"])
    assert (result.state, result.code, result.copy_source) == (
        "skipped", "unwritable_dataset", True
    )  # fmt: skip
    assert "(0009,1010)" in result.message and "\n" not in result.message


def test_copies_record_the_source_transfer_syntax() -> None:
    result = run(to_bytes(examples.jpeg2k), target=["jpeg-ls"])
    assert result.transfer_syntax == "1.2.840.10008.1.2.4.90"
    assert run(b"not dicom at all").transfer_syntax is None


# -- untrusted sources never take the process down ------------------------------------


def test_source_pixels_are_never_decoded_by_gdcm_when_another_plugin_can() -> None:
    assert source_decoding_plugin(JPEG2000Lossless) == "pylibjpeg"
    assert source_decoding_plugin(JPEGLSLossless) == "pyjpegls"
    assert source_decoding_plugin(RLELossless) == "pylibjpeg"
    assert source_decoding_plugin(ExplicitVRBigEndian) == ""


def test_a_gdcm_abort_on_a_source_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    # python-gdcm aborts (C++ terminate) on a J2K codestream whose component count
    # contradicts Samples per Pixel; where gdcm is the only decoder, it runs in a fork
    monkeypatch.setattr(compress_module, "source_decoding_plugin", lambda uid: "gdcm")
    ds = examples.jpeg2k
    ds.PhotometricInterpretation = "MONOCHROME1"
    result = run(to_bytes(ds), target=["jpeg-ls"], transcode=True)
    assert (result.state, result.code) == ("failed", "invalid_pixel_data")
    assert "gdcm" in result.message


def test_pydicom_overlay_example_keeps_its_overlay_data() -> None:
    ds = examples.overlay
    result = run(to_bytes(ds), target=["jpeg-ls"])
    out = assert_lossless(result, source_pixels(ds))
    assert out[0x60003000].value == ds[0x60003000].value
    assert result.notices == []
