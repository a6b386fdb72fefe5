"""Give pydicom 3.0 the encoders, decoders and UIDs it lacks, the way it adds its own.

pydicom 3.0.2 (the newest release) encodes RLE, JPEG-LS and JPEG 2000 only; it decodes
HTJ2K but has no encoder object for it, and it has no JPEG XL UIDs at all. Its pixel
interfaces are open: an :class:`~pydicom.pixels.encoders.base.Encoder` per transfer
syntax in ``_PIXEL_DATA_ENCODERS`` (what :func:`~pydicom.pixels.get_encoder` and so
:func:`~pydicom.pixels.compress` look up), plugins added by import path, a PS3.5 8.2
profile per syntax in ``ENCODING_PROFILES`` (what the encoder validates), and the same
for decoders. The helpers here create those objects once, so after them
``pydicom.pixels.compress(ds, uid, encoding_plugin="imagecodecs")`` works as for
pydicom's own syntaxes. A later pydicom that brings its own keeps them: nothing of
pydicom's is replaced, only what is missing is added.
"""

from __future__ import annotations

from pydicom._uid_dict import UID_dictionary
from pydicom.pixels.decoders import base as decoders
from pydicom.pixels.encoders import base as encoders
from pydicom.pixels.encoders.base import ENCODING_PROFILES, Encoder, ProfileType
from pydicom.uid import UID

# what the version column of pydicom's encoder and decoder tables says for ours
ADDED_BY = "dcmpress"


def add_transfer_syntax(uid: str, name: str, keyword: str) -> UID:
    """Make pydicom know a standard transfer syntax newer than its UID dictionary.

    Explicit VR little endian and encapsulated, as every compressed syntax (PS3.5
    A.4): what :func:`~pydicom.dcmread` and :func:`~pydicom.dcmwrite` need to know.
    """
    UID_dictionary.setdefault(uid, (name, "Transfer Syntax", "", "", keyword))
    return UID(uid)


def encoder(uid: UID, profile: list[ProfileType]) -> Encoder:
    """pydicom's encoder for ``uid``, created (with its PS3.5 profile) if it has none."""
    known = encoders._PIXEL_DATA_ENCODERS.get(uid)
    if known is not None:
        return known[0]
    created = Encoder(uid)
    encoders._PIXEL_DATA_ENCODERS[uid] = (created, ADDED_BY)
    ENCODING_PROFILES.setdefault(uid, profile)
    return created


def decoder(uid: UID) -> decoders.Decoder:
    """pydicom's decoder for ``uid``, created if it has none."""
    known = decoders._PIXEL_DATA_DECODERS.get(uid)
    if known is not None:
        return known[0]
    created = decoders.Decoder(uid)
    decoders._PIXEL_DATA_DECODERS[uid] = (created, ADDED_BY)
    return created


def add_plugin(coder: Encoder | decoders.Decoder, label: str, module: str, function: str) -> None:
    """Add plugin ``label`` to ``coder`` once (pydicom refuses a second one)."""
    if label not in coder.available_plugins and label not in coder._unavailable:
        coder.add_plugin(label, (module, function))
