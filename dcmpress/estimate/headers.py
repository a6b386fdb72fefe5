"""Phase 2 of an estimate: a sample of headers, read up to the Pixel Data only.

A ranged read of 64 KiB, grown to at most 4 MiB for a long header, gives the object's
kind - its Modality (compressed sources apart), or "not DICOM" / "unreadable" - and,
with a policy, its rule. A stratum is (size class, kind, rule).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from pydicom.dataset import Dataset

from dcmpress.estimate.population import Entry, binary_size
from dcmpress.estimate.sources import Source, retried
from worker.codec.parse import HeaderIncomplete
from worker.codec.parse import read_header as read_header_bytes
from worker.codec.syntaxes import describe
from worker.errors import DcmpressError, PermanentError, one_line
from worker.policy import Policy

log = logging.getLogger(__name__)

HEAD_FIRST = 64 * 1024  # the first ranged read of a header
HEAD_MOST = 4 * 1024 * 1024  # a header not complete within this is "unreadable"
HEAD_THREADS = 8  # header reads wait on the network: in threads
NOT_DICOM = "not DICOM"
UNREADABLE = "unreadable"
NOT_AN_INSTANCE = "not an instance"
_REFUSED_KINDS = {"skipped": NOT_AN_INSTANCE, "failed": UNREADABLE}


@dataclass(frozen=True)
class Header:
    """What one object's header says, as far as the estimate needs it."""

    key: str
    size: int
    kind: str  # the Modality (" compressed" for a compressed source), or NOT_DICOM...
    modality: str = ""
    rule: str = ""  # the policy rule it takes ("" without a policy)
    bytes_read: int = 0
    note: str = ""


def _modality(ds: Dataset) -> str:
    from worker.codec.engine import modality_of

    return modality_of(ds) or "no Modality"


def read_header(source: Source, entry: Entry, policy: Policy | None) -> Header:
    """Read ``entry``'s header with as few bytes as it takes (64 KiB, x4 up to 4 MiB).

    No object's content ends an estimate: what the engine would refuse is a kind of its
    own, and an unexpected error is an unreadable header with the error as its note.
    """
    try:
        return _read_header(source, entry, policy)
    except Exception as exc:  # a bug of ours or a library's: one header, not the run
        log.exception("cannot classify the header of %s", entry.key)
        note = f"internal error: {type(exc).__name__}: {exc}"
        return Header(entry.key, entry.size, UNREADABLE, note=one_line(note))


def _read_header(source: Source, entry: Entry, policy: Policy | None) -> Header:
    length = HEAD_FIRST
    while True:
        try:
            data = retried(partial(source.read_head, entry.key, min(length, max(entry.size, 1))))
        except (DcmpressError, OSError) as exc:
            return Header(entry.key, entry.size, UNREADABLE, note=f"cannot read: {exc}")
        whole = len(data) >= entry.size or len(data) < min(length, entry.size)
        try:
            ds = read_header_bytes(data, whole)
        except HeaderIncomplete:
            if length >= HEAD_MOST:
                note = f"no end of header in the first {binary_size(HEAD_MOST)}"
                return Header(entry.key, entry.size, UNREADABLE, bytes_read=len(data), note=note)
            length *= 4
            continue
        except PermanentError as exc:
            kind = _REFUSED_KINDS.get(exc.state, UNREADABLE)
            kind = NOT_DICOM if exc.code == "not_dicom" else kind
            return Header(entry.key, entry.size, kind, bytes_read=len(data), note=exc.message)
        break
    modality = _modality(ds)
    # the engine's own reading of the syntax (never raises, whatever the UID)
    compressed = describe(ds.file_meta.get("TransferSyntaxUID", "")).encapsulated
    rule = ""
    if policy is not None:
        try:
            rule = policy.decide(ds, entry.key, entry.size).name
        except Exception:  # an attribute the header has in a form the rule cannot read
            rule = "?"
    kind = f"{modality} compressed" if compressed else modality
    return Header(entry.key, entry.size, kind, modality, rule, len(data))


def read_headers(
    source: Source,
    entries: list[Entry],
    policy: Policy | None,
    on_done: Callable[[Header], None] | None = None,
) -> list[Header]:
    """Headers of ``entries``, read in a few threads, in the order given."""
    with ThreadPoolExecutor(HEAD_THREADS) as pool:
        futures = [pool.submit(read_header, source, entry, policy) for entry in entries]
        headers = []
        for future in futures:
            headers.append(future.result())
            if on_done is not None:
                on_done(headers[-1])
    return headers
