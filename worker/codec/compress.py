"""Dataset in, compressed Dataset out.

Three steps, each a function so the pipeline can time them separately:

* :func:`decode_source` - decode the source pixels once and make the dataset describe
  them exactly as they will be encoded (little endian, interleaved samples, YBR_FULL
  for native YBR_FULL_422...). Both encoding and verification use this array.
* :func:`check_supported` - refuse, with a specific code, images a target cannot take,
  *before* a codec sees them (some codecs fail silently or crash on them).
* :func:`encode` - ``pydicom.pixels.compress`` with the work-arounds pydicom 3.0 needs,
  then the DICOM attributes of a lossy result (PS3.3 C.7.6.1.1.5).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmwrite
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import ENCODING_PROFILES
from pydicom.pixels.utils import compress as pydicom_compress
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    generate_uid,
)

from worker.codec.colour import ask_colour_transform, describe_colour, refuse_outside_iod
from worker.codec.isolation import CodecCrashed
from worker.codec.lossy import mark_lossy, refuse_lossy
from worker.codec.options import DEFAULT_J2K_CR, CompressionOptions
from worker.codec.overlays import (
    HighBits,
    embedded_overlay_groups,
    split_high_bits,
    stored_words,
    write_overlay_data,
)
from worker.codec.plugins.gdcm import contained
from worker.codec.repair import resolve_ambiguous_vrs, swap_words_to_little_endian
from worker.codec.targets import Plugin, Target, source_decoding_plugin
from worker.codec.viewers import refuse_viewer_failures
from worker.errors import PermanentError, UnsupportedImage, raise_outside_causes

# Tags of the pixel data variants; only (7FE0,0010) Pixel Data can be compressed.
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
PIXEL_DATA = 0x7FE00010
EXTENDED_OFFSET_TABLE = 0x7FE00001
EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002

# PS3.3 C.7.6.1.1.5.1: Lossy Image Compression Method defined terms.
LOSSY_METHODS = {"jpeg-ls-near": "ISO_14495_1", "j2k-lossy": "ISO_15444_1"}


@dataclass
class SourceImage:
    """The source dataset (without pixel data) and its decoded pixels.

    ``high_bits`` holds what the stored words carried besides the pixel values: the
    embedded overlay planes (already written into ``dataset`` as Overlay Data) and
    the count of other bits set above High Bit.
    """

    dataset: Dataset
    pixels: np.ndarray
    pixel_bytes: int  # size of the uncompressed pixel data, for ratios
    high_bits: HighBits = field(default_factory=HighBits)

    @property
    def bits_stored(self) -> int:
        """Bits Stored of the source image."""
        return int(self.dataset.BitsStored)

    @property
    def notices(self) -> list[str]:
        """What the outcome record must say about the source's high bits."""
        return self.high_bits.notices(int(self.dataset.HighBit))


def decode_source(ds: Dataset) -> SourceImage:
    """Decode ``ds``'s native or compressed pixels; raise ``invalid_pixel_data``.

    ``ds`` becomes the returned image's dataset (without its Pixel Data, describing
    the decoded array): the caller does not use it as the source again.

    Raises UnsupportedImage for layouts no target can keep exactly (values not in
    the low bits, overlays that cannot be moved out of Pixel Data).
    """
    syntax = ds.file_meta.TransferSyntaxUID
    _check_high_bit(ds)
    declared = declared_frames(ds)
    plugin = source_decoding_plugin(syntax)

    def decode() -> tuple[np.ndarray, dict[str, Any]]:
        return get_decoder(syntax).as_array(ds, raw=True, decoding_plugin=plugin)

    try:
        # python-gdcm aborts the process on some inconsistent inputs: only ever in a fork
        arr, meta = contained(decode) if plugin == "gdcm" else decode()
    except CodecCrashed as crash:
        raise PermanentError(
            "invalid_pixel_data", f"cannot decode the source pixels: gdcm {crash}"
        ) from crash
    except Exception as exc:
        raise_outside_causes(exc)
        raise PermanentError(
            "invalid_pixel_data", f"cannot decode the source pixels: {exc}"
        ) from exc
    _check_decoded_frames(ds, arr, declared)
    high_bits = _split_high_bits(ds, syntax, arr.size, int(meta.get("number_of_frames", 1)))
    dataset = ds  # taken over, not copied (a copy cost 9 % of an RLE engine run)
    for tag in (PIXEL_DATA, EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS):
        # a stale Extended Offset Table of a compressed source would be kept by
        # pydicom and point into the wrong fragments of the new encoding
        if tag in dataset:
            del dataset[tag]
    if isinstance(dataset, FileDataset):
        # a data set read from bytes keeps the whole source file as its buffer, and the
        # deep copy of every encode would copy it: 400 MB for a 200 MB volume
        dataset.buffer = None
    if "HighBit" not in dataset and "BitsStored" in dataset:
        # Type 1, and Bits Stored - 1 is the only value a compressed syntax allows
        dataset.HighBit = int(dataset.BitsStored) - 1
    if syntax == ExplicitVRBigEndian:
        swap_words_to_little_endian(dataset)
    # pydicom returns samples interleaved and YBR_FULL_422 upsampled to YBR_FULL:
    # describe the array we will actually encode.
    dataset.PhotometricInterpretation = meta.get(
        "photometric_interpretation", dataset.PhotometricInterpretation
    )
    if int(dataset.SamplesPerPixel) > 1:
        dataset.PlanarConfiguration = 0
    elif "PlanarConfiguration" in dataset:
        # Type 1C, only with more than one sample (PS3.3 C.7.6.3.1.3); a stray 1 makes
        # some readers de-interleave a single-sample image
        del dataset.PlanarConfiguration
    pixel_bytes = int(arr.nbytes)
    if int(dataset.BitsAllocated) == 32 and int(dataset.BitsStored) <= 16:
        # Values fit a 16-bit container exactly; then RLE and JPEG-LS can take them.
        arr = arr.astype(np.int16 if int(dataset.PixelRepresentation) else np.uint16)
        dataset.BitsAllocated = 16
    write_overlay_data(dataset, high_bits)
    return SourceImage(dataset, arr, pixel_bytes, high_bits)


def refuse_kept_high_bits(source: SourceImage, options: CompressionOptions) -> None:
    """Raise ``high_bits_set`` if the stored words have stray bits above High Bit and
    the options say to keep them (no codec can)."""
    if source.high_bits.stray_pixels and options.high_bits == "keep":
        summary = source.high_bits.stray_summary(int(source.dataset.HighBit))
        raise UnsupportedImage("high_bits_set", f"{summary} (high_bits is keep)")


def _check_high_bit(ds: Dataset) -> None:
    """Refuse native pixels whose values do not sit in the low Bits Stored bits.

    pydicom (and every encoder) takes the low Bits Stored bits of each word; with a
    High Bit other than Bits Stored - 1 (allowed by old ACR-NEMA layouts) that would
    silently encode the wrong bits.
    """
    try:
        bits_stored, high_bit = int(ds.BitsStored), int(ds.HighBit)
    except (AttributeError, TypeError, ValueError):
        return  # the decoder names what is missing
    if high_bit != bits_stored - 1:
        raise UnsupportedImage(
            "unsupported_high_bit",
            f"High Bit {high_bit} with Bits Stored {bits_stored}: the values are not in "
            "the low bits of each word",
        )


def declared_frames(ds: Dataset) -> int:
    """Number of Frames (1 when absent); raise ``invalid_pixel_data`` for a value that
    is not a whole number of 1 or more (PS3.3 C.7.6.6), whatever the target: pydicom
    reads 0 as 1 and then returns as many frames as the Pixel Data holds."""
    if "NumberOfFrames" not in ds:
        return 1
    value = ds.get("NumberOfFrames")
    try:
        frames = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        frames = 0
    if frames < 1 or (isinstance(value, float) and not value.is_integer()):
        raise PermanentError(
            "invalid_pixel_data", f"Number of Frames {value!r} is invalid: it must be 1 or more"
        )
    return frames


def _check_decoded_frames(ds: Dataset, arr: np.ndarray, declared: int) -> None:
    """Raise ``invalid_pixel_data`` if the Pixel Data holds another number of whole
    frames than Number of Frames says (pydicom returns the extra ones)."""
    per_frame = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel)
    decoded = arr.size // per_frame if per_frame else 0
    if decoded != declared:
        raise frame_count_refusal(decoded, declared)


def frame_count_refusal(held: int, declared: int) -> PermanentError:
    """The ``invalid_pixel_data`` of Pixel Data holding ``held`` whole frames where
    Number of Frames says ``declared`` (both paths: decoded, or counted in the file)."""
    message = f"the Pixel Data holds {held} frames, Number of Frames says {declared}"
    return PermanentError("invalid_pixel_data", message)


def _split_high_bits(ds: Dataset, syntax: UID, words_count: int, frames: int) -> HighBits:
    """Embedded overlays and stray high bits of native pixel data (see overlays.py)."""
    embedded = embedded_overlay_groups(ds)
    if syntax.is_encapsulated:
        if embedded:
            raise UnsupportedImage(
                "unsupported_overlay",
                f"overlay {embedded[0]:04X} is declared embedded in compressed pixel data",
            )
        return HighBits()
    if not embedded and int(ds.BitsStored) >= int(ds.BitsAllocated):
        return HighBits()  # no spare bits, nothing declared in them
    words = stored_words(ds, syntax == ExplicitVRBigEndian, words_count)
    if words is None:
        if embedded:
            raise UnsupportedImage(
                "unsupported_overlay",
                f"overlay {embedded[0]:04X} embedded in Bits Allocated {ds.BitsAllocated}",
            )
        return HighBits()
    return split_high_bits(ds, words, frames)


def check_supported(source: SourceImage, target: Target, options: CompressionOptions) -> None:
    """Raise UnsupportedImage if ``target`` cannot take this image.

    What one plugin cannot take is its quirks' business (see :func:`encode`).
    """
    ds = source.dataset
    bits_allocated = int(ds.BitsAllocated)
    bits_stored = int(ds.BitsStored)
    samples = int(ds.SamplesPerPixel)
    if bits_allocated not in target.bits_allocated:
        raise UnsupportedImage(
            "unsupported_bits_allocated",
            f"{target.name} cannot encode Bits Allocated {bits_allocated} "
            f"(it takes {sorted(target.bits_allocated)})",
        )
    if bits_stored > target.max_bits_stored:
        raise UnsupportedImage(
            "unsupported_bits_stored",
            f"{target.name} encodes at most {target.max_bits_stored} bits stored, "
            f"the image has {bits_stored}",
        )
    if bits_stored < target.min_bits_stored:
        raise UnsupportedImage(
            "unsupported_bits_stored",
            f"{target.name} encodes at least {target.min_bits_stored} bits stored, the "
            f"image has {bits_stored}: {target.min_bits_stored_reason}",
        )
    if samples not in (1, 3):
        raise UnsupportedImage("unsupported_samples", f"Samples per Pixel {samples}")
    refuse_outside_iod(ds, target)
    if options.viewer_safe:
        refuse_viewer_failures(ds, target)
    if target.lossy:
        refuse_lossy(ds, target)


def encode(
    source: SourceImage, target: Target, plugin: Plugin, options: CompressionOptions
) -> Dataset:
    """Return a new dataset holding ``source`` compressed to ``target`` by ``plugin``."""
    ds = encode_pixels(source, target, plugin, options)
    describe_result(ds, source.dataset, source.pixel_bytes, target, options, len(ds.PixelData))
    return ds


def encode_pixels(
    source: SourceImage, target: Target, plugin: Plugin, options: CompressionOptions
) -> Dataset:
    """``source``'s pixels compressed to ``target`` by ``plugin``, in a new dataset.

    The plugin's quirks (see :mod:`worker.codec.plugins`) refuse images it must not
    see, adjust the dataset around the call, run the call, and classify its errors.
    """
    quirks = plugin.quirks
    quirks.refuse(source, target, options)
    _refuse_outside_profile(source.dataset, target)
    ds = detached_copy(source.dataset)
    kwargs = dict(options.plugin_options)
    if "jls_error" in target.options:
        kwargs["jls_error"] = options.jls_error
    if "j2k_cr" in target.options:
        if options.j2k_psnr:
            kwargs["j2k_psnr"] = list(options.j2k_psnr)
        else:
            kwargs["j2k_cr"] = openjpeg_ratios(options.j2k_cr or DEFAULT_J2K_CR, source.dataset)

    wanted_transform = ask_colour_transform(ds, target)
    restore = quirks.prepare(ds)

    def run() -> Dataset:
        pydicom_compress(
            ds,
            target.uid,
            source.pixels,
            encoding_plugin=plugin.name,
            encapsulate_ext=options.encapsulate_ext,
            generate_instance_uid=False,  # the UID rule is ours, see describe_result
            **kwargs,
        )
        return ds

    try:
        ds = quirks.call(run)
    except CodecCrashed:
        raise
    except (RuntimeError, ValueError) as exc:
        code = quirks.rejection_code(ds)
        raise UnsupportedImage(code, f"{target.name}/{plugin.name}: {_first_line(exc)}") from exc
    restore(ds)
    describe_colour(ds, source.dataset, target, wanted_transform)
    return ds


def openjpeg_ratios(ratios: Iterable[float], ds: Dataset) -> list[float]:
    """``ratios`` against the stored pixel bytes (Bits Allocated), as the output's Lossy
    Image Compression Ratio states them, in OpenJPEG's terms: it counts a ratio against
    the samples' precision (Bits Stored), so 10 on 12-bit values in 16-bit words gave
    13.3 of the stored bytes."""
    scale = int(ds.BitsStored) / int(ds.BitsAllocated)
    return [max(1.0, float(ratio) * scale) for ratio in ratios]


# Element values that are never changed in place: shared by a copy and its original
_IMMUTABLE_VALUES = (str, bytes, int, float, type(None))  # UID, IS and DS among them


def detached_copy(ds: Dataset) -> Dataset:
    """A copy of ``ds`` that nothing done to it reaches ``ds`` (what encoding, the
    plugins' quirks and the lossy attributes do to a result).

    Every element is a new object, and every value that can change in place
    (sequences and their items, multiple values, person names) is deep-copied, as is
    the file meta; strings, numbers and bytes are shared. ``copy.deepcopy`` copied
    those too, through pydicom's element copy: 2.0 ms for a 262-element CT header
    against 0.6 ms, most of a small image's RLE encode. Relies on pydicom keeping the
    elements in ``_dict`` and a value in ``_value`` (a test holds both).
    """
    copied = copy.copy(ds)  # the data set's own attributes: preamble, encodings...
    elements: dict[Any, Any] = {}
    for tag, element in ds._dict.items():
        if isinstance(element, DataElement):
            element = copy.copy(element)
            if not isinstance(element._value, _IMMUTABLE_VALUES):
                element._value = copy.deepcopy(element._value)
        elements[tag] = element  # a RawDataElement: a tuple of bytes and numbers
    copied._dict = elements
    copied._private_blocks = {}  # rebuilt on use; it refers to its data set
    if "file_meta" in ds.__dict__:
        copied.file_meta = copy.deepcopy(ds.file_meta)
    return copied


def describe_result(
    ds: Dataset,
    source: Dataset,
    pixel_bytes: int,
    target: Target,
    options: CompressionOptions,
    compressed: int,
) -> None:
    """The instance UID and, for a lossy target, the attributes of a lossy result
    (``compressed`` bytes of encoded frames from ``pixel_bytes`` of pixels)."""
    if _new_uid_wanted(target, options):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if target.lossy:
        mark_lossy(ds, source, pixel_bytes, LOSSY_METHODS[target.name], compressed)


def _refuse_outside_profile(ds: Dataset, target: Target) -> None:
    """Raise ``encoder_rejected`` for attributes the syntax's encoding profile forbids.

    pydicom's encoder checks the same PS3.5 8.2 tables, but its refusal of a tiny image
    would read as ``image_too_small``, and the one-line message would lose the values.
    """
    image = (
        str(ds.PhotometricInterpretation),
        int(ds.SamplesPerPixel),
        int(ds.PixelRepresentation),
        int(ds.BitsAllocated),
        int(ds.BitsStored),
    )
    profiles = ENCODING_PROFILES.get(target.uid)
    if profiles is None or any(
        image[:2] == (photometric, samples)
        and image[2] in representations
        and image[3] in allocated
        and image[4] in stored
        for photometric, samples, representations, allocated, stored in profiles
    ):
        return
    raise UnsupportedImage(
        "encoder_rejected",
        f"{target.name}: PS3.5 8.2 defines no {target.uid.name} encoding of Photometric "
        f"Interpretation {image[0]} with Samples per Pixel {image[1]}, Pixel "
        f"Representation {image[2]}, Bits Allocated {image[3]}, Bits Stored {image[4]}",
    )


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " | ".join(lines[:3]) or type(exc).__name__


def _new_uid_wanted(target: Target, options: CompressionOptions) -> bool:
    if options.generate_instance_uid is None:
        return target.lossy  # PS3.3 C.7.6.1.1.5: lossy compression makes a new instance
    return options.generate_instance_uid


def serialize(ds: Dataset, into: BinaryIO | None = None) -> bytes:
    """Write ``ds`` as a Part 10 file in its (new) transfer syntax.

    Returns the bytes; with ``into`` (a seekable file), writes them there instead and
    returns ``b""``.
    """

    def write() -> bytes:
        if into is not None:
            into.seek(0)
            into.truncate()
            dcmwrite(into, ds, enforce_file_format=True)
            into.seek(0)
            return b""
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()

    try:
        return write()
    except Exception as first:
        raise_outside_causes(first)
        # Elements whose VR depends on other elements (US or SS...) can fail to
        # encode after a syntax change; resolve them and try once more.
        try:
            resolve_ambiguous_vrs(ds, signed=int(ds.get("PixelRepresentation", 0)) == 1)
            return write()
        except Exception as exc:
            raise_outside_causes(exc)
            # the source stays readable: copied unchanged rather than failed
            raise UnsupportedImage(
                "unwritable_dataset", f"cannot write the compressed data set: {_first_line(exc)}"
            ) from exc
