"""JPEG XL lossless with imagecodecs' libjxl: a pydicom encoding and decoding plugin.

JPEG XL Lossless (1.2.840.10008.1.2.4.110, PS3.5 8.2.15 and A.4.11; Supplement 232)
is newer than pydicom 3.0, which has neither its UID nor a coder: :func:`register`
adds the UID, an encoder and a decoder, each with plugin ``imagecodecs``. Each frame
is one JPEG XL codestream, modular mode, lossless (``JxlEncoderSetFrameLossless``, the
original colour profile kept): bare up to 12 bits stored; above, a level 10 codestream,
which libjxl puts in the JPEG XL container with the Level box ISO/IEC 18181-2 asks
for (decoders read both forms). At effort
:data:`DEFAULT_EFFORT` unless the plugin option ``jpegxl_effort`` says otherwise
(1-10; measured on a 512x512 12-bit CT: effort 1 ~600 MB/s, 2 ~60 MB/s for ~8 %
less, 5 ~5 MB/s).

* The codestream's bit depth is Bits Stored, its samples the raw values (no scaling).
* JPEG XL has no signed samples: signed pixels are coded as whole sign-extended words,
  bit depth Bits Allocated, as signed JPEG-LS is (worker/codec/plugins/pyjpegls.py): the
  decoded words are the values, for readers that sign-extend from High Bit and those
  that do not. Verification reads the words as the decoder gives them.
* Colour: RGB stays RGB (JPEG XL's lossless colour transforms are inside the
  codestream). Other photometric interpretations are outside :data:`PROFILE`.

Few viewers decode JPEG XL yet, so it is never a default target. Verification decodes
with the same library (libjxl): nothing else decodes JPEG XL here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.pixels.encoders.base import ProfileType

from worker.codec.plugins import extend
from worker.codec.plugins.base import Plugin, Quirks
from worker.codec.plugins.htj2k import MIN_VERSION, frame_array

LABEL = "imagecodecs"
JPEG_XL_LOSSLESS = extend.add_transfer_syntax(
    "1.2.840.10008.1.2.4.110", "JPEG XL Lossless", "JPEGXLLossless"
)
ENCODER_DEPENDENCIES = {JPEG_XL_LOSSLESS: (f"imagecodecs>={MIN_VERSION}",)}
DECODER_DEPENDENCIES = ENCODER_DEPENDENCIES
DEFAULT_EFFORT = 1
# Table 8.2.15-1, lossless: monochrome signed or not, RGB, 8 or 16 bits allocated. YBR_FULL
# is the JPEG recompression syntax's; PALETTE COLOR is left out until confirmed there.
PROFILE: list[ProfileType] = [
    ("MONOCHROME1", 1, (0, 1), (8, 16), range(1, 17)),
    ("MONOCHROME2", 1, (0, 1), (8, 16), range(1, 17)),
    ("RGB", 3, (0,), (8, 16), range(1, 17)),
]


def is_available(uid: str) -> bool:
    """True if imagecodecs with its JPEG XL codec is installed (pydicom's interface)."""
    if uid != JPEG_XL_LOSSLESS:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(getattr(getattr(imagecodecs, "JPEGXL", None), "available", False))


def encode_frame(src: bytes, runner: Any) -> bytes:
    """One frame as a lossless JPEG XL codestream (pydicom's plugin interface)."""
    import imagecodecs

    bits_stored = int(runner.bits_stored)
    if bits_stored > 16:
        raise ValueError(f"JPEG XL Lossless takes at most 16 bits stored, not {bits_stored}")
    arr = frame_array(src, runner)
    if arr.dtype.kind == "i":  # whole sign-extended words
        bits_stored = max(8, int(runner.bits_allocated))
        arr = arr.astype(f"<i{bits_stored // 8}")
    unsigned = arr.view(arr.dtype.str.replace("i", "u"))  # two's complement as is
    effort = int(runner.get_option("jpegxl_effort", DEFAULT_EFFORT))
    return bytes(
        imagecodecs.jpegxl_encode(
            np.ascontiguousarray(unsigned),
            lossless=True,
            effort=effort,
            bitspersample=bits_stored,
            photometric="gray" if arr.ndim == 2 else "rgb",
            numthreads=1,  # one worker process per core already
        )
    )


def decode_frame(src: bytes, runner: Any) -> bytes:
    """One JPEG XL frame as little-endian samples in Bits Allocated containers."""
    import imagecodecs

    arr = imagecodecs.jpegxl_decode(src, numthreads=1)
    rows, columns, samples = int(runner.rows), int(runner.columns), int(runner.samples_per_pixel)
    expected = (rows, columns) if samples == 1 else (rows, columns, samples)
    if arr.shape != expected:
        raise ValueError(f"the JPEG XL frame is {arr.shape}, the data set says {expected}")
    if arr.dtype.kind != "u":
        raise ValueError(f"the JPEG XL frame holds {arr.dtype} samples, not integers")
    container = max(8, int(runner.bits_allocated))
    runner.set_option("planar_configuration", 0)
    return bytes(arr.astype(f"<u{container // 8}").tobytes())


def register() -> None:
    """Create pydicom's JPEG XL Lossless encoder and decoder with this plugin (once)."""
    extend.add_plugin(extend.encoder(JPEG_XL_LOSSLESS, PROFILE), LABEL, __name__, "encode_frame")
    extend.add_plugin(extend.decoder(JPEG_XL_LOSSLESS), LABEL, __name__, "decode_frame")


IMAGECODECS_JPEGXL = Plugin(LABEL, ("imagecodecs",), quirks=Quirks())
