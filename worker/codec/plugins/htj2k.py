"""HTJ2K lossless with imagecodecs' OpenJPH coder: a pydicom encoding plugin.

High-Throughput JPEG 2000 (ISO/IEC 15444-15) keeps JPEG 2000's codestream and swaps
its block coder for a much faster one. Each frame is one raw J2C codestream (no JP2
boxes, PS3.5 A.4.4): reversible 5/3 wavelet, one tile, one quality layer, RPCL
progression, a CAP marker saying HT code-blocks. dcmpress writes HTJ2K Lossless RPCL
(.202), which PS3.5 10.18 defines by RPCL order, Tile-part Length (TLM) markers and
enough decomposition levels for the base resolution to be at most 64 pixels a side;
each resolution is its own tile-part, so a TLM entry finds every resolution break
(what progressive viewers and AWS HealthImaging fetch). imagecodecs writes TLM from
2026.1.14; the pinned 2026.3.6 always can. A .202 codestream is a valid .201 one: a
decoder that knows only .201 reads it.

Precision (PS3.5 8.2.4: the data set consistent with the codestream): SIZ says Bits
Stored and the sign of Pixel Representation. imagecodecs on Python 3.11 (up to
2026.3.6) takes no bit depth: it codes the container (8 or 16 bits). So a narrower
value is coded in its container and SIZ's Ssiz bytes say Bits Stored afterwards
(:func:`with_precision`); unsigned values are first shifted to two's complement (minus
2^(Bits Stored - 1)) and coded signed, so that the encoder applies no level shift and
the decoder applies the one the unsigned Bits Stored precision asks for (ISO/IEC
15444-1 G.1.2, after the inverse colour transform). The QCD and CAP segments keep the
container's bit-plane bounds: upper bounds, valid, a few bytes per frame.

Colour: the colour transform (RCT) exactly when the data set says ``YBR_RCT``
(``worker.codec.colour`` decides when it asks for it).

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
SOC_SIZ = b"\xff\x4f\xff\x51"  # a raw codestream: SIZ right after SOC (ISO/IEC 15444-1 A.5)
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
    levels = decompositions(int(runner.rows), int(runner.columns), uid)
    options: dict[str, Any] = {"reversible": True, "resolutions": levels}
    if uid == HTJ2K_LOSSLESS_RPCL:  # PS3.5 10.18, a tile-part per resolution
        options.update(tlm=True, tilepart=imagecodecs.HTJ2K.TILEPART.RESOLUTIONS)
    if arr.ndim == 3:  # the RCT exactly when the result says so (PS3.5 8.2.4)
        options.update(rgb=runner.photometric_interpretation == "YBR_RCT", planar=False)
        arr = np.ascontiguousarray(arr)
    bits_stored, signed = int(runner.bits_stored), bool(runner.pixel_representation)
    if bits_stored == arr.dtype.itemsize * 8:
        return bytes(imagecodecs.htj2k_encode(arr, **options))
    _check_range(arr, bits_stored, signed)
    if not signed:  # coded signed: no level shift by the encoder (see the module's doc)
        arr = (arr.astype(np.int32) - (1 << (bits_stored - 1))).astype(
            arr.dtype.str.replace("u", "i")
        )
    return with_precision(bytes(imagecodecs.htj2k_encode(arr, **options)), bits_stored, signed)


def _check_range(arr: np.ndarray, bits: int, signed: bool) -> None:
    """ValueError if a sample is outside ``bits`` (OpenJPEG would clip it silently)."""
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if arr.size and (int(arr.min()) < low or int(arr.max()) > high):
        raise ValueError(f"samples {int(arr.min())}..{int(arr.max())} outside {bits} bits")


def with_precision(codestream: bytes, bits: int, signed: bool) -> bytes:
    """``codestream`` whose SIZ says ``bits`` and ``signed`` for every component."""
    if codestream[:4] != SOC_SIZ:
        raise ValueError("the codestream does not begin with SOC and SIZ")
    result = bytearray(codestream)
    components = int.from_bytes(result[40:42], "big")  # Csiz
    for index in range(components):  # Ssiz: sign bit, precision - 1
        result[42 + 3 * index] = (0x80 if signed else 0) | (bits - 1)
    return bytes(result)


def register() -> None:
    """Create pydicom's HTJ2K lossless encoders with this plugin (once)."""
    for uid in SYNTAXES:
        encoder = extend.encoder(uid, PROFILE)
        extend.add_plugin(encoder, LABEL, __name__, "encode_frame")


IMAGECODECS_HTJ2K = Plugin(LABEL, ("imagecodecs",), quirks=Quirks())
