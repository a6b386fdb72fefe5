"""Repairs a source dataset needs before it can be written in a new transfer syntax.

All are lossless: they change how values are *encoded*, never what they are.
"""

from __future__ import annotations

import numpy as np
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from worker.errors import raise_outside_causes

_BYTE_SWAP_VRS = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_WORDS_IN_IMPLICIT_VR = {"OB or OW", "OW or OB"}
PIXEL_DATA_TAG = 0x7FE00010  # pydicom resolves its VR itself, from Bits Allocated


def swap_words_to_little_endian(ds: Dataset) -> None:
    """Byte-swap OW/OF/OL/OD/OV values read from a big-endian file.

    pydicom re-encodes numbers (US, SS, FL...) itself when writing little endian, but
    keeps the bytes of the "other" VRs exactly as they were read.
    """
    for element in ds.iterall():
        width = _BYTE_SWAP_VRS.get(element.VR)
        if width and element.value:
            words = np.frombuffer(element.value, dtype=f">u{width}")
            element.value = words.astype(f"<u{width}").tobytes()


def resolve_ambiguous_vrs(ds: Dataset, signed: bool) -> None:
    """Give every element whose VR pydicom cannot resolve a concrete one.

    Implicit-VR files leave the VR of e.g. LUT Data (US or OW) or Smallest Image
    Pixel Value (US or SS) to be inferred from other elements; when those are missing
    (LUT Data in an item without LUT Descriptor), pydicom cannot write the element.
    The raw bytes are kept; only the VR is chosen: OW where allowed (bytes verbatim),
    else SS for signed images and US otherwise.
    """
    for tag in list(ds.keys()):
        element = ds.get_item(tag, keep_deferred=True)
        if tag == PIXEL_DATA_TAG and isinstance(element, RawDataElement) and element.value is None:
            continue  # left in the source file (parse.DEFER_SIZE): read when decoded
        try:
            converted = ds[tag]
        except Exception as exc:
            raise_outside_causes(exc)
            forced = _force_vr(ds, tag, signed)
            if forced is None:
                raise  # not an ambiguity problem: a corrupt element, for the caller
            converted = forced
        if converted.VR in _WORDS_IN_IMPLICIT_VR and tag != PIXEL_DATA_TAG:
            # Retired Curve Data (50xx,3000), Overlay Data (60xx,3000) read from
            # implicit VR: PS3.5 §8.1.2 / A.1 encode them as OW there, so the bytes
            # already are little-endian words.
            converted.VR = "OW"
        if converted.VR == "SQ":
            for item in converted.value:
                resolve_ambiguous_vrs(item, signed)


def _force_vr(ds: Dataset, tag: BaseTag, signed: bool) -> DataElement | None:
    """Give the element at ``tag``, whose conversion failed, a concrete VR.

    Returns None when the failure is not about an ambiguous VR.
    """
    current = ds.get_item(tag)
    candidates = current.VR or ""
    if " or " not in candidates:
        try:
            candidates = dictionary_VR(tag)
        except KeyError:
            candidates = ""
    if " or " not in candidates:
        return None
    vr = _fallback_vr(candidates, signed)
    if isinstance(current, RawDataElement):
        ds.update_raw_element(tag, vr=vr)
        return ds[tag]
    # pydicom already turned it into a DataElement whose value is still raw bytes
    current.VR = vr
    if vr in ("US", "SS") and isinstance(current.value, bytes):
        values = np.frombuffer(current.value, "<u2" if vr == "US" else "<i2").tolist()
        current.value = values[0] if len(values) == 1 else values
    return current


def _fallback_vr(candidates: str, signed: bool) -> str:
    options = [vr.strip() for vr in candidates.split(" or ")]
    if "OW" in options:
        return "OW"
    if signed and "SS" in options:
        return "SS"
    return options[0]
