"""Colour outputs: the Photometric Interpretation and colour transform each target
writes, what the IODs allow, and what the viewers show right.

The rule per target (PS3.5 8.2; docs/compatibility.md shows what the readers make of it):

* **JPEG 2000 family** (j2k, j2k-lossy, htj2k): 8-bit RGB is coded with
  the multiple component transformation (MCT) and written ``YBR_RCT`` (reversible,
  lossless syntaxes) or ``YBR_ICT`` (j2k-lossy), PS3.5 8.2.4: the colour IODs allow
  nothing else under JPEG 2000 (US PS3.3 C.8.5.6.1.2, VL C.8.12.1.1.1, Whole Slide
  C.8.12.4.1.5, Ophthalmic Photography, Enhanced MR Color, SC Multi-frame True Color
  A.8.5.4), the Image Pixel module allows both (C.7.6.3.1.2), and it compresses better.
  RGB of more than 8 bits stays ``RGB`` without the MCT: OHIF's loader turns every
  colour space but RGB into 8-bit samples, so a 16-bit ``YBR_RCT`` shows near-white.
  ``YBR_FULL`` is coded as it is, without the MCT (Table 8.2.4-1). The transform the
  codestream really uses (its COD marker) decides what the data set says.
* **JPEG-LS, JPEG XL**: RGB stays RGB; JPEG-LS keeps 8-bit ``YBR_FULL``.
* **RLE**: every colour space as it is; ``YBR_FULL`` of a US image with Planar
  Configuration 1 (PS3.3 C.8.5.6.1.16).

``YBR_FULL`` (a ``YBR_FULL_422`` source once upsampled) never becomes RGB: that would
not be lossless. Where the IOD forbids it under a target, the image is left to a later
one (:func:`refuse_outside_iod`).

Valid outputs that a major viewer still shows wrong are refused by
:mod:`worker.codec.viewers`.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000, JPEG2000Lossless, RLELossless

from worker.codec.plugins.htj2k import HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL
from worker.codec.plugins.j2k import coding
from worker.codec.targets import Target
from worker.errors import UnsupportedImage

# The colour transform of RGB in each JPEG 2000 family syntax (PS3.5 8.2.4).
COLOUR_TRANSFORM_SYNTAXES = {
    JPEG2000Lossless: "YBR_RCT",
    JPEG2000: "YBR_ICT",
    HTJ2K_LOSSLESS: "YBR_RCT",
    HTJ2K_LOSSLESS_RPCL: "YBR_RCT",
}
# IODs whose Photometric Interpretation rules let YBR_FULL (what a YBR_FULL_422 source
# decodes to) be written only under RLE: US (PS3.3 C.8.5.6.1.2: JPEG 2000 YBR_RCT or
# YBR_ICT, JPEG-LS RGB; and YBR_FULL needs Planar Configuration 1, C.8.5.6.1.16, which
# the JPEG family forbids, PS3.5 8.2) and SC Multi-frame True Color (A.8.5.4).
YBR_FULL_ONLY_RLE = {
    "1.2.840.10008.5.1.4.1.1.6.1": ("US Image", "PS3.3 C.8.5.6.1.2"),
    "1.2.840.10008.5.1.4.1.1.3.1": ("US Multi-frame Image", "PS3.3 C.8.5.6.1.2"),
    "1.2.840.10008.5.1.4.1.1.6": ("US Image (retired)", "PS3.3 C.8.5.6.1.2"),
    "1.2.840.10008.5.1.4.1.1.3": ("US Multi-frame Image (retired)", "PS3.3 C.8.5.6.1.2"),
    "1.2.840.10008.5.1.4.1.1.7.4": ("Multi-frame True Color SC Image", "PS3.3 A.8.5.4"),
}
US_SOP_CLASSES = {uid for uid, (name, _) in YBR_FULL_ONLY_RLE.items() if name.startswith("US")}
# IODs whose enumerated Photometric Interpretations have no YBR_FULL at all.
YBR_FULL_NEVER = {
    "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image",  # C.8.12.1.1.1
    "1.2.840.10008.5.1.4.1.1.77.1.2": "VL Microscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.3": "VL Slide-Coordinates Microscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.2": "Ophthalmic Photography 16 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.6": "VL Whole Slide Microscopy Image",  # C.8.12.4.1.5
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image",
}
# The colour IODs: under JPEG 2000 their RGB is YBR_RCT or YBR_ICT, never RGB
TRANSFORM_REQUIRED = set(YBR_FULL_ONLY_RLE) | set(YBR_FULL_NEVER)


def refuse_outside_iod(ds: Dataset, target: Target) -> None:
    """Raise ``unsupported_photometric`` where the IOD forbids YBR_FULL under ``target``.

    YBR_FULL samples (a YBR_FULL_422 source once upsampled) cannot become RGB, nor go
    through the colour transform, without loss: such an image is left to a target (RLE)
    that may carry it, or copied as it is.
    """
    if str(ds.get("PhotometricInterpretation", "")) != "YBR_FULL":
        return
    sop_class = str(ds.get("SOPClassUID", ""))
    iod = YBR_FULL_NEVER.get(sop_class)
    if iod:
        raise UnsupportedImage(
            "unsupported_photometric",
            f"{target.name}: the {iod} IOD allows no YBR_FULL Photometric Interpretation, "
            "and YBR samples do not become RGB without loss",
        )
    only_rle = YBR_FULL_ONLY_RLE.get(sop_class)
    if only_rle and target.uid != RLELossless:
        raise UnsupportedImage(
            "unsupported_photometric",
            f"{target.name}: the {only_rle[0]} IOD allows YBR_FULL only under RLE "
            f"({only_rle[1]}), and YBR samples do not become RGB without loss",
        )


def colour_transform(ds: Dataset, target: Target) -> str:
    """The colour transform ``target`` codes ``ds`` with: ``YBR_RCT``, ``YBR_ICT`` or ''."""
    transform = COLOUR_TRANSFORM_SYNTAXES.get(target.uid, "")
    if not transform or int(ds.SamplesPerPixel) != 3:
        return ""
    if str(ds.PhotometricInterpretation) != "RGB":
        return ""  # YBR_FULL: coded as it is, no transform (PS3.5 Table 8.2.4-1)
    if int(ds.BitsAllocated) > 8 and str(ds.get("SOPClassUID", "")) not in TRANSFORM_REQUIRED:
        return ""  # the viewer shows 16-bit colour right only as RGB
    return transform


def ask_colour_transform(ds: Dataset, target: Target) -> str:
    """Ask the JPEG 2000 encoders for :func:`colour_transform`; return its term.

    pydicom's JPEG 2000 encoders (and dcmpress's HTJ2K plugin) apply it exactly when the
    data set says YBR_RCT / YBR_ICT; the result is checked against the codestream after.
    """
    transform = colour_transform(ds, target)
    if transform:
        ds.PhotometricInterpretation = transform
    return transform


def describe_colour(ds: Dataset, source: Dataset, target: Target, wanted: str) -> None:
    """Make Photometric and Planar Configuration say what the encoding holds.

    JPEG 2000: the transform every frame's codestream actually uses decides (PS3.5
    8.2.4): YBR_RCT / YBR_ICT with one, the source's RGB or YBR_FULL without. RLE of
    YBR_FULL in a US image: Planar Configuration 1, as PS3.3 C.8.5.6.1.16 requires and
    RLE's byte segments are anyway (PS3.5 8.2.2, G.2).
    """
    if int(ds.SamplesPerPixel) != 3:
        return
    if target.uid == RLELossless:
        if (
            str(ds.PhotometricInterpretation) == "YBR_FULL"
            and str(ds.get("SOPClassUID", "")) in US_SOP_CLASSES
        ):
            ds.PlanarConfiguration = 1
        return
    if target.uid not in COLOUR_TRANSFORM_SYNTAXES:
        return
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    used = {
        coding(frame).transform for frame in generate_frames(ds.PixelData, number_of_frames=frames)
    }
    if len(used) != 1:
        raise UnsupportedImage(
            "encoder_rejected", f"{target.name}: frames coded with different colour transforms"
        )
    transform = used.pop()
    if transform != wanted:
        raise UnsupportedImage(
            "encoder_rejected",
            f"{target.name}: asked for {wanted or 'no'} colour transform, the codestream has "
            f"{transform or 'none'}",
        )
    ds.PhotometricInterpretation = transform or str(source.PhotometricInterpretation)
