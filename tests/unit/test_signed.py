"""Signed pixels whose decoded words are the values, for every reader.

A reader that takes a decoded 16-bit word as the value (Orthanc, DCMTK-based viewers)
does not sign-extend from Bits Stored as pydicom does; so every output is read here
with pydicom's corrections off (``EXACT_DECODING``), by two decoders where there are
two, and JPEG-LS must code signed samples with P = Bits Allocated (PS3.5 8.2.3 asks
only consistency; DCMTK and dcm4che code them so).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import compress
from pydicom.uid import JPEGLSLossless

from dcmpress.stack.samples import make_image, to_bytes
from tests.support import read, run, source_pixels
from worker.codec.compress import decode_source
from worker.codec.targets import TARGETS
from worker.codec.verify import EXACT_DECODING, verify
from worker.errors import PermanentError

LOSSLESS = [name for name, target in TARGETS.items() if not target.lossy]
# decoders that are not the verifying one, where pydicom has them
OTHER_DECODERS = {"jpeg-ls": "gdcm", "jpeg-ls-near": "gdcm", "rle": "pydicom", "j2k": "gdcm"}


def ct_like(bits_stored: int) -> np.ndarray:
    """Smooth signed values around air and bone, as a CT holds them."""
    y, x = np.mgrid[0:64, 0:64]
    values = (np.hypot(y - 32, x - 32) * 40 - 1000).astype(np.int32)
    limit = 2 ** (bits_stored - 1)
    return np.clip(values, -limit + 8, limit - 9).astype(np.int16)


def signed_image(bits_stored: int) -> Dataset:
    ds = make_image(64, 64, bits_stored=bits_stored, signed=True)
    ds.PixelData = ct_like(bits_stored).tobytes()
    return ds


def jls_precision(data: bytes) -> int:
    """P of the first frame's SOF55 marker segment."""
    frame = next(generate_frames(read(data).PixelData, number_of_frames=1))
    return frame[frame.index(b"\xff\xf7") + 4]


@pytest.mark.parametrize("bits_stored", [12, 14, 16])
@pytest.mark.parametrize("target", [*LOSSLESS, "jpeg-ls-near"])
def test_decoded_words_are_the_signed_values(target: str, bits_stored: int) -> None:
    ds = signed_image(bits_stored)
    source = source_pixels(ds)
    assert source.min() < 0
    result = run(ds, target=[target], min_ratio=0)
    assert (result.state, result.target) == ("done", target), result.message
    out = read(result.output or b"")
    syntax = out.file_meta.TransferSyntaxUID
    allowed = 2 if target == "jpeg-ls-near" else 0
    plugins = [TARGETS[target].decoder(), OTHER_DECODERS.get(target, "")]
    for plugin in dict.fromkeys(p for p in plugins if p):
        words, _ = get_decoder(syntax).as_array(
            out, raw=True, decoding_plugin=plugin, **EXACT_DECODING
        )
        error = np.abs(words.astype(np.int32) - source.astype(np.int32)).max()
        assert words.dtype == np.int16 and error <= allowed, (plugin, error)
        # a reader masking to Bits Stored and sign-extending gets the same values
        masked = words.astype(np.int32) & ((1 << bits_stored) - 1)
        extended = np.where(masked >= 2 ** (bits_stored - 1), masked - 2**bits_stored, masked)
        assert np.abs(extended - source).max() <= allowed
    if target.startswith("jpeg-ls"):
        assert jls_precision(result.output or b"") == 16


def test_unsigned_jpeg_ls_keeps_precision_bits_stored() -> None:
    result = run(make_image(64, 64, bits_stored=12), target=["jpeg-ls"])
    assert jls_precision(result.output or b"") == 12


@pytest.mark.parametrize("target", ["jpeg-ls", "jpeg-ls-near"])
def test_8_bits_stored_in_16_allocated_are_coded_as_16_bit_words(target: str) -> None:
    """A stream of P <= 8 decodes to 8-bit samples, which DCMTK refuses for Bits
    Allocated 16, GDCM 3.0 aborts on and Orthanc 1.10 crashed on (tests/integration/
    test_readers.py reads them in all three)."""
    ds = make_image(64, 64, bits_stored=8)
    result = run(ds, target=[target], min_ratio=0)
    out = read(result.output or b"")
    assert (out.BitsAllocated, out.BitsStored, out.HighBit) == (16, 8, 7)
    assert jls_precision(result.output or b"") == 16
    words, _ = get_decoder(out.file_meta.TransferSyntaxUID).as_array(out, **EXACT_DECODING)
    error = np.abs(words.astype(np.int32) - source_pixels(ds).astype(np.int32)).max()
    assert error <= (2 if target == "jpeg-ls-near" else 0)


def test_signed_jpeg_ls_coded_with_p_bits_stored_fails_verification() -> None:
    """What dcmpress wrote before: right for pydicom, value + 4096 for a PACS."""
    ds = signed_image(12)
    data = to_bytes(ds)
    parsed = read(data)
    pixels = parsed.pixel_array
    compress(parsed, JPEGLSLossless, pixels, encoding_plugin="pyjpegls")
    output = io.BytesIO()
    parsed.save_as(output, enforce_file_format=True)
    assert jls_precision(output.getvalue()) == 12
    source = decode_source(dcmread(io.BytesIO(data)))
    with pytest.raises(PermanentError) as caught:
        verify(output.getvalue(), source, TARGETS["jpeg-ls"], 0)
    assert caught.value.code == "verification_failed"
