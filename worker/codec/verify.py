"""Decode a compressed result and prove it matches the source pixels.

Lossless targets must decode bit-identical; ``jpeg-ls-near`` within ``jls_error``;
lossy JPEG 2000 records the PSNR it achieved; overlay planes moved out of the source's
high bits must decode identical. The check decodes the *serialised* bytes, exactly
what will be uploaded, not the in-memory dataset.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder

from worker.codec.overlays import check_overlays
from worker.codec.targets import Target
from worker.errors import PermanentError, raise_outside_causes

if TYPE_CHECKING:
    from worker.codec.compress import SourceImage


@dataclass(frozen=True)
class Verification:
    """What the decode of the result showed."""

    max_error: int
    psnr: float | None  # dB; None when identical (infinite)


def decode_raw(data: bytes, plugin: str = "") -> np.ndarray:
    """Decode the pixels of a Part 10 file without colour conversion."""
    return _decode(dcmread(io.BytesIO(data)), plugin)


# Decoding options that give a result's pixels exactly as its decoder returns them.
# pydicom corrects decoded words from the data set: it shifts away the bits above Bits
# Stored, sign-extends JPEG-LS samples from Bits Stored, and gives a JPEG 2000 stream the
# sign Pixel Representation says. A viewer or a PACS that takes the decoded words as the
# values does none of that, so a result is compared with the source as its decoder gives
# it: a signed JPEG-LS coded with P = Bits Stored, an RLE encoder that set high bits, a
# JPEG 2000 stream of the wrong sign all differ.
EXACT_DECODING: dict[str, Any] = {
    "correct_unused_bits": False,
    "apply_jls_sign_correction": False,
    "apply_j2k_sign_correction": False,
}


def _decode(ds: Dataset, plugin: str) -> np.ndarray:
    syntax = ds.file_meta.TransferSyntaxUID
    decoder = get_decoder(syntax)
    arr, _ = decoder.as_array(ds, raw=True, decoding_plugin=plugin, **EXACT_DECODING)
    return arr


def compare(source: np.ndarray, decoded: np.ndarray) -> Verification:
    """Maximum absolute error and PSNR of ``decoded`` against ``source``."""
    return Difference.of(source, decoded).verification()


@dataclass
class Difference:
    """Maximum absolute error and squared error sum, added up frame by frame, with the
    source's lowest and highest value (its range is the PSNR's peak)."""

    max_error: int = 0
    squared: float = 0.0
    count: int = 0
    lowest: float = math.inf
    highest: float = -math.inf

    @classmethod
    def of(cls, source: np.ndarray, decoded: np.ndarray) -> Difference:
        if source.shape != decoded.shape:
            raise PermanentError(
                "verification_failed",
                f"decoded shape {decoded.shape} differs from source shape {source.shape}",
            )
        if np.array_equal(source, decoded):
            # the lossless case, without widened copies: ~100x faster than the difference
            return cls(0, 0.0, source.size)
        if source.dtype.kind == "f" or decoded.dtype.kind == "f":
            diff = np.abs(source.astype(np.float64) - decoded.astype(np.float64))
        else:
            diff = np.abs(source.astype(np.int64) - decoded.astype(np.int64))
        max_error = int(diff.max()) if diff.size else 0
        squared = float(np.sum(diff.astype(np.float64) ** 2))
        return cls(max_error, squared, diff.size, float(source.min()), float(source.max()))

    def add(self, other: Difference) -> None:
        self.max_error = max(self.max_error, other.max_error)
        self.squared += other.squared
        self.count += other.count
        self.lowest = min(self.lowest, other.lowest)
        self.highest = max(self.highest, other.highest)

    def verification(self) -> Verification:
        """Max error and PSNR. The PSNR's peak is the source's value range (highest -
        lowest, at least 1), not 2^Bits Stored - 1: 12-bit CT values stored with Bits
        Stored 16 would read 24 dB better than they are, and a guard on it would pass a
        ruined image. (A frame group that decoded identically adds no range: only the
        frames with an error have one, and their range is what the error is measured
        against.)"""
        if self.max_error == 0 or not self.count:
            return Verification(0, None)
        peak = max(1.0, self.highest - self.lowest)
        return Verification(
            self.max_error, 10.0 * math.log10(peak * peak * self.count / self.squared)
        )


def _difference(written: Dataset, plugin: str, source: np.ndarray) -> Difference:
    """Decode ``written`` frame by frame (one decoded frame in memory at a time) and
    add up its difference from ``source``."""
    frames = int(written.get("NumberOfFrames", 1) or 1)
    if frames < 2 or source.ndim < 3 or source.shape[0] != frames:
        return Difference.of(source, _decode(written, plugin))
    syntax = written.file_meta.TransferSyntaxUID
    decoder = get_decoder(syntax)
    total = Difference()
    seen = 0
    for index, (frame, _) in enumerate(
        decoder.iter_array(written, raw=True, decoding_plugin=plugin, **EXACT_DECODING)
    ):
        if index >= frames:
            raise PermanentError("verification_failed", f"more than {frames} frames decoded")
        total.add(Difference.of(source[index], frame))
        seen += 1
    if seen != frames:
        raise PermanentError("verification_failed", f"{seen} of {frames} frames decoded")
    return total


def verify(output: bytes, source: SourceImage, target: Target, jls_error: int) -> Verification:
    """Raise ``verification_failed`` unless ``output`` decodes within the target's bound.

    The overlay planes taken out of the source's high bits must come back too.
    """
    try:
        written = dcmread(io.BytesIO(output))
        difference = _difference(written, target.decoder(), source.pixels)
    except PermanentError:
        raise
    except Exception as exc:
        raise_outside_causes(exc)
        raise PermanentError(
            "verification_failed", f"the {target.name} result does not decode: {exc}"
        ) from exc
    check_overlays(written, source.high_bits.overlays)
    return within_bound(difference, source, target, jls_error)


def within_bound(
    difference: Difference, source: SourceImage, target: Target, jls_error: int
) -> Verification:
    """The verification of ``difference``; ``verification_failed`` if it exceeds the
    error ``target`` allows."""
    result = difference.verification()
    allowed = target.allowed_error(jls_error)
    if allowed is not None and result.max_error > allowed:
        raise PermanentError(
            "verification_failed",
            f"the {target.name} result differs from the source by up to "
            f"{result.max_error} (allowed {allowed}); output discarded",
        )
    return result
