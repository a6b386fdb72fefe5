"""Lossy results: what is never compressed lossily, and what a lossy image must declare.

* :func:`refuse_lossy` - sources a lossy target must not take: palette indices,
  segmentation labels, and pixels that were already lossily compressed once (a second
  lossy step compounds the loss).
* :func:`mark_lossy` - the attributes of a lossily compressed image: Image Type (and
  every Frame Type) value 1 DERIVED, Lossy Image Compression 01 with Ratio and Method
  appended (PS3.3 C.7.6.1.1.5), and the derivation: top-level Derivation Description,
  Derivation Code and Source Image Sequences for images of the General Image module;
  the Derivation Image Functional Group (PS3.3 C.7.6.16.2.6) for enhanced multi-frame
  images, whose IODs have no top-level derivation attributes.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from worker.codec.targets import Target
from worker.errors import UnsupportedImage

# SOP classes whose pixels are labels, not intensities (PS3.4 B.5); more label data is
# recognised by Segmentation Type (0062,0001), which every segmentation IOD carries.
LABEL_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.8": "Height Map Segmentation",
}
# Enhanced IODs whose image module carries Source Image Evidence Sequence (0008,9154),
# required once a functional group references a source image (PS3.3 C.8.13.1,
# C.8.15.2, C.8.22.3...). Other enhanced IODs (whole slide, ...) have no such element.
SOURCE_EVIDENCE_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
        "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR
        "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET
        "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET
        "1.2.840.10008.5.1.4.1.1.12.1.1",  # Enhanced XA
        "1.2.840.10008.5.1.4.1.1.12.2.1",  # Enhanced XRF
        "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume
    }
)
# (code value, scheme, meaning): CID 7203 Image Derivation, CID 7202 Source Image Purposes
LOSSY_COMPRESSION = ("113040", "DCM", "Lossy Compression")
UNCOMPRESSED_PREDECESSOR = ("121320", "DCM", "Uncompressed predecessor")
# Defined terms of Image Type / Frame Type value 1 (PS3.3 C.7.6.1.1.2, C.8.16.1)
_VALUE_1_TERMS = {"ORIGINAL", "DERIVED", "MIXED"}
_FUNCTIONAL_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


def refuse_lossy(ds: Dataset, target: Target) -> None:
    """Raise UnsupportedImage if ``ds`` must never be compressed lossily."""
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        raise UnsupportedImage(
            "unsupported_photometric",
            f"PALETTE COLOR indices cannot be compressed lossily ({target.name})",
        )
    label = LABEL_SOP_CLASSES.get(str(ds.get("SOPClassUID", "")))
    if label or "SegmentationType" in ds:
        kind = label or f"Segmentation Type {ds.get('SegmentationType', '')}"
        raise UnsupportedImage(
            "label_data", f"{kind}: label values are never compressed lossily ({target.name})"
        )
    if str(ds.get("LossyImageCompression", "") or "").strip() == "01":
        raise UnsupportedImage(
            "lossy_source",
            f"Lossy Image Compression 01: these pixels were lossily compressed before; "
            f"{target.name} would compound the loss",
        )


def mark_lossy(
    ds: Dataset, source: Dataset, pixel_bytes: int, method: str, compressed: int
) -> None:
    """Set on ``ds`` what DICOM requires of a lossily compressed image of ``source``.

    ``pixel_bytes`` is the uncompressed size and ``compressed`` the encoded one (for
    the ratio), ``method`` the Lossy Image Compression Method defined term
    (``ISO_14495_1``, ``ISO_15444_1``).
    """
    ratio = pixel_bytes / compressed if compressed else 0.0
    ds.ImageType = derived(ds.get("ImageType")) if ds.get("ImageType") else [
        "DERIVED", "PRIMARY"
    ]  # fmt: skip
    ds.LossyImageCompression = "01"
    ratios = [str(v) for v in _as_list(ds.get("LossyImageCompressionRatio"))]
    methods = [str(v) for v in _as_list(ds.get("LossyImageCompressionMethod"))]
    ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"]
    ds.LossyImageCompressionMethod = [*methods, method]
    description = f"Lossy compression {method}, ratio {ratio:.2f}:1, by dcmpress"
    if any(keyword in ds for keyword in _FUNCTIONAL_GROUPS):
        _derive_frames(ds)
        _add_derivation_group(ds, description, source)
        _reference_in_common_instance_module(ds, source)
        if str(ds.SOPClassUID) in SOURCE_EVIDENCE_SOP_CLASSES:
            _add_source_evidence(ds, source)
    else:
        _add_top_level_derivation(ds, description, source)


def derived(value: object) -> list[str]:
    """Image Type / Frame Type with value 1 exactly ``DERIVED``, the other values kept.

    A single value holding spaces (``ORIGINAL PRIMARY``, seen in real CR) is one value
    that software testing value 1 for ``DERIVED`` would miss: its words become the
    values (``DERIVED\\PRIMARY``). A value 1 that is not a defined term of value 1
    (PS3.3 C.7.6.1.1.2), nor empty, is kept as value 2 rather than lost.
    """
    values = [str(v) for v in _as_list(value)]
    if values and len(values[0].split()) > 1:
        values = [*values[0].split(), *values[1:]]
    if values and values[0].strip().upper() in {*_VALUE_1_TERMS, ""}:
        values = values[1:]  # an empty value 1 is replaced too
    return ["DERIVED", *values]


def _derive_frames(ds: Dataset) -> None:
    """Frame Type (and Image Type of converted legacy frames) value 1 DERIVED."""
    for item in _functional_group_items(ds):
        for nested in _datasets_within(item):
            for keyword in ("FrameType", "ImageType"):
                if nested.get(keyword):
                    setattr(nested, keyword, derived(nested.get(keyword)))


def _functional_group_items(ds: Dataset) -> Iterator[Dataset]:
    for keyword in _FUNCTIONAL_GROUPS:
        yield from ds.get(keyword) or []


def _datasets_within(item: Dataset) -> Iterator[Dataset]:
    """``item`` and every item of every sequence nested in it."""
    yield item
    for element in item:
        if element.VR == "SQ":
            for child in element.value:
                yield from _datasets_within(child)


def _add_derivation_group(ds: Dataset, description: str, source: Dataset) -> None:
    """Append a Derivation Image item where the IOD keeps it (PS3.3 C.7.6.16.2.6).

    A functional group lives either in the shared or in every per-frame item, never in
    both: if the source's frames already carry their own derivation, each frame gets
    an item referencing its source frame; otherwise the shared group gets one.
    """
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    if any("DerivationImageSequence" in frame for frame in per_frame):
        for number, frame in enumerate(per_frame, start=1):
            item = _derivation_item(description, source, frame_number=number)
            frame.DerivationImageSequence = Sequence(
                [*(frame.get("DerivationImageSequence") or []), item]
            )
        return
    shared = ds.get("SharedFunctionalGroupsSequence") or Sequence([Dataset()])
    if len(shared) == 0:
        shared.append(Dataset())
    group = shared[0]
    group.DerivationImageSequence = Sequence(
        [*(group.get("DerivationImageSequence") or []), _derivation_item(description, source)]
    )
    ds.SharedFunctionalGroupsSequence = shared


def _derivation_item(description: str, source: Dataset, frame_number: int = 0) -> Dataset:
    item = Dataset()
    item.DerivationDescription = description
    item.DerivationCodeSequence = Sequence([_code(*LOSSY_COMPRESSION)])
    item.SourceImageSequence = Sequence([_source_reference(source, frame_number)])
    return item


def _reference_in_common_instance_module(ds: Dataset, source: Dataset) -> None:
    """Referenced Series Sequence (PS3.3 C.12.2): the instances this one refers to
    within its study, here the source of the derivation."""
    if not source.get("SeriesInstanceUID"):
        return  # a source without its series cannot be referenced this way
    series_items = list(ds.get("ReferencedSeriesSequence") or [])
    series = next(
        (
            item
            for item in series_items
            if item.get("SeriesInstanceUID") == source.SeriesInstanceUID
        ),
        None,
    )
    if series is None:
        series = Dataset()
        series.SeriesInstanceUID = source.SeriesInstanceUID
        series_items.append(series)
    instance = Dataset()
    instance.ReferencedSOPClassUID = source.SOPClassUID
    instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    series.ReferencedInstanceSequence = Sequence(
        [*(series.get("ReferencedInstanceSequence") or []), instance]
    )
    ds.ReferencedSeriesSequence = Sequence(series_items)


def _add_source_evidence(ds: Dataset, source: Dataset) -> None:
    """Source Image Evidence Sequence: study, series and instance of the source."""
    if not (source.get("StudyInstanceUID") and source.get("SeriesInstanceUID")):
        return
    instance = Dataset()
    instance.ReferencedSOPClassUID = source.SOPClassUID
    instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence([instance])
    study = Dataset()
    study.StudyInstanceUID = source.StudyInstanceUID
    study.ReferencedSeriesSequence = Sequence([series])
    ds.SourceImageEvidenceSequence = Sequence(
        [*(ds.get("SourceImageEvidenceSequence") or []), study]
    )


def _add_top_level_derivation(ds: Dataset, description: str, source: Dataset) -> None:
    """General Image module: Derivation Description, Derivation Code, Source Image."""
    previous = str(ds.get("DerivationDescription", "") or "")
    ds.DerivationDescription = (f"{previous}; {description}" if previous else description)[:1024]
    codes = list(ds.get("DerivationCodeSequence") or [])
    ds.DerivationCodeSequence = Sequence([*codes, _code(*LOSSY_COMPRESSION)])
    existing = list(ds.get("SourceImageSequence") or [])
    ds.SourceImageSequence = Sequence([*existing, _source_reference(source)])


def _source_reference(source: Dataset, frame_number: int = 0) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame_number:
        reference.ReferencedFrameNumber = frame_number
    reference.PurposeOfReferenceCodeSequence = Sequence([_code(*UNCOMPRESSED_PREDECESSOR)])
    return reference


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _as_list(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple | MultiValue):
        return list(value)
    return [value]
