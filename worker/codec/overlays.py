"""Bits above High Bit: embedded overlays move to Overlay Data, any other bits are counted.

Older MR and CT objects keep overlay planes in unused high bits of Pixel Data (the
retired usage of PS3.5 §8.1.2 and PS3.3 C.9.2): an Overlay Plane group (60xx) with
Overlay Bits Allocated equal to Bits Allocated, an Overlay Bit Position, and no
Overlay Data (60xx,3000). Every codec keeps only Bits Stored bits, and encapsulated
syntaxes may not carry embedded overlays, so compressing such an image as it is
would silently erase them. :func:`split_high_bits` takes each plane out of the stored
words; :func:`write_overlay_data` stores it the way the standard asks today (Overlay
Bits Allocated 1, Bit Position 0, packed bits); :func:`check_overlays` proves the
written output carries the same planes.

Bits above High Bit that no overlay declares are not part of the pixel value
(PS3.5 §8.1.1: only Bits Stored bits are); they are counted, so the record says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.overlays.numpy_handler import get_overlay_array
from pydicom.tag import Tag

from worker.errors import PermanentError, UnsupportedImage, raise_outside_causes

OVERLAY_GROUPS = range(0x6000, 0x6020, 2)  # 16 repeating groups, PS3.3 C.9.2
_ROWS, _COLUMNS, _FRAMES, _ORIGIN_FRAME = 0x0010, 0x0011, 0x0015, 0x0051
_BITS_ALLOCATED, _BIT_POSITION, _DATA = 0x0100, 0x0102, 0x3000
# Elements whose presence says "this group describes an overlay plane".
_PLANE_ELEMENTS = (_ROWS, _COLUMNS, 0x0040, 0x0050, _BITS_ALLOCATED, _BIT_POSITION)


@dataclass
class HighBits:
    """What the stored words hold above (and besides) the pixel values."""

    overlays: dict[int, np.ndarray] = field(default_factory=dict)  # group -> planes
    bit_positions: dict[int, int] = field(default_factory=dict)  # group -> source bit
    stray_pixels: int = 0  # samples with set bits above High Bit that no overlay declares
    stray_mask: int = 0  # those bits, OR-ed together

    def notices(self, high_bit: int) -> list[str]:
        """One line per fact the outcome record must carry."""
        lines = []
        if self.bit_positions:
            planes = ", ".join(
                f"{group:04X} (bit {bit})" for group, bit in sorted(self.bit_positions.items())
            )
            plural = "s" if len(self.bit_positions) > 1 else ""
            lines.append(f"embedded overlay{plural} {planes} moved to Overlay Data (60xx,3000)")
        if self.stray_pixels:
            lines.append(
                f"{self.stray_summary(high_bit)}: not part of the pixel value (PS3.5 8.1.1), "
                "not kept"
            )
        return lines

    def stray_summary(self, high_bit: int) -> str:
        """How many samples had which undeclared bits set above ``high_bit``."""
        bits = [bit for bit in range(self.stray_mask.bit_length()) if self.stray_mask >> bit & 1]
        return (
            f"{self.stray_pixels:,} pixel{'s' if self.stray_pixels != 1 else ''} had "
            f"bit{'s' if len(bits) != 1 else ''} {', '.join(map(str, bits))} set above "
            f"High Bit {high_bit} that no overlay declares"
        )


# (group, its Overlay Data tag, the tags that describe a plane), built once
_GROUP_TAGS = [
    (group, Tag(group, _DATA), [Tag(group, element) for element in _PLANE_ELEMENTS])
    for group in OVERLAY_GROUPS
]


def embedded_overlay_groups(ds: Dataset) -> list[int]:
    """Overlay groups whose plane lives in Pixel Data (no Overlay Data element)."""
    groups = []
    for group, data, plane in _GROUP_TAGS:
        if data in ds:
            continue
        if any(tag in ds for tag in plane):
            groups.append(group)
    return groups


def stored_words(ds: Dataset, big_endian: bool, count: int) -> np.ndarray | None:
    """The words of native Pixel Data exactly as stored (high bits included)."""
    bits_allocated = int(ds.BitsAllocated)
    if bits_allocated not in (8, 16, 32):
        return None
    dtype = np.dtype(f"{'>' if big_endian else '<'}u{bits_allocated // 8}")
    raw = ds.PixelData
    if len(raw) < count * dtype.itemsize:
        return None  # the decoder already refused inconsistent lengths
    return np.frombuffer(raw, dtype=dtype, count=count)


def split_high_bits(ds: Dataset, words: np.ndarray, frames: int) -> HighBits:
    """Take the embedded overlay planes out of ``words``; count other high bits.

    ``words`` are the stored words of every frame, in order. Raises UnsupportedImage
    ``unsupported_overlay`` for a plane that cannot be taken out.
    """
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits_allocated = int(ds.BitsAllocated)
    high_bit = int(ds.get("HighBit", int(ds.BitsStored) - 1))
    found = HighBits()
    groups = embedded_overlay_groups(ds)
    if groups and samples != 1:
        raise UnsupportedImage(
            "unsupported_overlay",
            f"overlay {groups[0]:04X} is embedded in a {samples}-sample image",
        )
    per_frame = words.reshape(frames, -1)
    for group in groups:
        bit = _bit_position(ds, group, bits_allocated)
        first, count = _overlay_frames(ds, group, frames)
        planes = (per_frame[first : first + count] >> bit) & 1
        found.overlays[group] = planes.astype(bool).reshape(count, rows, columns)
        found.bit_positions[group] = bit
    container = (1 << bits_allocated) - 1
    used = (1 << (high_bit + 1)) - 1
    for bit in found.bit_positions.values():
        used |= 1 << bit
    unused = container & ~used
    if unused:
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        for frame in per_frame:  # frame by frame: bounded temporaries for big volumes
            count_, mask = _stray_bits(frame, unused, high_bit, signed)
            found.stray_pixels += count_
            found.stray_mask |= mask
    return found


def _bit_position(ds: Dataset, group: int, bits_allocated: int) -> int:
    element = ds.get(Tag(group, _BIT_POSITION))
    try:
        bit = int(element.value)
    except (AttributeError, TypeError, ValueError):
        raise UnsupportedImage(
            "unsupported_overlay",
            f"overlay {group:04X} has no Overlay Data and no usable Overlay Bit Position",
        ) from None
    if not 0 <= bit < bits_allocated:
        raise UnsupportedImage(
            "unsupported_overlay",
            f"overlay {group:04X}: Overlay Bit Position {bit} is outside Bits Allocated "
            f"{bits_allocated}",
        )
    return bit


def _overlay_frames(ds: Dataset, group: int, frames: int) -> tuple[int, int]:
    """(first frame index, frame count) of an embedded overlay (PS3.3 C.9.3).

    Without Number of Frames in Overlay, an embedded plane is present in every frame's
    words, so every frame from Image Frame Origin on is kept.
    """
    origin = _positive(ds, Tag(group, _ORIGIN_FRAME), 1)
    if origin > frames:
        raise UnsupportedImage(
            "unsupported_overlay",
            f"overlay {group:04X}: Image Frame Origin {origin} beyond {frames} frames",
        )
    count = _positive(ds, Tag(group, _FRAMES), frames - origin + 1)
    return origin - 1, min(count, frames - origin + 1)


def _positive(ds: Dataset, tag: int, default: int) -> int:
    element = ds.get(tag)
    try:
        value = int(element.value)
    except (AttributeError, TypeError, ValueError):
        return default
    return value if value > 0 else default


def _stray_bits(frame: np.ndarray, unused: int, high_bit: int, signed: bool) -> tuple[int, int]:
    """Samples of one frame with unused high bits set, and which bits.

    Signed values may be stored sign-extended (every bit above High Bit a copy of the
    sign bit): that is the value itself, not stray data.
    """
    above = frame & frame.dtype.type(unused)
    stray = above != 0
    if signed:
        negative = ((frame >> high_bit) & 1).astype(bool)
        stray &= ~(negative & (above == unused))
    count = int(np.count_nonzero(stray))
    mask = int(np.bitwise_or.reduce(above[stray])) if count else 0
    return count, mask


def write_overlay_data(ds: Dataset, found: HighBits) -> None:
    """Store each extracted plane in ``ds`` as Overlay Data (PS3.3 C.9.2, PS3.5 §8.2).

    One bit per pixel, first pixel in the least significant bit, frames one after the
    other without padding, the whole padded to an even length; Overlay Bits Allocated
    1 and Bit Position 0. Rows and Columns are the image's (embedded planes cover it).
    """
    for group, planes in found.overlays.items():
        count, rows, columns = planes.shape
        packed = np.packbits(planes.reshape(-1), bitorder="little").tobytes()
        packed += b"\0" * (len(packed) % 2)
        ds.add_new(Tag(group, _ROWS), "US", rows)
        ds.add_new(Tag(group, _COLUMNS), "US", columns)
        ds.add_new(Tag(group, _BITS_ALLOCATED), "US", 1)
        ds.add_new(Tag(group, _BIT_POSITION), "US", 0)
        if count > 1 or Tag(group, _FRAMES) in ds:
            ds.add_new(Tag(group, _FRAMES), "IS", count)
            ds.add_new(Tag(group, _ORIGIN_FRAME), "US", _positive(ds, Tag(group, _ORIGIN_FRAME), 1))
        ds.add_new(Tag(group, _DATA), "OW", packed)


def check_overlays(output: Dataset, expected: dict[int, np.ndarray]) -> None:
    """Raise ``verification_failed`` unless ``output`` decodes to the expected planes.

    The planes are unpacked by pydicom's own overlay reader from the written bytes.
    """
    for group, planes in expected.items():
        try:
            decoded = np.asarray(get_overlay_array(output, group), dtype=bool)
        except Exception as exc:
            raise_outside_causes(exc)
            raise PermanentError(
                "verification_failed", f"overlay {group:04X} does not decode: {exc}"
            ) from exc
        if decoded.reshape(-1).shape != planes.reshape(-1).shape or not np.array_equal(
            decoded.reshape(planes.shape), planes
        ):
            raise PermanentError(
                "verification_failed",
                f"overlay {group:04X} differs from the plane embedded in the source",
            )
