"""Outcomes, options and DICOM rules of the engine, one behaviour per test."""

from __future__ import annotations

import io
import os
import signal
import tempfile
from typing import Any

import numpy as np
import pytest
from pydicom import dcmwrite, examples
from pydicom.uid import JPEGLSLossless

from dcmpress.stack.samples import make_image, to_bytes
from tests.support import assert_lossless, read, run, source_pixels
from worker.codec import compress as compress_module
from worker.codec import verify as verify_module
from worker.codec.engine import process
from worker.codec.isolation import CodecCrashed, run_isolated
from worker.codec.options import CompressionOptions, EngineSettings
from worker.codec.plugins import gdcm as gdcm_plugin
from worker.codec.targets import TARGETS, resolve_plugin
from worker.errors import CODES, ConfigurationError, PermanentError


def test_text_file_is_not_dicom_and_copied_by_default() -> None:
    result = run(b"patient list\n" * 50)
    assert (result.state, result.code, result.output, result.copy_source) == (
        "skipped",
        "not_dicom",
        None,
        True,
    )


def test_not_dicom_fail_records_a_failure_without_output() -> None:
    result = run(b"patient list\n" * 50, not_dicom="fail")
    assert (result.state, result.code, result.output, result.copy_source) == (
        "failed",
        "not_dicom",
        None,
        False,
    )


@pytest.mark.parametrize("data", [b"", b"DICM", b"\0" * 7])
def test_empty_and_tiny_objects_are_not_dicom(data: bytes) -> None:
    assert run(data).code == "not_dicom"


def test_preamble_without_dicom_data_is_invalid() -> None:
    result = run(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    assert result.code in ("invalid_dicom", "not_dicom")
    assert result.output is None
    # failed (copied unchanged by default: the destination stays complete) or skipped
    assert (result.state, result.copy_source) in (("failed", True), ("skipped", True))


def test_truncated_pixel_data_is_a_specific_failure() -> None:
    data = to_bytes(make_image(64, 64))
    result = run(data[: len(data) - 3000])
    assert result.state == "failed"
    assert result.code in ("invalid_pixel_data", "invalid_dicom")
    assert result.output is None and result.copied  # the source, unchanged
    assert result.message.endswith("; copied unchanged")
    kept_out = run(data[: len(data) - 3000], failed_output="none")
    assert (kept_out.state, kept_out.code) == (result.state, result.code)
    assert not kept_out.copy_source and kept_out.bytes_out == 0


def test_raw_dataset_without_sop_class_is_copied_unchanged() -> None:
    ds = make_image(32, 32)
    del ds.SOPClassUID
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)  # no file meta
    result = run(buffer.getvalue())
    assert (result.state, result.code, result.copy_source) == ("skipped", "not_an_instance", True)


def test_already_compressed_input_is_copied_and_skipped() -> None:
    result = run(to_bytes(examples.jpeg2k), target=["jpeg-ls"])
    assert (result.state, result.code, result.copy_source) == (
        "skipped",
        "already_compressed",
        True,
    )


def test_transcode_re_encodes_lossless_compressed_input() -> None:
    ds = examples.jpeg2k
    result = run(to_bytes(ds), target=["jpeg-ls"], transcode=True, min_ratio=0)
    out = assert_lossless(result, source_pixels(ds))
    assert out.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert out.SOPInstanceUID == ds.SOPInstanceUID


def test_transcode_never_re_encodes_lossy_input() -> None:
    result = run(to_bytes(examples.ybr_color), target=["jpeg-ls"], transcode=True)
    assert (result.state, result.code, result.copy_source) == ("skipped", "lossy_source", True)


def test_lossless_syntax_marked_lossy_is_never_re_encoded() -> None:
    ds = make_image(40, 40)
    ds.LossyImageCompression = "01"
    encoded = run(ds, target=["rle"], min_ratio=0)
    marked = read(encoded.output or b"")
    assert run(to_bytes(marked), target=["jpeg-ls"], transcode=True).code == "lossy_source"


@pytest.mark.parametrize(("policy", "copied"), [("copy", True), ("skip", False)])
def test_objects_without_pixel_data_are_copied_or_skipped(policy: str, copied: bool) -> None:
    result = run(to_bytes(examples.rt_plan), no_pixel_data=policy)
    assert (result.state, result.code, result.copy_source) == ("skipped", "no_pixel_data", copied)
    assert "RT Plan" in result.message


def test_verification_mismatch_fails_and_discards_the_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = verify_module._decode

    def corrupt(ds: Any, plugin: str = "") -> np.ndarray:
        arr = real(ds, plugin).copy()
        arr.flat[17] ^= 1  # one bit of one pixel
        return arr

    monkeypatch.setattr(verify_module, "_decode", corrupt)
    result = run(make_image(40, 40), target=["jpeg-ls"])
    assert (result.state, result.code) == ("failed", "verification_failed")
    # the result that did not verify is never written; the source is, unchanged
    assert result.output is None and result.copy_source
    assert result.bytes_out == result.bytes_in
    assert "differs from the source by up to 1" in result.message


def test_verification_is_on_by_default_and_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = verify_module.verify

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("worker.codec.engine.verify", counting)
    assert run(make_image(40, 40)).state == "done"
    assert calls == [1]
    result = run(make_image(40, 40), verify=False)
    assert result.state == "done" and "NOT verified" in result.message
    assert calls == [1]


def test_incompressible_noise_is_kept_unchanged_as_no_gain() -> None:
    ds = make_image(64, 64, bits_stored=16)
    ds.PixelData = np.random.default_rng(0).integers(0, 65536, 64 * 64, np.uint16).tobytes()
    result = run(ds, target=["rle"])
    assert (result.state, result.code, result.copy_source) == ("skipped", "no_gain", True)
    assert run(ds, target=["rle"], min_ratio=0).state == "done"


def test_encapsulate_ext_writes_an_extended_offset_table() -> None:
    ds = make_image(48, 48, frames=4, bits_stored=12)
    result = run(ds, target=["jpeg-ls"], encapsulate_ext=True)
    out = assert_lossless(result, source_pixels(ds))
    offsets = np.frombuffer(out.ExtendedOffsetTable, "<u8")
    lengths = np.frombuffer(out.ExtendedOffsetTableLengths, "<u8")
    assert len(offsets) == len(lengths) == 4
    assert offsets[0] == 0 and all(np.diff(offsets) > 0)
    plain = read(run(ds, target=["jpeg-ls"]).output or b"")
    assert "ExtendedOffsetTable" not in plain


def test_lossless_keeps_uid_unless_asked_and_lossy_gets_a_new_one() -> None:
    ds = make_image(40, 40)
    assert read(run(ds).output or b"").SOPInstanceUID == ds.SOPInstanceUID
    renamed = read(run(ds, generate_instance_uid=True).output or b"")
    assert renamed.SOPInstanceUID != ds.SOPInstanceUID
    assert renamed.file_meta.MediaStorageSOPInstanceUID == renamed.SOPInstanceUID
    lossy = read(run(ds, target=["jpeg-ls-near"]).output or b"")
    assert lossy.SOPInstanceUID != ds.SOPInstanceUID
    assert lossy.file_meta.MediaStorageSOPInstanceUID == lossy.SOPInstanceUID
    kept = read(run(ds, target=["jpeg-ls-near"], generate_instance_uid=False).output or b"")
    assert kept.SOPInstanceUID == ds.SOPInstanceUID


def test_lossy_attributes_are_appended_after_earlier_values() -> None:
    ds = make_image(64, 64, bits_stored=12)  # ratio and method left by an earlier step
    ds.LossyImageCompressionRatio = "3.5"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    out = read(run(ds, target=["j2k-lossy"], j2k_cr=[8]).output or b"")
    assert list(out.ImageType) == ["DERIVED", "PRIMARY", "AXIAL"]
    assert out.LossyImageCompression == "01"
    assert list(out.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_15444_1"]
    ratios = [float(v) for v in out.LossyImageCompressionRatio]
    assert ratios[0] == 3.5 and 5 < ratios[1] < 12
    assert "ISO_15444_1" in out.DerivationDescription


def test_lossy_jpeg_ls_method_and_ratio_are_recorded() -> None:
    ds = make_image(64, 64, bits_stored=12)
    out = read(run(ds, target=["jpeg-ls-near"], jls_error=4).output or b"")
    assert out.LossyImageCompressionMethod == "ISO_14495_1"
    assert float(out.LossyImageCompressionRatio) > 1


def test_j2k_psnr_option_reaches_the_encoder() -> None:
    ds = make_image(64, 64, bits_stored=12)
    low = run(ds, target=["j2k-lossy"], j2k_psnr=[40])
    high = run(ds, target=["j2k-lossy"], j2k_psnr=[70])
    assert low.psnr is not None and high.psnr is not None
    assert high.psnr > low.psnr and high.bytes_out > low.bytes_out


def test_jls_error_bounds_every_pixel() -> None:
    ds = make_image(64, 64, bits_stored=12)
    for error in (1, 5):
        result = run(ds, target=["jpeg-ls-near"], jls_error=error)
        assert result.max_error is not None and 0 < result.max_error <= error


def test_plugin_keyword_options_reach_the_plugin() -> None:
    ds = make_image(64, 64, bits_stored=12)
    # pylibjpeg's own name for the quality layers overrides pydicom's j2k_cr
    plain = run(ds, target=["j2k-lossy"], j2k_cr=[5], min_psnr=0)
    native = run(ds, target=["j2k-lossy"], j2k_cr=[5], min_psnr=0,
                 plugin_options={"compression_ratios": [40]})  # fmt: skip
    assert native.bytes_out < plain.bytes_out * 0.7


def test_missing_plugin_is_a_configuration_error_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydicom.pixels.encoders.base import get_encoder

    encoder = get_encoder(TARGETS["rle"].uid)
    monkeypatch.setitem(encoder._unavailable, "gdcm", ("gdcm>=3.0.10",))
    monkeypatch.delitem(encoder._available, "gdcm")
    with pytest.raises(ConfigurationError, match=r'pip install "dcmpress\[gdcm\]"') as caught:
        resolve_plugin(TARGETS["rle"], "gdcm")
    assert "requires gdcm>=3.0.10" in str(caught.value)  # pydicom's own reason
    assert resolve_plugin(TARGETS["rle"]).name == "imagecodecs"  # the fastest installed


def test_unknown_target_and_plugin_are_configuration_errors() -> None:
    with pytest.raises(ValueError, match="unknown target"):
        CompressionOptions(target=["jpeg-xl"])
    with pytest.raises(ConfigurationError, match="has no plugin"):
        resolve_plugin(TARGETS["jpeg-ls"], "gdcm")


def test_settings_come_from_dcmpress_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DCMPRESS_TARGET", "j2k-lossy,rle")
    monkeypatch.setenv("DCMPRESS_J2K_CR", "20,5")
    monkeypatch.setenv("DCMPRESS_ENCODING_PLUGIN", "rle=gdcm")
    monkeypatch.setenv("DCMPRESS_PLUGIN_OPTIONS", '{"use_mct": false}')
    monkeypatch.setenv("DCMPRESS_UNSUPPORTED", "fail")
    options = EngineSettings().compression_options()
    assert options.target == ["j2k-lossy", "rle"]
    assert options.j2k_cr == [20.0, 5.0]
    assert options.plugin_for(TARGETS["rle"]) == "gdcm"
    assert options.plugin_for(TARGETS["j2k-lossy"]) == ""
    assert options.plugin_options == {"use_mct": False}
    assert options.unsupported == "fail"


def test_target_accepts_transfer_syntax_uids() -> None:
    assert CompressionOptions(target=["1.2.840.10008.1.2.4.80"]).target == ["jpeg-ls"]


def test_j2k_cr_and_psnr_are_exclusive() -> None:
    with pytest.raises(ValueError, match="not both"):
        CompressionOptions(j2k_cr=[10], j2k_psnr=[50])


def test_pydicom_warnings_are_reported_with_the_outcome() -> None:
    result = run(to_bytes(examples.rt_dose), target=["j2k"])
    assert any("Invalid value for VR UI" in w for w in result.warnings)


def _raise_permanent() -> None:
    raise PermanentError("not_dicom", "from the child")


def test_isolated_crash_becomes_an_exception() -> None:
    with pytest.raises(CodecCrashed, match="SIGABRT"):
        run_isolated(lambda: os.kill(os.getpid(), signal.SIGABRT))
    assert run_isolated(lambda: 41 + 1) == 42
    with pytest.raises(PermanentError, match="from the child"):
        run_isolated(_raise_permanent)


def test_gdcm_crash_without_another_plugin_is_codec_crashed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def crash(func: Any) -> Any:
        raise CodecCrashed("codec process killed by SIGABRT")

    monkeypatch.setattr(gdcm_plugin, "run_isolated", crash)
    monkeypatch.setattr(
        "worker.codec.engine.plugin_status",
        lambda target, plugin: type("S", (), {"available": False})(),
    )
    result = run(make_image(40, 40), target=["rle"], encoding_plugin=["gdcm"])
    assert (result.state, result.code) == ("failed", "codec_crashed")


def test_unexpected_exceptions_are_recorded_as_internal_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("boom")

    monkeypatch.setattr("worker.codec.engine.decode_source", broken)
    result = run(make_image(40, 40))
    assert (result.state, result.code) == ("failed", "internal_error")
    assert "boom" in result.message


def test_every_result_code_is_declared() -> None:
    with pytest.raises(ValueError, match="undeclared"):
        PermanentError("made_up", "x")
    assert all(info.state in ("done", "skipped", "failed") for info in CODES.values())


@pytest.mark.parametrize("name", ["ct", "mr", "rgb_color", "overlay"])
@pytest.mark.parametrize("target", ["jpeg-ls", "j2k", "rle"])
def test_pydicom_example_files_compress_losslessly(name: str, target: str) -> None:
    ds = getattr(examples, name)
    result = run(to_bytes(ds), target=[target], min_ratio=0)
    out = assert_lossless(result, source_pixels(ds))
    assert out.SOPInstanceUID == ds.SOPInstanceUID
    assert out.PatientName == ds.PatientName


class _TimeLimit(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded (an Exception subclass too)."""


class _Raising:
    """A pydicom decoder whose decoding raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def as_array(self, *_: Any, **__: Any) -> Any:
        raise self.error


# each library call sits inside one of the engine's broad handlers
LIBRARY_CALLS = {
    "decoder": ("get_decoder", lambda error: lambda *_: _Raising(error)),
    "encoder": ("pydicom_compress", lambda error: _raiser(error)),
    "writer": ("dcmwrite", lambda error: _raiser(error)),
}


def _raiser(error: BaseException) -> Any:
    def call(*_: Any, **__: Any) -> Any:
        raise error

    return call


def _break(where: str, error: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    if where == "verify":
        monkeypatch.setattr(verify_module, "_decode", _raiser(error))
    else:
        name, make = LIBRARY_CALLS[where]
        monkeypatch.setattr(compress_module, name, make(error))


@pytest.mark.parametrize("where", [*LIBRARY_CALLS, "verify"])
def test_a_registered_interruption_is_never_swallowed(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import errors

    monkeypatch.setattr(errors, "INTERRUPTIONS", [_TimeLimit])
    _break(where, _TimeLimit("soft time limit"), monkeypatch)
    with pytest.raises(_TimeLimit):
        run(make_image(40, 40), target=["jpeg-ls", "rle"])


@pytest.mark.parametrize("where", [*LIBRARY_CALLS, "verify"])
def test_memory_errors_are_recorded_out_of_memory_at_any_stage(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _break(where, MemoryError("cannot allocate 2.1 GiB"), monkeypatch)
    result = run(make_image(40, 40), target=["jpeg-ls", "rle"])
    assert (result.state, result.code) == ("failed", "out_of_memory")
    assert "2.1 GiB" in result.message and result.copied


def test_the_decoded_source_does_not_carry_the_source_file_along() -> None:
    # a data set read from bytes keeps them as its buffer; every deep copy of the
    # dataset (one per encode) would copy the whole file again
    from worker.codec.parse import read_dataset

    data = to_bytes(make_image(64, 64, frames=4))
    parsed = read_dataset(data)
    assert parsed.buffer is not None  # pydicom's behaviour, which this guards against
    source = compress_module.decode_source(parsed)
    assert getattr(source.dataset, "buffer", None) is None
    assert "PixelData" not in source.dataset


def test_multi_frame_verification_decodes_each_frame_and_sees_the_last_pixel() -> None:
    from worker.codec.parse import read_dataset

    ds = make_image(32, 32, frames=3, bits_stored=12)
    result = run(ds, target=["rle"], min_ratio=0)
    assert result.output is not None
    source = compress_module.decode_source(read_dataset(to_bytes(ds)))
    target = TARGETS["rle"]
    assert verify_module.verify(result.output, source, target, 0).max_error == 0
    source.pixels = source.pixels.copy()
    source.pixels[2, 31, 31] ^= 1  # the last pixel of the last frame
    with pytest.raises(PermanentError, match="differs from the source by up to 1"):
        verify_module.verify(result.output, source, target, 0)


def _header_rich_source(frames: int) -> Any:
    """A decoded source with what a copy could share by mistake: sequences, nested
    items, multiple values, a person name, a private block and per-frame groups."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from tests.synthetic import enhanced_ct
    from worker.codec.compress import decode_source
    from worker.codec.parse import read_dataset

    ds = enhanced_ct(frames=frames) if frames > 1 else make_image(64, 64, bits_stored=12)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = "Doe^Jane"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    ds.SourceImageSequence = Sequence([item])
    ds.DerivationDescription = "earlier"
    ds.private_block(0x0009, "DCMPRESS TEST", create=True).add_new(0x01, "LO", "kept")
    return decode_source(read_dataset(to_bytes(ds)))  # as the engine reads: all converted


@pytest.mark.parametrize("frames", [1, 3], ids=["single-frame", "enhanced-multi-frame"])
@pytest.mark.parametrize("name", ["rle", "jpeg-ls", "j2k-lossy", "jpeg-ls-near"])
def test_encoding_a_result_leaves_the_source_data_set_as_it_was(name: str, frames: int) -> None:
    """Each result is made from a copy (worker.codec.compress.detached_copy); a fallback
    target, auto's next candidate and the verification read the source after it."""
    import copy

    from pydicom.uid import UID

    from worker.codec.compress import encode

    source = _header_rich_source(frames)
    before = copy.deepcopy(source.dataset)
    target = TARGETS[name]
    options = CompressionOptions(target=name, generate_instance_uid=True)
    result = encode(source, target, resolve_plugin(target), options)
    assert source.dataset == before
    assert source.dataset.file_meta == before.file_meta
    assert result.SOPInstanceUID != source.dataset.SOPInstanceUID
    assert result.file_meta.TransferSyntaxUID == UID(target.uid)
    assert "PixelData" not in source.dataset
    if target.lossy:  # the attributes that change nested items, in place on the copy
        assert result.ImageType[0] == "DERIVED" and source.dataset.ImageType[0] == "ORIGINAL"
        assert result.LossyImageCompression == "01" and "LossyImageCompression" not in before


def test_the_copy_of_a_result_relies_on_pydicom_internals_that_still_exist() -> None:
    from pydicom.dataelem import DataElement

    from worker.codec.compress import detached_copy

    source = _header_rich_source(1).dataset
    copied = detached_copy(source)
    assert copied == source and copied._dict is not source._dict
    for tag, element in source._dict.items():
        assert copied._dict[tag] is not element  # no element object shared
        assert isinstance(element, DataElement) and hasattr(element, "_value")
    assert copied.SourceImageSequence[0] is not source.SourceImageSequence[0]
    assert copied.ImageType is not source.ImageType
    assert copied.file_meta is not source.file_meta
    copied.ImageType[0] = "DERIVED"
    copied.SourceImageSequence[0].ReferencedSOPInstanceUID = "9.9"
    copied.BitsStored = 16
    copied.private_block(0x0009, "DCMPRESS TEST")[0x01].value = "changed"
    assert source.ImageType[0] == "ORIGINAL"
    assert source.SourceImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4"
    assert source.BitsStored == 12
    assert source.private_block(0x0009, "DCMPRESS TEST")[0x01].value == "kept"


def _as_stored(data: bytes, tag: int) -> tuple[str, int, bytes]:
    """VR, length and value bytes of element ``tag`` as the file stores them."""
    element = read(data).get_item(tag)
    assert element.is_raw  # read(), unlike the engine, parses nothing before use
    return str(element.VR), int(element.length), bytes(element.value)


def test_an_explicit_vr_header_is_written_as_read_not_parsed_and_re_encoded() -> None:
    """What the engine does not read goes out byte for byte (parsing a real header
    element by element cost more than encoding a small image). A value pydicom would
    re-encode differently shows it: trailing spaces, which parsing strips."""
    ds = make_image(32, 32, bits_stored=12)
    ds.private_block(0x0009, "DCMPRESS TEST", create=True).add_new(0x01, "LO", "ab  ")
    data = to_bytes(ds)
    result = run(data, target="rle")
    assert result.state == "done", result.message
    assert isinstance(result.output, bytes)
    tag = 0x00091001
    assert _as_stored(data, tag) == ("LO", 4, b"ab  ")  # re-encoded: b"ab"
    assert _as_stored(result.output, tag) == _as_stored(data, tag)


def _with_raw_element(data: bytes, before: int, element: bytes) -> bytes:
    """``data`` with the encoded ``element`` inserted in front of element ``before``."""
    tag = (before >> 16).to_bytes(2, "little") + (before & 0xFFFF).to_bytes(2, "little")
    at = data.index(tag, 132)
    return data[:at] + element + data[at:]


def _sequence(value: bytes) -> bytes:
    """(0008,1140) Referenced Image Sequence of explicit length holding ``value``."""
    return b"\x08\x00\x40\x11SQ\x00\x00" + len(value).to_bytes(4, "little") + value


@pytest.mark.parametrize(
    "value",
    [
        # not an item at all: 2 MiB of bytes where items should be
        b"\x01\x02\x03\x04" * (512 * 1024),
        # one item whose first element claims more than the item holds
        b"\xfe\xff\x00\xe0"
        + (2**21 + 10).to_bytes(4, "little")
        + b"\x08\x00\x50\x11UI\xf0\xff1.2\x00"
        + b"\x00" * 2**21,
    ],
    ids=["no-items", "overlong-element"],
)
@pytest.mark.parametrize("opened", ["local-file", "spooled-download"])
def test_a_value_left_in_the_source_file_is_written_as_stored(
    tmp_path: Any, value: bytes, opened: str
) -> None:
    """A value of parse.DEFER_SIZE or more is read from the file only after the header
    (a large object is not read whole to look at it). It goes out byte for byte like
    the values read with the header: parsing a corrupt sequence and writing it again
    changed it silently (the overlong one came out 2 MiB shorter)."""
    data = _with_raw_element(
        to_bytes(make_image(32, 32, bits_stored=12)), 0x00280002, _sequence(value)
    )
    path = tmp_path / "in.dcm"
    path.write_bytes(data)
    # as `dcmpress compress` opens a large file, and as a worker spools a large object
    with path.open("rb") if opened == "local-file" else tempfile.TemporaryFile() as source:
        if opened == "spooled-download":
            source.write(data)
            source.seek(0)
        from_file = process(source, CompressionOptions(target="rle"))
    from_bytes = run(data, target="rle")
    for result in (from_file, from_bytes):
        assert result.state == "done", result.message
        assert isinstance(result.output, bytes)
        assert _sequence(value) in result.output
    assert from_file.output == from_bytes.output
