"""RLE Lossless with imagecodecs' PackBits coder in C: a pydicom encoding plugin.

DICOM RLE (PS3.5 Annex G) is PackBits per byte plane: each frame splits into one
segment per byte of each sample, most significant byte first, every row coded on its
own, each segment padded to an even length, behind a 64-byte header of segment
offsets. The planes are cut with numpy and each is coded by
``imagecodecs.packbits_encode`` along its rows; pydicom's own RLE plugin does the same
byte by byte in Python; pylibjpeg-rle's encode takes 2.5-3x as long. The result is
verified like any other (decoded by pylibjpeg-rle or pydicom) before it is kept.

Registered with pydicom's RLE encoder as the plugin ``imagecodecs``
(:func:`register`); pydicom calls :func:`encode_frame` once per frame.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
from pydicom.pixels.encoders.base import RLELosslessEncoder
from pydicom.uid import RLELossless

from worker.codec.plugins.base import Plugin
from worker.codec.plugins.rle import RleQuirks

LABEL = "imagecodecs"
ENCODER_DEPENDENCIES = {RLELossless: ("imagecodecs",)}
MAX_SEGMENTS = 15  # PS3.5 G.5: the header has room for 15 offsets


def is_available(uid: str) -> bool:
    """True if imagecodecs is installed (pydicom's plugin interface)."""
    if uid != RLELossless:
        return False
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        return False
    return True


def encode_frame(src: bytes, runner: Any) -> bytes:
    """One frame of little-endian, sample-interleaved pixel bytes as DICOM RLE."""
    import imagecodecs

    if runner.get_option("byteorder", "<") == ">":
        raise ValueError("Unsupported option \"byteorder = '>'\"")
    width = math.ceil(runner.bits_allocated / 8)
    count = width * runner.samples_per_pixel
    if count > MAX_SEGMENTS:
        raise ValueError(
            f"{count} byte segments: DICOM RLE allows at most {MAX_SEGMENTS} per frame"
        )
    rows, columns = runner.rows, runner.columns
    data = np.frombuffer(src, dtype=np.uint8)
    if data.size != rows * columns * count:
        raise ValueError(f"frame of {data.size} bytes, expected {rows * columns * count}")
    planes = data.reshape(rows, columns, count)
    segments = []
    for sample in range(runner.samples_per_pixel):
        for byte in reversed(range(width)):  # most significant byte first
            plane = planes[:, :, byte + width * sample]
            # every row coded on its own (the standard's rule): one call along the rows
            # is 2.3x faster than a call per row and gives the same bytes
            try:
                segment = imagecodecs.packbits_encode(plane, axis=-1)
            except ValueError:  # a 1x1 plane: "not contiguous along axis 1"
                segment = b"".join(imagecodecs.packbits_encode(row.tobytes()) for row in plane)
            segments.append(segment + b"\x00" * (len(segment) % 2))
    offsets = [64]
    for segment in segments[:-1]:
        offsets.append(offsets[-1] + len(segment))
    header = struct.pack(f"<{1 + len(offsets)}L", len(segments), *offsets)
    return b"".join([header.ljust(64, b"\x00"), *segments])


def register() -> None:
    """Add the plugin to pydicom's RLE encoder (once)."""
    if LABEL not in RLELosslessEncoder.available_plugins and LABEL not in getattr(
        RLELosslessEncoder, "_unavailable", {}
    ):
        RLELosslessEncoder.add_plugin(LABEL, (__name__, "encode_frame"))


IMAGECODECS_RLE = Plugin(LABEL, ("imagecodecs",), quirks=RleQuirks())
