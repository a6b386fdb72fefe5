"""Valid outputs that a major viewer shows wrong, refused unless told otherwise.

OHIF and most DICOMweb viewers decode through Cornerstone's
``@cornerstonejs/dicom-image-loader`` (WASM builds of CharLS, OpenJPEG, OpenJPH, libjxl,
its own RLE decoder, its own colour conversion). Where it shows a valid output wrong,
the output is refused while ``viewer_safe`` is on (the default): ``viewer_unsafe``, so
the next target takes the image (``auto`` never picks it), else the source is copied.
tests/integration/test_readers.py decodes every output with the loader and shows these
wrong, and every other output right; docs/compatibility.md is its table. Each failure
is traced in the loader's code:

* its RLE decoder's 16-bit path fills one sample's byte planes: 16-bit colour RLE;
* the OpenJPH wrapper of its HTJ2K decoder copies the lines of components coded
  without the colour transform to the wrong rows: HTJ2K colour without the RCT;
* every colour space but RGB goes into 8-bit canvas data: 16-bit colour with a JPEG
  2000 colour transform (where the IOD requires one) is clamped at 255;
* signed 8-bit samples: RLE shows them unsigned (as it shows a native source), its
  JPEG 2000 decoders clamp the negative ones to 0; JPEG-LS and JPEG XL are right.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from worker.codec.colour import COLOUR_TRANSFORM_SYNTAXES, colour_transform
from worker.codec.plugins import htj2k
from worker.codec.targets import Target
from worker.errors import UnsupportedImage

# Where the failures were seen (tests/viewer pins it)
VIEWER = "@cornerstonejs/dicom-image-loader 5.14"


def viewer_failure(ds: Dataset, target: Target) -> str:
    """Why OHIF's loader shows ``target``'s valid output of ``ds`` wrong ('' if not)."""
    if int(ds.SamplesPerPixel) == 1:
        signed_8_bit = int(ds.PixelRepresentation) == 1 and int(ds.BitsAllocated) == 8
        if signed_8_bit and target.uid == RLELossless:
            return "shows signed 8-bit RLE samples as unsigned"
        if signed_8_bit and target.uid in COLOUR_TRANSFORM_SYNTAXES:
            return "clamps negative 8-bit JPEG 2000 samples to 0"
        return ""
    deep = int(ds.BitsAllocated) > 8
    if target.uid == RLELossless and deep:
        return "decodes 16-bit RLE of one sample per pixel only: 16-bit colour shows wrong"
    transform = colour_transform(ds, target)
    if target.uid in htj2k.SYNTAXES and not transform:
        return (
            "copies HTJ2K colour coded without the colour transform to the wrong rows: "
            f"{ds.PhotometricInterpretation} of {ds.BitsAllocated} bits shows scrambled"
        )
    if deep and transform:
        return (
            f"turns {transform} into 8-bit samples, and the IOD requires that transform "
            "for RGB under JPEG 2000: 16-bit colour shows near-white"
        )
    return ""


def refuse_viewer_failures(ds: Dataset, target: Target) -> None:
    """Raise ``viewer_unsafe`` for a valid output the viewer would show wrong."""
    reason = viewer_failure(ds, target)
    if reason:
        raise UnsupportedImage(
            "viewer_unsafe",
            f"{target.name}: OHIF's loader ({VIEWER}) {reason} (viewer_safe false writes it)",
        )
