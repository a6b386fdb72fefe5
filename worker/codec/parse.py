"""Bytes in, a complete Part 10 Dataset out, or a specific permanent error.

Real archives hold files without the 128-byte preamble and file meta (raw datasets
written by old modalities), big-endian files, and objects that are not DICOM at all.
This module is the single place that decides which is which.
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.datadict import dictionary_has_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_deferred_data_element
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from worker.codec.repair import PIXEL_DATA_TAG, resolve_ambiguous_vrs
from worker.codec.syntaxes import PAPYRUS_3
from worker.errors import PermanentError, raise_outside_causes

# A raw dataset (no preamble) starts with its lowest tag; real ones start in these groups.
_RAW_DATASET_FIRST_GROUPS = {0x0000, 0x0002, 0x0008}
# Values at least this long stay in a source file until used (Pixel Data above all)
DEFER_SIZE = 1024 * 1024
NO_STANDARD_ELEMENT = "no standard DICOM element could be read"
ONLY_PRIVATE_ELEMENTS = (
    "a Part 10 file whose data set holds only private elements: no SOP Class or "
    "Instance UID, not a storable instance"
)
# The first bytes of a Pixel Data element, little and big endian (tag, then the VR of
# an explicit VR syntax): a file that ends within them lost its pixels
_PIXEL_DATA_STARTS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
_LONGEST_HEADER = 12  # tag, VR, two reserved bytes, 4-byte length
# The most of a deflated data set read_header inflates: any header ends well before
HEADER_INFLATED_MOST = 16 * 1024 * 1024
# (is implicit VR, is little endian) of every output: explicit VR little endian
_WRITTEN_ENCODING = (False, True)


def read_dataset(source: bytes | BinaryIO) -> Dataset:
    """Parse ``source`` into a Dataset whose file meta matches it as far as it can.

    From a file (a seekable one, kept open while the data set is used), values of
    :data:`DEFER_SIZE` bytes or more are read only when used, and Pixel Data not
    before it is decoded: a large object is not read whole just to look at it.

    Raises PermanentError ``not_dicom`` or ``invalid_dicom``. A data set without SOP
    Class UID (a DICOMDIR, a stray data set) is returned as it is, for the engine to
    classify.
    """
    deferred = not isinstance(source, bytes | bytearray)
    file = source if not isinstance(source, bytes | bytearray) else io.BytesIO(source)
    size = file.seek(0, io.SEEK_END)
    file.seek(0)
    if size < 8:
        raise PermanentError("not_dicom", f"only {size} bytes: too short to be DICOM")
    ds = _read(file, DEFER_SIZE if deferred else None)
    _complete_file_meta(ds)
    return ds


def _read(file: BinaryIO, defer_size: int | None) -> Dataset:
    ds = _parsed(file, defer_size=defer_size)
    if PIXEL_DATA_TAG not in ds:
        _refuse_cut_pixel_data(file, _left_over(ds, file))
    try:
        if ds.original_encoding == _WRITTEN_ENCODING:
            # pydicom writes the elements it has not parsed byte for byte, as every
            # output syntax is explicit VR little endian too: nothing to resolve, and
            # parsing them all cost more than the encode of a small image (a 262-element
            # CT header: 2.5 ms to parse, 1.1 ms more to write; what the engine reads is
            # parsed then)
            _read_deferred_values(ds, file)
        else:
            # the elements are re-encoded on writing: convert every one now (giving the
            # VR-ambiguous ones a concrete VR) so a corrupt file fails here, with a
            # clear code, and not halfway through encoding.
            resolve_ambiguous_vrs(ds, signed=_is_signed(ds))
    except Exception as exc:
        raise_outside_causes(exc)
        raise PermanentError("invalid_dicom", f"cannot parse an element: {exc}") from exc
    return ds


class HeaderIncomplete(Exception):
    """The bytes read end before the header does: read more."""


def read_header(data: bytes, whole: bool) -> Dataset:
    """The data set up to (not including) Pixel Data, from the first bytes of an object,
    decided as :func:`read_dataset` decides (``dcmpress estimate`` reads headers so).

    ``whole`` says ``data`` is the entire object. Raises :class:`HeaderIncomplete`
    when the bytes ended inside the header (pydicom stops quietly at the end of the
    buffer; stopping before Pixel Data leaves the position short of the end), and
    PermanentError ``not_dicom``, ``invalid_dicom`` or ``not_an_instance`` as the engine
    would for the object.
    """
    if len(data) < 8 and whole:
        raise PermanentError("not_dicom", f"only {len(data)} bytes: too short to be DICOM")
    from worker.codec.inflate import inflated_head  # it reads headers with this module

    inflated = inflated_head(data, HEADER_INFLATED_MOST)
    if inflated is not None:  # read as the engine reads it: inflated, native
        data, whole = inflated[0], whole and inflated[1]
    file = io.BytesIO(data)
    ds = _parsed(file, partial=not whole, stop_before_pixels=True)
    _complete_file_meta(ds)
    return ds


def _parsed(file: BinaryIO, partial: bool = False, **read_options: Any) -> Dataset:
    """:func:`read_part10_or_raw` of ``file`` with what the engine decides about what it
    found: unparseable, garbage with a DICM prefix, only private elements. ``partial``:
    ``file`` holds only the first bytes of the object (HeaderIncomplete when it ends
    inside the header)."""
    try:
        ds = read_part10_or_raw(file, **read_options)
    except PermanentError:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt or cut-off files
        raise_outside_causes(exc)
        if partial:
            raise HeaderIncomplete(str(exc)) from exc
        _refuse_cut_pixel_data(file, _tail(file))
        raise PermanentError("invalid_dicom", f"cannot parse: {exc}") from exc
    if partial and file.tell() >= file.seek(0, io.SEEK_END):
        raise HeaderIncomplete("the header goes on past the bytes read")
    if not has_standard_elements(ds):
        if _is_private_instance(ds):
            raise PermanentError("not_an_instance", ONLY_PRIVATE_ELEMENTS)
        raise PermanentError("invalid_dicom", NO_STANDARD_ELEMENT)
    return ds


def _refuse_cut_pixel_data(file: BinaryIO, tail: bytes) -> None:
    """Raise ``invalid_pixel_data`` if ``tail``, the bytes at the end of ``file`` that
    no element took, is the start of a Pixel Data element's header: pydicom stops
    without a word when fewer than 8 bytes are left for an element, so the data set
    reads as one without Pixel Data (or fails on the missing length)."""
    for start in range(len(tail)):
        rest = tail[start:]
        if any(rest[:4] == tag[: len(rest[:4])] for tag in _PIXEL_DATA_STARTS):
            if start and len(rest) < 4:
                continue  # a partial tag is only trusted where the last element ended
            raise PermanentError(
                "invalid_pixel_data",
                f"the file ends {len(rest)} bytes into the Pixel Data element's header: "
                "its pixels are missing (truncated)",
            )


def _tail(file: BinaryIO) -> bytes:
    """The last bytes of ``file``, as many as the longest element header less one."""
    size = file.seek(0, io.SEEK_END)
    file.seek(max(0, size - (_LONGEST_HEADER - 1)))
    return file.read()


def _left_over(ds: Dataset, file: BinaryIO) -> bytes:
    """The bytes after the data set's last element that pydicom read no element from
    (b"" when there are none, or where the last element's end is not known)."""
    tags = list(ds.keys())
    if not tags:
        return b""
    last = ds.get_item(max(tags), keep_deferred=True)
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if not isinstance(last, RawDataElement) or tell is None or length in (None, 0xFFFFFFFF):
        return b""
    size = file.seek(0, io.SEEK_END)
    end = int(tell) + int(length)
    if not 0 < size - end < _LONGEST_HEADER:
        return b""
    file.seek(end)
    return file.read()


def _is_private_instance(ds: Dataset) -> bool:
    """A Part 10 file (preamble, DICM, file meta with a transfer syntax) whose data set
    parsed into private elements only: readable, but no instance."""
    meta = ds.get("file_meta")
    return (
        getattr(ds, "preamble", None) is not None
        and meta is not None
        and "TransferSyntaxUID" in meta
        and len(ds) > 0
        and all(tag.is_private for tag in ds.keys())  # noqa: SIM118
    )


def _read_deferred_values(ds: Dataset, file: BinaryIO) -> None:
    """Read now the values left in the source file (parse.DEFER_SIZE) but Pixel Data's:
    the file is not kept with the data set once its pixels are decoded. They stay
    unparsed, as the values read with the header do, and are written as stored:
    parsing a corrupt sequence and writing it again would change it silently."""
    for tag in list(ds.keys()):
        element = ds.get_item(tag, keep_deferred=True)
        if (
            tag != PIXEL_DATA_TAG
            and isinstance(element, RawDataElement)
            and element.value is None
            and element.length
        ):
            # from the open file the header came from (not reopened by its name)
            ds[tag] = read_deferred_data_element(type(file), file, None, element)


def read_part10_or_raw(file: BinaryIO, **read_options: Any) -> Dataset:
    """``dcmread`` of ``file`` (at its start) as a Part 10 file or, without the DICM
    prefix, as a raw data set: the one place that tells them and non-DICOM apart.

    Raises PermanentError ``not_dicom`` for neither (or a raw data set of no element);
    what pydicom raises for one that does not parse is the caller's to classify (a
    header cut short is not a corrupt one).
    """
    try:
        ds: Dataset = dcmread(file, **read_options)
        return ds
    except InvalidDicomError:
        file.seek(0)
        raw = looks_like_raw_dataset(file.read(2))
    if not raw:
        raise PermanentError("not_dicom", "no DICM prefix and no recognisable DICOM data set")
    file.seek(0)
    ds = dcmread(file, force=True, **read_options)
    if len(ds) == 0:
        raise PermanentError("not_dicom", "no DICOM elements found")
    return ds


def has_standard_elements(ds: Dataset) -> bool:
    """True if the data set holds at least one element the DICOM dictionary defines.

    Garbage after a ``DICM`` prefix parses as a few elements with meaningless tags.
    """
    return any(tag.group != 0xFFFE and dictionary_has_tag(tag) for tag in ds.keys())  # noqa: SIM118


def _is_signed(ds: Dataset) -> bool:
    try:
        return int(ds.get("PixelRepresentation", 0) or 0) == 1
    except (TypeError, ValueError):
        return False


def looks_like_raw_dataset(data: bytes) -> bool:
    """True when ``data`` starts like a data set without preamble (either byte order)."""
    little = int.from_bytes(data[0:2], "little")
    big = int.from_bytes(data[0:2], "big")
    return little in _RAW_DATASET_FIRST_GROUPS or big in _RAW_DATASET_FIRST_GROUPS


def _complete_file_meta(ds: Dataset) -> None:
    """Give ``ds`` file meta that matches its contents (raw data sets have none)."""
    meta = ds.get("file_meta") or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = _guess_syntax(ds)
    elif meta.TransferSyntaxUID == PAPYRUS_3:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian  # what Papyrus 3 encodes
    if "SOPClassUID" in ds:  # DICOMDIRs and stray data sets have none (see engine)
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.setdefault("ImplementationClassUID", PYDICOM_IMPLEMENTATION_UID)
    ds.file_meta = meta


def _guess_syntax(ds: Dataset) -> UID:
    """The transfer syntax a raw data set was actually read with."""
    implicit, little = ds.original_encoding
    if not little:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
