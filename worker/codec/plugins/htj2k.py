"""HTJ2K lossless with imagecodecs' OpenJPH coder: a pydicom encoding plugin.

High-Throughput JPEG 2000 (ISO/IEC 15444-15) keeps JPEG 2000's codestream and swaps
its block coder for a much faster one. Each frame is one raw J2C codestream (no JP2
boxes, PS3.5 A.4.4): reversible 5/3 wavelet, one tile, one quality layer, RPCL
progression (OpenJPH's order), a CAP marker saying HT code-blocks. For HTJ2K Lossless
RPCL (.202) PS3.5 10.18 also asks for Tile-part Length (TLM) markers and enough
decomposition levels for the lowest resolution to be at most 64 pixels a side.

Colour (PS3.5 8.2.4, which Table 8.2.4-1 also applies to the HTJ2K syntaxes, like
pydicom's J2K encoder): the reversible colour transform (RCT) is used exactly when the
data set says ``YBR_RCT``; ``RGB`` and ``YBR_FULL`` are coded without a multiple
component transform, as the standard allows for them only then. dcmpress itself asks
for the RCT on RGB, as for every JPEG 2000 syntax (``worker.codec.compress``):
photographs and slides shrink about 2x more, and the colour IODs require it.
The codestream's precision is the sample container's (8, 16 or 32 bits) with the
signedness of Pixel Representation: OpenJPH through imagecodecs takes no precision, and
a 12-bit value is exact in a 16-bit component.

Decoding is pydicom's own (pylibjpeg-openjpeg, OpenJPEG): verification never uses the
library that encoded. Registered as plugin ``imagecodecs`` of new pydicom encoders for
HTJ2K Lossless (.201) and HTJ2K Lossless RPCL (.202) (:func:`register`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydicom.pixels.encoders.base import ENCODING_PROFILES
from pydicom.uid import UID, JPEG2000Lossless

from worker.codec.plugins import extend
from worker.codec.plugins.base import Plugin, Quirks

LABEL = "imagecodecs"
HTJ2K_LOSSLESS = UID("1.2.840.10008.1.2.4.201")
HTJ2K_LOSSLESS_RPCL = UID("1.2.840.10008.1.2.4.202")
SYNTAXES = (HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL)
MIN_VERSION = "2026.3.6"  # the imagecodecs release tested (OpenJPH 0.26)
ENCODER_DEPENDENCIES = {uid: (f"imagecodecs>={MIN_VERSION}",) for uid in SYNTAXES}
# OpenJPH's default, and what .201 gets; .202 gets more where the image needs them
DECOMPOSITIONS = 5
THUMBNAIL_SIDE = 64  # PS3.5 10.18: the base resolution of .202 at most this
MAX_DECOMPOSITIONS = 32  # ISO/IEC 15444-1 A.6.1
# Table 8.2.4-1: the JPEG 2000 lossless rows, as pydicom has them for .90
PROFILE = list(ENCODING_PROFILES[JPEG2000Lossless])


def is_available(uid: str) -> bool:
    """True if imagecodecs with its HTJ2K codec is installed (pydicom's interface)."""
    if uid not in SYNTAXES:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(getattr(getattr(imagecodecs, "HTJ2K", None), "available", False))


def decompositions(rows: int, columns: int, uid: str) -> int:
    """Wavelet levels: OpenJPH's default, or for RPCL enough for a <= 64 px base."""
    if uid != HTJ2K_LOSSLESS_RPCL:
        return DECOMPOSITIONS
    needed = math.ceil(math.log2(max(rows, columns, 1) / THUMBNAIL_SIDE))
    return min(MAX_DECOMPOSITIONS, max(DECOMPOSITIONS, needed))


def frame_array(src: bytes, runner: Any) -> np.ndarray:
    """One frame of pydicom's encoder input as an array of rows, columns (, samples).

    pydicom hands over little-endian samples sized for Bits Stored (1, 2 or 4 bytes),
    two's complement where Pixel Representation is 1.
    """
    if runner.get_option("byteorder", "<") == ">":
        raise ValueError("Unsupported option \"byteorder = '>'\"")
    bits_stored = int(runner.bits_stored)
    size = 1 if bits_stored <= 8 else 2 if bits_stored <= 16 else 4
    kind = "i" if runner.pixel_representation else "u"
    rows, columns, samples = int(runner.rows), int(runner.columns), int(runner.samples_per_pixel)
    data = np.frombuffer(src, dtype=f"<{kind}{size}")
    if data.size != rows * columns * samples:
        raise ValueError(f"frame of {data.size} samples, expected {rows * columns * samples}")
    if samples == 1:
        return data.reshape(rows, columns)
    if runner.get_option("planar_configuration", 0) == 1:
        return data.reshape(samples, rows, columns).transpose(1, 2, 0)
    return data.reshape(rows, columns, samples)


def encode_frame(src: bytes, runner: Any) -> bytes:
    """One frame as an HTJ2K lossless codestream (pydicom's plugin interface)."""
    import imagecodecs

    arr = frame_array(src, runner)
    uid = str(runner.transfer_syntax)
    options: dict[str, Any] = {
        "reversible": True,
        "resolutions": decompositions(int(runner.rows), int(runner.columns), uid),
        "tlm": uid == HTJ2K_LOSSLESS_RPCL,
    }
    if arr.ndim == 3:  # the RCT exactly when the result says so (PS3.5 8.2.4)
        options["rgb"] = runner.photometric_interpretation == "YBR_RCT"
        arr = np.ascontiguousarray(arr)
    return bytes(imagecodecs.htj2k_encode(arr, **options))


def register() -> None:
    """Create pydicom's HTJ2K lossless encoders with this plugin (once)."""
    for uid in SYNTAXES:
        encoder = extend.encoder(uid, PROFILE)
        extend.add_plugin(encoder, LABEL, __name__, "encode_frame")


IMAGECODECS_HTJ2K = Plugin(LABEL, ("imagecodecs",), quirks=Quirks())
