"""Large native multi-frame objects, a group of frames at a time: bounded memory.

A volume, a cine or a tomosynthesis stack held whole costs several times its size
(the source bytes, the decoded array, every encoded frame, the joined output, the
decode of the check). Here the source stays in its spooled file and nothing holds
more than one group of frames:

1. :func:`plan` decides from the header alone: native little-endian Pixel Data above
   a size, two frames or more, whole-byte samples, no overlay embedded in it.
2. :func:`encode_groups` reads a group of frames (about :data:`GROUP_BYTES`), decodes
   it with :func:`~worker.codec.compress.decode_source` and encodes it with
   :func:`~worker.codec.compress.encode_pixels` - the very steps and plugin quirks of
   the whole-object path - and appends each encoded frame to a spool file.
3. :func:`write_output` writes the Part 10 output to a temporary file; pydicom streams
   the frames from the spool into it (a buffered element value).
4. :func:`verify_output` parses that written file again and decodes it frame by
   frame, each compared with the same frame decoded again from the source file.
"""

from __future__ import annotations

import bisect
import copy
import io
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import generate_frames, itemize_fragment
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from worker.codec.compress import (
    EXTENDED_OFFSET_TABLE,
    EXTENDED_OFFSET_TABLE_LENGTHS,
    PIXEL_DATA,
    SourceImage,
    declared_frames,
    decode_source,
    describe_result,
    encode_pixels,
    frame_count_refusal,
    refuse_kept_high_bits,
    serialize,
)
from worker.codec.options import CompressionOptions
from worker.codec.overlays import HighBits, embedded_overlay_groups
from worker.codec.plugins.base import Plugin
from worker.codec.targets import Target
from worker.codec.verify import EXACT_DECODING, Difference, Verification, within_bound
from worker.errors import PermanentError, raise_outside_causes

# Native multi-frame Pixel Data at least this large goes frame group by frame group
FRAMES_ABOVE = 32 * 1024 * 1024
# Source pixel bytes per group: what one encode call sees at a time
GROUP_BYTES = 4 * 1024 * 1024
_NATIVE_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_MAX_BASIC_OFFSET = 2**32 - 1  # a Basic Offset Table holds 32-bit offsets
_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000) Item, little endian
# pydicom writes an element value that is a buffer (the output's Pixel Data, a Joined
# spool) in reads of its ``buffered_read_size``, 8 KiB by default: 3,500 reads and
# writes for a 100-frame 512x512 volume's rle output. In 1 MiB reads the volume took
# 7 % less CPU (405 -> 375 ms for rle), for 1 MiB more memory while it is written.
WRITE_CHUNK_BYTES = 1024 * 1024
pydicom_config.settings.buffered_read_size = max(
    pydicom_config.settings.buffered_read_size, WRITE_CHUNK_BYTES
)


class _Readable(io.BufferedIOBase):
    """A read-only, seekable file of ``_length`` bytes; subclasses read from
    ``_position`` (pydicom takes such buffers as element values)."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self._length = length
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}
        self._position = max(0, base[whence] + offset)
        return self._position

    def read1(self, size: int = -1, /) -> bytes:
        return self.read(size)

    def _wanted(self, size: int | None) -> int:
        """How many bytes a ``read(size)`` from here returns at most."""
        remaining = max(0, self._length - self._position)
        return remaining if size is None or size < 0 else min(size, remaining)


class Window(_Readable):
    """Bytes ``start`` to ``start + length`` of a seekable file, as a file of their own.

    pydicom takes such a buffer as an element value: it reads the Pixel Data from the
    file when it needs it, never all at once.
    """

    def __init__(self, file: BinaryIO, start: int, length: int) -> None:
        super().__init__(length)
        self._file = file
        self._start = start

    def read(self, size: int | None = -1, /) -> bytes:
        wanted = self._wanted(size)
        self._file.seek(self._start + self._position)
        data = self._file.read(wanted)
        self._position += len(data)
        return data


class Joined(_Readable):
    """Byte strings and buffers one after the other, read as one file.

    The value of an encapsulated Pixel Data element written from the spool: the item
    of each frame is a small header and a :class:`Window` onto the spooled frame.
    (pydicom's ``EncapsulatedBuffer`` does the same, but its reads slow down with the
    number of frames: 160 s for a 400-frame volume here.)
    """

    def __init__(self, parts: list[bytes | Window]) -> None:
        self._parts = parts
        self._starts: list[int] = []
        total = 0
        for part in parts:
            self._starts.append(total)
            total += len(part) if isinstance(part, bytes) else part.seek(0, io.SEEK_END)
        super().__init__(total)

    def read(self, size: int | None = -1, /) -> bytes:
        wanted = self._wanted(size)
        chunks = []
        while wanted > 0:
            index = bisect.bisect_right(self._starts, self._position) - 1
            part, within = self._parts[index], self._position - self._starts[index]
            if isinstance(part, bytes):
                chunk = part[within : within + wanted]
            else:
                part.seek(within)
                chunk = part.read(wanted)
            if not chunk:
                break
            chunks.append(chunk)
            self._position += len(chunk)
            wanted -= len(chunk)
        return b"".join(chunks)


# The Image Pixel attributes (PS3.3 C.7.6.3) decoding and encoding read: all a group
# of frames carries, so no group copies an Enhanced object's per-frame functional
# groups (one item per frame: 10x the time for a 400-frame Enhanced CT)
IMAGE_PIXEL_TAGS = (
    0x00280002,  # Samples per Pixel
    0x00280004,  # Photometric Interpretation
    0x00280006,  # Planar Configuration
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280100,  # Bits Allocated
    0x00280101,  # Bits Stored
    0x00280102,  # High Bit
    0x00280103,  # Pixel Representation
)


@dataclass(frozen=True)
class Plan:
    """Where the source's Pixel Data is, and how it is cut into groups of frames."""

    header: Dataset  # the parsed source without Pixel Data
    pixels: Window  # the native Pixel Data value, in the source file
    vr: str
    frames: int
    frame_bytes: int
    per_group: int

    def groups(self) -> Iterator[tuple[int, int]]:
        """(first frame, frame count) of each group, in order."""
        for first in range(0, self.frames, self.per_group):
            yield first, min(self.per_group, self.frames - first)

    def frame_dataset(self, index: int) -> Dataset:
        """The whole source as if it held only frame ``index``."""
        return self._with_frames(copy.deepcopy(self.header), index, 1)

    def group_dataset(self, first: int, count: int) -> Dataset:
        """Frames ``first`` to ``first + count`` with the file meta and the Image Pixel
        attributes only: what decoding and encoding them needs."""
        group = FileDataset("", Dataset(), file_meta=copy.deepcopy(self.header.file_meta))
        for tag in IMAGE_PIXEL_TAGS:
            if tag in self.header:
                group.add(copy.deepcopy(self.header[tag]))
        return self._with_frames(group, first, count)

    def _with_frames(self, group: Dataset, first: int, count: int) -> Dataset:
        group.NumberOfFrames = count
        self.pixels.seek(first * self.frame_bytes)
        data = self.pixels.read(count * self.frame_bytes)
        if len(data) != count * self.frame_bytes:
            raise PermanentError(
                "invalid_pixel_data",
                f"Pixel Data ends within frame {first + len(data) // self.frame_bytes + 1}",
            )
        if len(data) % 2:
            data += b"\0"  # PS3.5 7.1.1: values of even length
        group.add(DataElement(PIXEL_DATA, self.vr, data))
        return group


def plan(ds: Dataset, source: BinaryIO, above: int = FRAMES_ABOVE) -> Plan | None:
    """How to take ``ds`` (parsed from ``source`` with its Pixel Data left in the file)
    frame group by frame group; None where the whole-object path is to take it."""
    if ds.file_meta.get("TransferSyntaxUID") not in _NATIVE_LITTLE_ENDIAN:
        return None
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if not isinstance(raw, RawDataElement) or raw.value is not None:
        return None  # read already: not left in the file
    length = int(raw.length)
    if length == 0xFFFFFFFF or length < above:
        return None
    frames = declared_frames(ds)  # invalid_pixel_data for 0, as the whole-object path
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.SamplesPerPixel)
        allocated = int(ds.BitsAllocated)
        photometric = str(ds.PhotometricInterpretation)
    except (AttributeError, TypeError, ValueError):
        return None  # the whole-object path names what is missing or wrong
    frame_bytes = rows * columns * samples * allocated // 8
    if frame_bytes > 0 and length >= (frames + 1) * frame_bytes:
        raise frame_count_refusal(length // frame_bytes, frames)
    if (
        frames < 2
        or allocated not in (8, 16, 32)
        or photometric.endswith(("_422", "_420"))  # subsampled: frames of another size
        or frame_bytes <= 0
        or frame_bytes * frames > length
        or embedded_overlay_groups(ds)  # a plane spans all frames: the whole path moves it
    ):
        return None
    window = Window(source, int(raw.value_tell), length)
    vr = raw.VR if raw.VR in ("OB", "OW") else ("OW" if allocated > 8 else "OB")
    header = copy.copy(ds)
    del header[PIXEL_DATA]
    if isinstance(header, FileDataset):
        header.buffer = None  # the source file: never copied along with the header
    header = copy.deepcopy(header)
    return Plan(header, window, vr, frames, frame_bytes, max(1, GROUP_BYTES // frame_bytes))


def first_frame(frames: Plan) -> SourceImage:
    """The first frame with the whole header, decoded: what the targets' checks look at,
    and the output's header once the encoding's changes are applied to it."""
    return decode_source(frames.frame_dataset(0))


@dataclass
class Encoded:
    """Every frame of the object encoded, in a spool file, and what the encoding
    changed in a group's data set (file meta, Image Pixel attributes)."""

    file_meta: FileMetaDataset
    changed: list[DataElement]  # elements the encoding set or added
    removed: list[int]  # tags the encoding took away
    spool: BinaryIO
    spans: list[tuple[int, int]]  # (offset, length) of each frame in the spool
    high_bits: HighBits = field(default_factory=HighBits)
    pixel_bytes: int = 0

    def close(self) -> None:
        self.spool.close()


def encode_groups(
    frames: Plan, target: Target, plugin: Plugin, options: CompressionOptions
) -> Encoded:
    """Encode the object a group of frames at a time into a spool file.

    Raises UnsupportedImage as :func:`~worker.codec.compress.encode` does, and
    ``high_bits_set`` as soon as a group has stray high bits while they are to be kept.
    """
    spool = tempfile.TemporaryFile(prefix="dcmpress-frames-")  # noqa: SIM115 - Encoded.close
    encoded: Encoded | None = None
    try:
        for first, count in frames.groups():
            source = decode_source(frames.group_dataset(first, count))
            refuse_kept_high_bits(source, options)
            result = encode_pixels(source, target, plugin, options)
            if encoded is None:
                encoded = Encoded(result.file_meta, *_changes(source.dataset, result), spool, [])
            _spool_frames(result, count, encoded)
            encoded.high_bits.stray_pixels += source.high_bits.stray_pixels
            encoded.high_bits.stray_mask |= source.high_bits.stray_mask
            encoded.pixel_bytes += source.pixel_bytes
    except BaseException:
        spool.close()
        raise
    assert encoded is not None  # plan() has two frames or more
    return encoded


_PIXEL_ELEMENTS = (PIXEL_DATA, EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS)


def _changes(before: Dataset, after: Dataset) -> tuple[list[DataElement], list[int]]:
    """What encoding ``before`` into ``after`` set, added and removed (pixels aside)."""
    changed = [
        copy.deepcopy(element)
        for element in after
        if element.tag not in _PIXEL_ELEMENTS
        and (element.tag not in before or before[element.tag] != element)
    ]
    removed = [int(tag) for tag in before.keys() if tag not in after]  # noqa: SIM118 - tags
    return changed, removed


def _spool_frames(result: Dataset, count: int, encoded: Encoded) -> None:
    extended = result.get("ExtendedOffsetTable")
    frames = generate_frames(
        result.PixelData,
        number_of_frames=count,
        extended_offsets=(
            (result.ExtendedOffsetTable, result.ExtendedOffsetTableLengths)
            if extended is not None
            else None
        ),
    )
    written = 0
    for frame in frames:
        frame += b"\0" * (len(frame) % 2)  # PS3.5 A.4: items of even length
        offset = encoded.spool.seek(0, io.SEEK_END)
        encoded.spool.write(frame)
        encoded.spans.append((offset, len(frame)))
        written += 1
    if written != count:
        raise PermanentError(
            "verification_failed", f"the encoder gave {written} frames for {count}"
        )


def write_output(
    frames: Plan,
    encoded: Encoded,
    source: SourceImage,
    target: Target,
    options: CompressionOptions,
) -> tuple[BinaryIO, Dataset]:
    """The Part 10 output in a temporary file: the source's header with what the
    encoding changed, then every spooled frame; and the output's data set."""
    ds = copy.deepcopy(source.dataset)  # the whole header, describing the decoded pixels
    ds.file_meta = copy.deepcopy(encoded.file_meta)
    for element in encoded.changed:
        ds.add(copy.deepcopy(element))
    for tag in encoded.removed:
        if tag in ds:
            del ds[tag]
    ds.add(copy.deepcopy(frames.header["NumberOfFrames"]))
    lengths = [length for _, length in encoded.spans]
    offsets = [0]
    for length in lengths[:-1]:
        offsets.append(offsets[-1] + 8 + length)  # each item: 8-byte header, then the frame
    if options.encapsulate_ext or offsets[-1] > _MAX_BASIC_OFFSET:
        ds.ExtendedOffsetTable = struct.pack(f"<{len(offsets)}Q", *offsets)
        ds.ExtendedOffsetTableLengths = struct.pack(f"<{len(lengths)}Q", *lengths)
        table = b""  # PS3.5 A.4: with an Extended Offset Table the Basic one is empty
    else:
        table = struct.pack(f"<{len(offsets)}L", *offsets)
    table_item = itemize_fragment(table)
    parts: list[bytes | Window] = [table_item]
    encapsulated = len(table_item) + sum(8 + length for length in lengths)
    for offset, length in encoded.spans:
        parts.append(_ITEM + struct.pack("<L", length))
        parts.append(Window(encoded.spool, offset, length))
    ds.add(DataElement(PIXEL_DATA, "OB", Joined(parts), is_undefined_length=True))
    describe_result(ds, frames.header, encoded.pixel_bytes, target, options, encapsulated)
    output = tempfile.TemporaryFile(prefix="dcmpress-output-")  # noqa: SIM115 - the caller's
    try:
        serialize(ds, output)
    except BaseException:
        output.close()
        raise
    finally:
        del ds[PIXEL_DATA]  # the windows onto the spool go with it
    return output, ds


def verify_output(
    output: BinaryIO, frames: Plan, source: SourceImage, target: Target, jls_error: int
) -> Verification:
    """Decode the written file frame by frame and compare each frame with the source.

    Raises ``verification_failed`` as :func:`~worker.codec.verify.verify` does.
    """
    try:
        written = _parsed_output(output)
        syntax = written.file_meta.TransferSyntaxUID
        decoded = get_decoder(syntax).iter_array(
            written, raw=True, decoding_plugin=target.decoder(), **EXACT_DECODING
        )
        total = Difference()
        seen = 0
        for first, count in frames.groups():
            expected = decode_source(frames.group_dataset(first, count)).pixels
            if count == 1:
                expected = expected[np.newaxis]  # a single frame decodes without a frame axis
            for index in range(count):
                frame, _ = next(decoded, (None, None))
                if frame is None:
                    raise PermanentError(
                        "verification_failed", f"{seen} of {frames.frames} frames decoded"
                    )
                total.add(Difference.of(expected[index], frame))
                seen += 1
        if next(decoded, None) is not None:
            raise PermanentError("verification_failed", f"more than {frames.frames} frames decoded")
    except PermanentError:
        raise
    except Exception as exc:
        raise_outside_causes(exc)
        raise PermanentError(
            "verification_failed", f"the {target.name} result does not decode: {exc}"
        ) from exc
    return within_bound(total, source, target, jls_error)


def _parsed_output(output: BinaryIO) -> Dataset:
    """The written file parsed up to its Pixel Data, which stays in the file."""
    output.seek(0)
    written = dcmread(output, stop_before_pixels=True)
    start = output.tell()
    header = output.read(12)
    tag = (int.from_bytes(header[0:2], "little") << 16) | int.from_bytes(header[2:4], "little")
    if tag != PIXEL_DATA or header[4:6] != b"OB" or header[8:12] != b"\xff\xff\xff\xff":
        raise PermanentError(
            "verification_failed", "the written file has no encapsulated Pixel Data"
        )
    end = output.seek(0, io.SEEK_END)
    pixels = Window(output, start + 12, end - start - 12)
    written.add(DataElement(PIXEL_DATA, "OB", pixels, is_undefined_length=True))
    return written
