"""What a JPEG 2000 codestream says about its colour: the Photometric Interpretation it
needs (PS3.5 8.2.4), read from the codestream itself.

PS3.5 8.2.4: the data set describes what is encapsulated, and the codestream decides.
With the Part 1 multiple component transformation (MCT) on three components, the
decoder's inverse transform gives back the components the encoder was given (RGB), and
the Photometric Interpretation is ``YBR_RCT`` for the reversible transform (5-3
wavelet) or ``YBR_ICT`` for the irreversible one (9-7 wavelet); without it, the
components are the Photometric Interpretation's own (``RGB``, ``YBR_FULL``). Which
transform was used is in the COD marker segment of the main header (ISO/IEC 15444-1
A.6.1): SGcod's multiple component transformation byte and SPcod's wavelet byte. The
same holds for HTJ2K (ISO/IEC 15444-15 keeps Part 1's main header markers).
"""

from __future__ import annotations

from dataclasses import dataclass

SOC = b"\xff\x4f"
COD = 0xFF52
SOT = 0xFF90  # the first tile-part: the main header has ended
# markers without a length field (ISO/IEC 15444-1 A.1, Table A.2)
_NO_LENGTH = {0xFF4F, 0xFF93, 0xFFD9}


@dataclass(frozen=True)
class Coding:
    """The COD marker segment's colour-relevant fields."""

    mct: bool  # multiple component transformation on components 0-2
    reversible: bool  # 5-3 wavelet (reversible); 9-7 (irreversible) otherwise

    @property
    def transform(self) -> str:
        """``YBR_RCT``, ``YBR_ICT``, or '' where no colour transform was applied."""
        if not self.mct:
            return ""
        return "YBR_RCT" if self.reversible else "YBR_ICT"


def coding(codestream: bytes) -> Coding:
    """The COD of a raw J2K codestream (or one in a JP2 box); ValueError if none."""
    start = codestream.find(SOC)
    if start < 0:
        raise ValueError("no JPEG 2000 codestream (SOC marker) found")
    offset = start + 2
    while offset + 4 <= len(codestream):
        marker = int.from_bytes(codestream[offset : offset + 2], "big")
        if marker == SOT:
            break
        if marker in _NO_LENGTH:
            offset += 2
            continue
        length = int.from_bytes(codestream[offset + 2 : offset + 4], "big")
        if marker == COD:
            segment = codestream[offset + 4 : offset + 2 + length]
            if len(segment) < 10:
                raise ValueError("truncated COD marker segment")
            # Scod(1) | progression(1) layers(2) MCT(1) | levels(1) xcb ycb style wavelet
            return Coding(mct=segment[4] == 1, reversible=segment[9] == 1)
        offset += 2 + length
    raise ValueError("no COD marker segment in the JPEG 2000 main header")
