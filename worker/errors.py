"""The error taxonomy, and the registry of outcome codes.

Three families, caught by family by the callers:

* :class:`TransientError` - the world was briefly unhappy (network, throttling, a Redis
  hiccup). The queue retries the object later with backoff.
* :class:`PermanentError` - this object can never succeed as asked. It carries a stable,
  machine-readable ``code``; the object is recorded and never retried.
  :class:`UnsupportedImage` is the permanent error for images a *target* cannot take:
  the engine tries the next target of the fallback list before giving up.
* :class:`ConfigurationError` - the operator asked for something impossible (an
  unknown target, a plugin that is not installed). Raised at start-up.

Two more say what became of an object's claim: :class:`ClaimHeld` (another delivery
works on it: a transient error, waited out) and :class:`ClaimLost` (another delivery
took it over: this one stops and records nothing).

Every code an object can end with is declared in :data:`CODES`;
docs/reference/outcome-codes.md documents each one and a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

State = Literal["done", "skipped", "failed"]
TERMINAL: tuple[State, ...] = ("done", "skipped", "failed")  # every object ends in one


@dataclass(frozen=True)
class CodeInfo:
    """What an outcome code means and which terminal state it normally lands in."""

    state: State
    description: str


# code -> meaning. ``state`` is the default; ``--unsupported fail`` turns skipped
# "unsupported" codes into failures.
CODES: dict[str, CodeInfo] = {
    # done
    "compressed": CodeInfo("done", "Compressed, verified and written."),
    # skipped: the object is copied unchanged (by default) so the archive stays complete
    "already_compressed": CodeInfo(
        "skipped", "Pixel data already uses a compressed transfer syntax (see --transcode)."
    ),
    "lossy_source": CodeInfo(
        "skipped",
        "The source is (or may be) lossy: never re-encoded lossily, nor transcoded; "
        "lossless targets still take native pixels marked Lossy Image Compression 01.",
    ),
    "unknown_transfer_syntax": CodeInfo(
        "skipped", "A transfer syntax UID neither DICOM nor pydicom defines (private?)."
    ),
    "media_directory": CodeInfo(
        "skipped", "A DICOMDIR (Media Storage Directory): an index, not an image; copied."
    ),
    "not_an_instance": CodeInfo(
        "skipped",
        "Parses as DICOM but lacks SOP Class or SOP Instance UID, so it cannot be "
        "rewritten as a Part 10 instance; copied unchanged.",
    ),
    "no_pixel_data": CodeInfo(
        "skipped", "No Pixel Data element (SR, KOS, PR, RT plans...): nothing to compress."
    ),
    "no_decoder": CodeInfo(
        "skipped", "--transcode was given but no installed plugin decodes the source syntax."
    ),
    "policy_copy": CodeInfo(
        "skipped", "The policy's rule (named in the record) says copy: copied unchanged."
    ),
    "policy_skip": CodeInfo(
        "skipped", "The policy's rule (named in the record) says skip: nothing written."
    ),
    "own_output": CodeInfo(
        "skipped", "The object is a dcmpress output (metadata marker); never processed again."
    ),
    "cancelled": CodeInfo(
        "skipped", "The batch was cancelled before this object was processed (see resume)."
    ),
    "no_gain": CodeInfo(
        "skipped", "The compressed result was not smaller than the source (see min_ratio)."
    ),
    "unsupported_bits_allocated": CodeInfo(
        "skipped", "Bits Allocated (e.g. 1 or 32) that no requested target can encode."
    ),
    "unsupported_bits_stored": CodeInfo(
        "skipped", "Bits Stored above what the requested targets can encode."
    ),
    "float_pixel_data": CodeInfo(
        "skipped", "Float or Double Float Pixel Data: no DICOM compressed syntax exists."
    ),
    "unsupported_photometric": CodeInfo(
        "skipped",
        "Photometric Interpretation the targets cannot take (e.g. PALETTE COLOR under a "
        "lossy target).",
    ),
    "unsupported_samples": CodeInfo("skipped", "Samples per Pixel other than 1 or 3."),
    "image_too_small": CodeInfo(
        "skipped", "Rows or Columns below what the target's encoder accepts."
    ),
    "signed_near_lossless": CodeInfo(
        "skipped",
        "Signed pixels within jls_error of their range limits: they would wrap under "
        "JPEG-LS near-lossless.",
    ),
    "encoder_rejected": CodeInfo(
        "skipped", "Every requested target's encoder refused the image (message says why)."
    ),
    "viewer_unsafe": CodeInfo(
        "skipped",
        "Every requested target's output would be valid but shown wrong by OHIF's loader "
        "(16-bit RGB under RLE, HTJ2K colour without the colour transform, signed 8-bit "
        "under RLE or JPEG 2000...), and viewer_safe is on.",
    ),
    "label_data": CodeInfo(
        "skipped",
        "A Segmentation (or other label data) under a lossy target: labels are never "
        "compressed lossily.",
    ),
    "high_bits_set": CodeInfo(
        "skipped",
        "Bits above High Bit are set that no overlay declares, and high_bits is keep: "
        "left uncompressed.",
    ),
    "unsupported_high_bit": CodeInfo(
        "skipped",
        "High Bit is not Bits Stored - 1 (an old layout with the values in the high "
        "bits): no target keeps it exactly.",
    ),
    "unsupported_overlay": CodeInfo(
        "skipped",
        "An embedded overlay that cannot be moved to Overlay Data (colour image, "
        "compressed source, or a bit position outside Bits Allocated).",
    ),
    "unwritable_dataset": CodeInfo(
        "skipped",
        "An element of the source cannot be written in the new transfer syntax (message names it).",
    ),
    "output_exists": CodeInfo(
        "skipped",
        "Local runs with --resume: the output is there already, newer than the input; "
        "not written again.",
    ),
    "not_dicom": CodeInfo(
        "skipped", "The object is not a DICOM file: copied unchanged (or failed, see not_dicom)."
    ),
    # failed
    "invalid_dicom": CodeInfo("failed", "A DICOM file that cannot be parsed (truncated, corrupt)."),
    "invalid_pixel_data": CodeInfo(
        "failed",
        "Pixel Data length or Image Pixel attributes are inconsistent, so the pixels "
        "cannot be decoded.",
    ),
    "inflated_too_large": CodeInfo(
        "failed",
        "A Deflated Explicit VR Little Endian data set inflates past max_inflated_mb; "
        "inflation stopped there (a deflate bomb fills neither memory nor disk).",
    ),
    "verification_failed": CodeInfo(
        "failed",
        "The compressed result did not decode to the source pixels (or beyond the allowed "
        "error); it was discarded.",
    ),
    "codec_crashed": CodeInfo("failed", "A native codec crashed the process handling this object."),
    "out_of_memory": CodeInfo(
        "failed",
        "The worker ran out of memory on this object (MemoryError); retry it on a worker "
        "with more memory.",
    ),
    "io_error": CodeInfo(
        "failed", "Reading the source or writing the output failed (local files)."
    ),
    "source_missing": CodeInfo(
        "failed", "The source object no longer exists (deleted after it was enqueued)."
    ),
    "source_changed": CodeInfo(
        "failed", "In-place mode: the source changed while it was compressed; not replaced."
    ),
    "source_unavailable": CodeInfo(
        "failed", "The storage refuses to serve the source (e.g. archived to Glacier)."
    ),
    "access_denied": CodeInfo(
        "failed", "The credentials may not read the source or write the destination."
    ),
    "storage_rejected": CodeInfo(
        "failed", "The storage refused a request for another reason (message says which)."
    ),
    "storage_misconfigured": CodeInfo(
        "failed",
        "The S3 client cannot work as configured (no or partial credentials, no region, "
        "an invalid parameter); fix the workers' configuration, then retry.",
    ),
    "retries_exhausted": CodeInfo(
        "failed", "A transient error (S3 5xx, throttling, connection) outlasted max_retries."
    ),
    "worker_lost": CodeInfo(
        "failed",
        "The object's worker process died max_attempts times (native crash, out of "
        "memory, hard time limit); not tried again.",
    ),
    "time_limit": CodeInfo("failed", "Processing exceeded task_soft_time_limit."),
    "unknown_batch": CodeInfo(
        "failed", "A job message named a batch the ledger does not know (expired?)."
    ),
    "invalid_policy": CodeInfo(
        "failed", "The batch's policy cannot be read by this worker (another release?)."
    ),
    "quality_guard": CodeInfo(
        "skipped",
        "Every lossy result was outside the quality guard (max_error, min_psnr) and no "
        "later target took the image; copied unchanged (or failed with unsupported=fail).",
    ),
    "internal_error": CodeInfo(
        "failed", "An unexpected error in dcmpress itself; please report it."
    ),
}


# Failures about storage or the batch, not about what the object contains: the source is
# gone, refused or unreachable, or no destination is known. They never have an output.
# Every other failure (invalid_dicom, verification_failed, codec_crashed, worker_lost,
# time_limit...) copies the source unchanged by default (``failed_output``), so the
# destination is a complete archive; the record stays failed, with its code.
NOT_COPIED_WHEN_FAILED = frozenset(
    {
        "io_error", "source_missing", "source_changed", "source_unavailable",
        "access_denied", "storage_rejected", "storage_misconfigured", "retries_exhausted",
        "unknown_batch", "invalid_policy",
    }
)  # fmt: skip


def copied_when_failed(code: str) -> bool:
    """True if an object failed with ``code`` is copied unchanged (with
    ``failed_output=copy``, the default): the failure is about its content."""
    return code not in NOT_COPIED_WHEN_FAILED


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` on one line: every run of whitespace (newlines too) becomes one space.

    Outcome messages end up in CSV rows, log lines and Flower; a library's multi-line
    error text must never make a record span several lines.
    """
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# Exceptions that stop an object's processing from outside - a task time limit - and are
# never the object's fault: no broad handler may turn them into an outcome code. The
# engine knows no Celery; the runtime registers Celery's SoftTimeLimitExceeded here.
INTERRUPTIONS: list[type[BaseException]] = []
# Probes the runtime registers: each says whether the current object's work was
# interrupted from outside even if a library swallowed the exception on its way (pydicom
# turns a plugin's exception into its own RuntimeError text); None if it was not.
INTERRUPTION_PROBES: list[Callable[[], BaseException | None]] = []


def check_interrupted() -> None:
    """Raise the interruption a registered probe reports, if any."""
    for probe in INTERRUPTION_PROBES:
        interruption = probe()
        if interruption is not None:
            raise interruption


def raise_outside_causes(exc: BaseException) -> None:
    """Re-raise what stopped the work from outside, found anywhere in ``exc``'s chain.

    A registered interruption (a time limit) or a MemoryError is re-raised as itself,
    so it is recorded as what it is (``time_limit``, ``out_of_memory``), never as a
    verification failure, an encoder refusal or an internal error.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (MemoryError, *INTERRUPTIONS)):
            raise current
        current = current.__cause__ or current.__context__


class DcmpressError(Exception):
    """Base class of every error dcmpress raises on purpose."""


class ConfigurationError(DcmpressError, ValueError):
    """The configuration cannot work; raised before any object is touched."""


class TransientError(DcmpressError):
    """A failure that may go away on its own; the object is retried later."""


class ClaimHeld(TransientError):
    """Another worker is processing this object right now; try again later."""


class ClaimLost(DcmpressError):
    """Another delivery took this object's claim over while we worked: it finishes the
    object, so this one stops without writing or recording anything."""


class PermanentError(DcmpressError):
    """This object cannot be processed as asked; record ``code`` and move on."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"undeclared outcome code {code!r}")
        message = one_line(message)
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[PermanentError], tuple[str, str]]:
        # keeps the error picklable across process boundaries (pools, forks)
        return (type(self), (self.code, self.message))

    @property
    def state(self) -> State:
        """The terminal state this error normally leads to."""
        return CODES[self.code].state


class UnsupportedImage(PermanentError):
    """The image cannot be encoded by one target; another target may take it."""
