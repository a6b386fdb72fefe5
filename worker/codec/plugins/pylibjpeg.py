"""pylibjpeg: JPEG 2000 through pylibjpeg-openjpeg, RLE through pylibjpeg-rle.

* openjpeg's encoder uses 6 resolution levels, so each side needs 2**5 = 32 pixels;
  it also refuses some tiny images.
* RLE: see :mod:`worker.codec.plugins.rle` (shared by every RLE plugin).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.codec.plugins.base import Plugin, TinyImagesQuirks
from worker.codec.plugins.rle import RleQuirks
from worker.errors import UnsupportedImage

if TYPE_CHECKING:
    from worker.codec.compress import SourceImage
    from worker.codec.options import CompressionOptions
    from worker.codec.targets import Target

J2K_MIN_SIDE = 32


class OpenjpegQuirks(TinyImagesQuirks):
    """openjpeg through pylibjpeg-openjpeg."""

    def refuse(self, source: SourceImage, target: Target, options: CompressionOptions) -> None:
        rows, columns = int(source.dataset.Rows), int(source.dataset.Columns)
        if min(rows, columns) < J2K_MIN_SIDE:
            raise UnsupportedImage(
                "image_too_small",
                f"{target.name} needs both sides >= {J2K_MIN_SIDE} px, image is {rows}x{columns}",
            )


PYLIBJPEG_J2K = Plugin("pylibjpeg", ("pylibjpeg", "pylibjpeg-openjpeg"), quirks=OpenjpegQuirks())
PYLIBJPEG_RLE = Plugin("pylibjpeg", ("pylibjpeg", "pylibjpeg-rle"), quirks=RleQuirks())
