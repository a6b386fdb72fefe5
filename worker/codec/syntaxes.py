"""What a source's transfer syntax UID says about its pixel data.

pydicom knows the syntaxes of its own release; archives also hold newer standard ones
(JPEG XL, Deflated Image Frame Compression: PS3.5 §10.20, §10.22, PS3.6 Table A-1)
and private or mistyped UIDs. :func:`describe` answers for all of them without
raising, so no input reaches ``internal_error`` because of the UID it carries.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import UID

# Standard transfer syntaxes newer than pydicom 3.0's UID dictionary: name, lossless.
_NEWER_STANDARD: dict[str, tuple[str, bool]] = {
    "1.2.840.10008.1.2.4.110": ("JPEG XL Lossless", True),
    # a JPEG (usually lossy) bitstream recompressed without further loss: lossy pixels
    "1.2.840.10008.1.2.4.111": ("JPEG XL JPEG Recompression", False),
    "1.2.840.10008.1.2.4.112": ("JPEG XL", False),
    "1.2.840.10008.1.2.8.1": ("Deflated Image Frame Compression", True),
}

# Retired Papyrus 3 syntax: native pixels, encoded as Implicit VR Little Endian.
PAPYRUS_3 = "1.2.840.10008.1.20"

# Encapsulated syntaxes whose pixels are exactly the original ones, so ``--transcode``
# may decode and re-encode them. Everything else encapsulated is, or may be, lossy and
# is never re-encoded.
LOSSLESS_ENCAPSULATED = frozenset(
    {
        "1.2.840.10008.1.2.1.98",  # Encapsulated Uncompressed Explicit VR Little Endian
        "1.2.840.10008.1.2.5",  # RLE Lossless
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless, SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
        "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component Lossless Only
        "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless Only
        "1.2.840.10008.1.2.4.202",  # HTJ2K with RPCL Options Lossless Only
        *(uid for uid, (_, lossless) in _NEWER_STANDARD.items() if lossless),
    }
)


@dataclass(frozen=True)
class SyntaxInfo:
    """One transfer syntax as dcmpress sees it."""

    uid: str
    name: str
    known: bool  # defined by DICOM (in pydicom's dictionary or newer)
    encapsulated: bool  # pixel data in fragments (compressed, or video, or JPIP)

    @property
    def lossless(self) -> bool:
        """Decoding gives exactly the original pixels (native, or a lossless syntax)."""
        return not self.encapsulated or self.uid in LOSSLESS_ENCAPSULATED


def describe(uid: str) -> SyntaxInfo:
    """What ``uid`` is; never raises, whatever the UID."""
    text = str(uid).strip().rstrip("\0")
    if text in _NEWER_STANDARD:
        return SyntaxInfo(text, _NEWER_STANDARD[text][0], True, True)
    if text == PAPYRUS_3:
        return SyntaxInfo(text, "Papyrus 3 Implicit VR Little Endian", True, False)
    parsed = UID(text)
    if not parsed.is_transfer_syntax:
        return SyntaxInfo(text, text or "(empty)", False, False)
    return SyntaxInfo(text, parsed.name, True, parsed.is_encapsulated)
