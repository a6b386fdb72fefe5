"""pyjpegls (CharLS): JPEG-LS lossless and near-lossless.

* Tiny images: CharLS refuses some images of a few pixels.
* Signed samples with Bits Stored < Bits Allocated: JPEG-LS knows no sign (ISO/IEC
  14495-1 codes unsigned samples of precision P), and PS3.5 8.2.3 asks only that the
  data set be consistent with the stream. Coded with P = Bits Stored, a negative value
  becomes its Bits Stored-bit two's complement pattern, and a reader that takes the
  decoded 16-bit word as the value (Orthanc, DCMTK-based viewers) shows -1 as
  2**BitsStored - 1; pydicom hides it (it sign-extends from Bits Stored). So signed
  samples are coded as whole sign-extended words, P = Bits Allocated, as DCMTK's
  ``dcmcjpls`` and dcm4che (``bitsCompressed=-16``) write them: the decoded words are
  the values for every reader, and those that mask to Bits Stored get them too (PS3.5
  8.1.1: receivers assume nothing of the unused bits). Measured: +0.5-0.9 % in size on
  noisy 12-bit CT-like images, +5.6 % on a noise-free one.
* Bits Stored <= 8 in 16 bits allocated: a stream of P <= 8 decodes to 8-bit samples,
  which DCMTK refuses ("Image data mismatch between DICOM header and JPEG-LS
  bitstream"), GDCM 3.0 aborts on, and Orthanc 1.10 (its GDCM plugin) crashes on; so
  these are coded whole too, P = Bits Allocated.
* Signed near-lossless: a reconstruction within ``jls_error`` of the Bits Stored limits
  can leave the Bits Stored range (P = Bits Allocated) or wrap to its other end (P =
  Bits Stored = Bits Allocated): such images are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from worker.codec.plugins.base import Plugin, TinyImagesQuirks, as_whole_words
from worker.errors import UnsupportedImage

if TYPE_CHECKING:
    from worker.codec.compress import SourceImage
    from worker.codec.options import CompressionOptions
    from worker.codec.targets import Target


class PyjpeglsQuirks(TinyImagesQuirks):
    """CharLS through pyjpegls."""

    def refuse(self, source: SourceImage, target: Target, options: CompressionOptions) -> None:
        if "jls_error" in target.options and int(source.dataset.PixelRepresentation) == 1:
            _refuse_wrapping_signed_values(source, options.jls_error)

    def prepare(self, ds: Dataset) -> Callable[[Dataset], None]:
        bits_stored, bits_allocated = int(ds.BitsStored), int(ds.BitsAllocated)
        signed = int(ds.PixelRepresentation) == 1
        if bits_stored >= bits_allocated or not (signed or bits_stored <= 8):
            return super().prepare(ds)
        return as_whole_words(ds)  # P = Bits Allocated


def _refuse_wrapping_signed_values(source: SourceImage, jls_error: int) -> None:
    half = 2 ** (source.bits_stored - 1)
    low, high = -half + jls_error, half - 1 - jls_error
    pixels = source.pixels
    if pixels.size and (int(pixels.min()) < low or int(pixels.max()) > high):
        raise UnsupportedImage(
            "signed_near_lossless",
            f"signed pixels span {int(pixels.min())}..{int(pixels.max())}; JPEG-LS "
            f"near-lossless with jls_error {jls_error} is safe only within {low}..{high}",
        )


PYJPEGLS = Plugin("pyjpegls", ("pyjpegls",), quirks=PyjpeglsQuirks())
