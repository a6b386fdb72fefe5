"""pyjpegls (CharLS): JPEG-LS lossless and near-lossless.

* Tiny images: CharLS refuses some images of a few pixels.
* Signed near-lossless: pyjpegls codes signed samples as their two's-complement bit
  pattern, so the reconstruction of a value within ``jls_error`` of the Bits Stored
  limits can wrap to the other end of the range (an error of 2**BitsStored - 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.codec.plugins.base import Plugin, TinyImagesQuirks
from worker.errors import UnsupportedImage

if TYPE_CHECKING:
    from worker.codec.compress import SourceImage
    from worker.codec.targets import Target
    from worker.settings import CompressionOptions


class PyjpeglsQuirks(TinyImagesQuirks):
    """CharLS through pyjpegls."""

    def refuse(self, source: SourceImage, target: Target, options: CompressionOptions) -> None:
        if "jls_error" in target.options and int(source.dataset.PixelRepresentation) == 1:
            _refuse_wrapping_signed_values(source, options.jls_error)


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
