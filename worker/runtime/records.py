"""One object's record in the ledger: its compact stored form, and the short tags it
uses so that a finished record fits Redis's 64-byte listpack values."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, replace
from typing import Any

from worker.errors import TERMINAL

STATES = ("queued", "running", *TERMINAL)
_STATE_CHAR = {state: state[0] for state in STATES}
_CHAR_STATE = {char: state for state, char in _STATE_CHAR.items()}


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_IMPLIED_CODE = {"done": "compressed"}  # not stored: the only code a done object has


def to_base36(number: int) -> str:
    """Non-negative integer in base 36 (Lua reads it back with ``tonumber(s, 36)``)."""
    if number <= 0:
        return "0"
    digits = []
    while number:
        number, rest = divmod(number, 36)
        digits.append(_DIGITS[rest])
    return "".join(reversed(digits))


def worker_tag(name: str) -> str:
    """A short, stable tag for a worker name (the full name is kept once, globally)."""
    return to_base36(zlib.crc32(name.encode()))


# Short, stable tags the stored records use for codes, targets and plugins, so that a
# finished record stays within Redis's 64-byte listpack value limit
# (``hash-max-listpack-value``): one longer value turns its whole shard into a hash
# table, about 190 bytes per object instead of ~110. A tag is never reused for another
# name; a stored value that is no tag (a record of an older release) is the name itself.
CODE_TAGS: dict[str, str] = {
    "compressed": "ok", "already_compressed": "ac", "lossy_source": "ls",
    "unknown_transfer_syntax": "ut", "media_directory": "md", "not_an_instance": "ni",
    "no_pixel_data": "np", "no_decoder": "nd", "policy_copy": "pc", "policy_skip": "ps",
    "own_output": "oo", "cancelled": "ca", "no_gain": "ng",
    "unsupported_bits_allocated": "ba", "unsupported_bits_stored": "bs",
    "float_pixel_data": "fp", "unsupported_photometric": "up", "unsupported_samples": "us",
    "image_too_small": "it", "signed_near_lossless": "sn", "encoder_rejected": "er",
    "label_data": "ld", "high_bits_set": "hb", "unsupported_high_bit": "uh",
    "unsupported_overlay": "uo", "unwritable_dataset": "uw", "output_exists": "oe",
    "not_dicom": "nx", "invalid_dicom": "id", "invalid_pixel_data": "ip",
    "inflated_too_large": "il", "verification_failed": "vf", "codec_crashed": "cc",
    "out_of_memory": "om",
    "io_error": "io", "source_missing": "sm", "source_changed": "sc",
    "source_unavailable": "su", "access_denied": "ad", "storage_rejected": "sr",
    "storage_misconfigured": "sx", "retries_exhausted": "re", "worker_lost": "wl",
    "time_limit": "tl", "unknown_batch": "ub", "invalid_policy": "ix",
    "quality_guard": "qg", "internal_error": "ie", "viewer_unsafe": "vu",
}  # fmt: skip
TARGET_TAGS: dict[str, str] = {
    "jpeg-ls": "L", "jpeg-ls-near": "N", "j2k": "J", "j2k-lossy": "K", "rle": "R",
    "htj2k": "H", "htj2k-rpcl": "P", "jpegxl": "X",  # htj2k-rpcl: an earlier name
}  # fmt: skip
PLUGIN_TAGS: dict[str, str] = {
    "pyjpegls": "j", "pylibjpeg": "l", "imagecodecs": "i", "pydicom": "d", "gdcm": "g",
}  # fmt: skip
_CODE_NAMES = {tag: name for name, tag in CODE_TAGS.items()}
_TARGET_NAMES = {tag: name for name, tag in TARGET_TAGS.items()}
_PLUGIN_NAMES = {tag: name for name, tag in PLUGIN_TAGS.items()}


def _number(text: str) -> int:
    """A base-36 field; empty is 0."""
    return int(text, 36) if text else 0


@dataclass(frozen=True)
class Record:
    """One object's state, stored as a compact ``|``-separated string.

    Integers are base 36 (0 is left empty where noted), codes, targets and plugins are
    short tags (:data:`CODE_TAGS`...), the code of a done object is implied, the worker
    is a tag (see :meth:`Ledger.worker_name`), the ETag is cut to 12 characters, and
    empty fields at the end are left out: a finished record is about 55 bytes (60 with a
    lossy result's quality), so shards stay in Redis's compact listpack form.

    Fields, in order: state, code, bytes in, bytes out, attempts, target, plugin,
    milliseconds, worker, ETag, updated, lost, modality, rule, max error, PSNR (tenths
    of a dB), copied (``1``: the output is the source unchanged, a skipped or failed
    object's copy).
    """

    state: str
    code: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    attempts: int = 0
    target: str = ""
    plugin: str = ""
    millis: int = 0
    worker: str = ""
    etag: str = ""
    updated: int = 0
    lost: int = 0  # deliveries that died with their worker
    modality: str = ""  # (0008,0060) of the source, for reports
    rule: int = 0  # the batch policy's rule that decided (1-based); 0: no policy
    max_error: int | None = None  # a lossy result's largest pixel error
    psnr: float | None = None  # a lossy result's PSNR in dB (None: identical or lossless)
    copied: bool = False  # the output is the source unchanged (skipped or failed)

    def encode(self) -> str:
        """The stored form."""
        implied = _IMPLIED_CODE.get(self.state) == self.code
        fields = [
            _STATE_CHAR[self.state],
            "" if implied else CODE_TAGS.get(self.code, self.code),
            to_base36(self.bytes_in),
            to_base36(self.bytes_out),
            to_base36(self.attempts),
            TARGET_TAGS.get(self.target, self.target),
            PLUGIN_TAGS.get(self.plugin, self.plugin),
            to_base36(self.millis),
            self.worker,
            self.etag,
            to_base36(self.updated),
            to_base36(self.lost) if self.lost else "",
            self.modality,
            to_base36(self.rule) if self.rule else "",
            "" if self.max_error is None else to_base36(self.max_error),
            "" if self.psnr is None else to_base36(max(0, round(self.psnr * 10))),
            "1" if self.copied else "",
        ]
        while fields and not fields[-1]:
            fields.pop()
        return "|".join(fields)

    @classmethod
    def decode(cls, raw: str | bytes) -> Record:
        """Inverse of :meth:`encode` (and of the longer records of earlier releases)."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        parts = text.split("|")
        parts += [""] * (17 - len(parts))
        state = _CHAR_STATE[parts[0]]
        return cls(
            state=state,
            code=_CODE_NAMES.get(parts[1], parts[1]) if parts[1] else _IMPLIED_CODE.get(state, ""),
            bytes_in=_number(parts[2]),
            bytes_out=_number(parts[3]),
            attempts=_number(parts[4]),
            target=_TARGET_NAMES.get(parts[5], parts[5]),
            plugin=_PLUGIN_NAMES.get(parts[6], parts[6]),
            millis=_number(parts[7]),
            worker=parts[8],
            etag=parts[9],
            updated=_number(parts[10]),
            lost=_number(parts[11]),
            modality=parts[12],
            rule=_number(parts[13]),
            max_error=int(parts[14], 36) if parts[14] else None,
            psnr=int(parts[15], 36) / 10 if parts[15] else None,
            copied=parts[16] == "1",
        )

    @property
    def terminal(self) -> bool:
        """True once the object is done, skipped or failed."""
        return self.state in TERMINAL

    def stamped(self, **changes: Any) -> Record:
        """A copy with ``changes`` and the current time."""
        return replace(self, updated=int(time.time()), **changes)


def short_etag(etag: str | None) -> str:
    """The ETag without quotes, cut to 12 characters: enough to notice a change."""
    return (etag or "").strip('"')[:12]
