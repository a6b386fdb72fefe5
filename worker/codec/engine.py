"""One object's bytes in, one :class:`Result` out: parse, classify, compress, verify.

No I/O and no Celery here: the local command and the S3 pipeline both call
:func:`process`, and write (or copy) what it says. Every input ends in exactly one
terminal state with a code from :data:`worker.errors.CODES`.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, BinaryIO, Generic, TypeVar

from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import DeflatedExplicitVRLittleEndian

from worker.codec import auto
from worker.codec.compress import (
    DOUBLE_FLOAT_PIXEL_DATA,
    FLOAT_PIXEL_DATA,
    PIXEL_DATA,
    SourceImage,
    check_supported,
    decode_source,
    encode,
    refuse_kept_high_bits,
    serialize,
)
from worker.codec.frames import (
    FRAMES_ABOVE,
    Encoded,
    Plan,
    encode_groups,
    first_frame,
    plan,
    verify_output,
    write_output,
)
from worker.codec.inflate import native_source
from worker.codec.isolation import CodecCrashed
from worker.codec.options import CompressionOptions
from worker.codec.parse import read_dataset
from worker.codec.syntaxes import describe
from worker.codec.targets import TARGETS, Plugin, Target, plugin_status, resolve_plugin
from worker.codec.trials import Trial, Way
from worker.codec.verify import Verification, verify
from worker.errors import (
    CODES,
    ConfigurationError,
    PermanentError,
    State,
    TransientError,
    UnsupportedImage,
    check_interrupted,
    copied_when_failed,
    one_line,
    raise_outside_causes,
)
from worker.policy import Policy, Rule
from worker.timing import StageTimer

log = logging.getLogger(__name__)

T = TypeVar("T")
LOSSY_TARGETS = frozenset(name for name, target in TARGETS.items() if target.lossy)


@dataclass
class Result:
    """The outcome of one object.

    ``output`` holds what to write for a compressed result: bytes, or a temporary file
    (a large multi-frame object's, see :mod:`worker.codec.frames`) that :meth:`close`
    removes; ``copy_source`` says the source must be copied unchanged instead; with
    neither, nothing is written.
    """

    state: State
    code: str
    message: str
    bytes_in: int
    output: bytes | BinaryIO | None = None
    copy_source: bool = False
    target: str | None = None
    plugin: str | None = None
    transfer_syntax: str | None = None
    sop_instance_uid: str | None = None
    modality: str = ""
    max_error: int | None = None
    psnr: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # pydicom's, about the source
    # what the record itself must say (moved overlays, cleared high bits); also in message
    notices: list[str] = field(default_factory=list)
    output_size: int = 0  # of ``output``; set from it
    rule: str | None = None  # the policy rule that decided, if a policy was given

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"undeclared outcome code {self.code!r}")
        self.message = one_line(self.message)
        if self.output is not None:
            self.output_size = size_of(self.output)

    @property
    def lossy(self) -> bool:
        """The result was made by a lossy target (its quality is in max_error, psnr)."""
        return self.target is not None and self.target in LOSSY_TARGETS

    @property
    def copied(self) -> bool:
        """The source is what is written, unchanged (a skipped or failed object)."""
        return self.output is None and self.copy_source

    @property
    def bytes_out(self) -> int:
        """Size of what is written: the result, the copied source, or nothing."""
        if self.output is not None:
            return self.output_size
        return self.bytes_in if self.copy_source else 0

    def close(self) -> None:
        """Remove the output's temporary file, if it has one."""
        if self.output is not None and not isinstance(self.output, bytes):
            self.output.close()

    @property
    def ratio(self) -> float | None:
        """bytes_in / bytes_out, when something is written."""
        return round(self.bytes_in / self.bytes_out, 4) if self.bytes_out else None

    def summary(self) -> dict[str, Any]:
        """Everything but the output bytes, JSON-serialisable."""
        return {
            "outcome": self.state,
            "code": self.code,
            "message": self.message,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "ratio": self.ratio,
            "target": self.target,
            "plugin": self.plugin,
            "transfer_syntax": self.transfer_syntax,
            "copied": self.copied,
            "max_error": self.max_error,
            "psnr": None if self.psnr is None else round(self.psnr, 2),
            "modality": self.modality,
            "timings": {k: round(v, 5) for k, v in self.timings.items()},
            "warnings": self.warnings,
            "notices": self.notices,
            "rule": self.rule,
        }


def size_of(data: bytes | BinaryIO) -> int:
    """The length of bytes, or of a seekable file (its position is kept)."""
    if isinstance(data, bytes | bytearray):
        return len(data)
    position = data.tell()
    size = data.seek(0, io.SEEK_END)
    data.seek(position)
    return size


def process(
    data: bytes | BinaryIO,
    options: CompressionOptions,
    frames_above: int = FRAMES_ABOVE,
    policy: Policy | None = None,
    key: str = "",
) -> Result:
    """Compress one DICOM object, held in memory or in a seekable file, as ``options``
    say.

    From a file, a native multi-frame object with at least ``frames_above`` bytes of
    Pixel Data is taken a group of frames at a time and its output is a temporary
    file (:mod:`worker.codec.frames`); anything else is read whole.

    With a ``policy``, the first rule that matches the header, ``key`` and size decides
    (copy, skip, or compress with its targets and options), and the result names it.

    Never raises for a bad object; raises only TransientError and ConfigurationError.
    """
    stages = StageTimer()
    with warnings.catch_warnings(record=True) as caught:
        # pydicom warns about many harmless oddities of real files (invalid UI values,
        # odd lengths); they are reported with the outcome, not raised or printed.
        warnings.simplefilter("always")
        result = _process_recording_errors(
            data, options, stages, frames_above, _Decider(policy, key)
        )
    check_interrupted()  # a time limit a library swallowed: the result is not to be trusted
    result.timings = stages.seconds
    result.warnings = _distinct_messages(caught)
    return result


def _distinct_messages(caught: list[warnings.WarningMessage], limit: int = 5) -> list[str]:
    messages: list[str] = []
    for item in caught:
        text = str(item.message).split("\n")[0][:200]
        if text not in messages:
            messages.append(text)
    return messages[:limit]


@dataclass(frozen=True)
class _Decider:
    """The policy (if any) and the object's key it matches on."""

    policy: Policy | None
    key: str


def _process_recording_errors(
    data: bytes | BinaryIO,
    options: CompressionOptions,
    stages: StageTimer,
    frames_above: int,
    decider: _Decider,
) -> Result:
    size = size_of(data)
    try:
        return _recorded(data, size, options, stages, frames_above, decider)
    except MemoryError as exc:  # raised as itself wherever it struck (raise_outside_causes)
        return failure("out_of_memory", f"out of memory: {exc!r}", size, options)


def _recorded(
    data: bytes | BinaryIO,
    size: int,
    options: CompressionOptions,
    stages: StageTimer,
    frames_above: int,
    decider: _Decider,
) -> Result:
    try:
        with native_source(data, options, frames_above, stages) as source:
            result = _process(source, size, options, stages, frames_above, decider)
        if source is not data and result.copy_source:
            # the copy is the deflated source itself, not the spool it was read from
            result.transfer_syntax = str(DeflatedExplicitVRLittleEndian)
    except PermanentError as exc:
        raise_outside_causes(exc)
        result = _refused(exc, size, options)
    except (TransientError, ConfigurationError):
        raise
    except Exception as exc:  # a bug of ours or a library's: record it, keep going
        raise_outside_causes(exc)  # a time limit is the task's to record
        log.exception("internal error while compressing an object")
        result = failure("internal_error", f"{type(exc).__name__}: {exc}", size, options)
    return result


def _refused(error: PermanentError, bytes_in: int, options: CompressionOptions) -> Result:
    """The record of an object the engine stopped on: skipped ones are copied, failed
    ones as ``failed_output`` says, non-DICOM as ``not_dicom`` says."""
    if error.code == "not_dicom" and options.not_dicom == "copy":
        return Result(
            "skipped", "not_dicom", f"{error.message}; copied", bytes_in, copy_source=True
        )
    if error.code == "not_dicom":  # --not-dicom fail: a bucket that should hold only DICOM
        return Result("failed", "not_dicom", error.message, bytes_in)
    if error.state == "skipped":
        return Result("skipped", error.code, f"{error.message}; copied unchanged", bytes_in,
                      copy_source=True)  # fmt: skip
    return failure(error.code, error.message, bytes_in, options)


def failure(code: str, message: str, bytes_in: int, options: CompressionOptions) -> Result:
    """A failed object's result: its source copied unchanged when the failure is about
    its content and ``failed_output`` is ``copy`` (the default), else nothing written."""
    if options.failed_output == "copy" and copied_when_failed(code):
        return Result("failed", code, f"{message}; copied unchanged", bytes_in, copy_source=True)
    return Result("failed", code, message, bytes_in)


def _process(
    data: bytes | BinaryIO,
    size: int,
    options: CompressionOptions,
    stage: StageTimer,
    frames_above: int,
    decider: _Decider,
) -> Result:
    with stage("parse"):
        ds = read_dataset(data)
    modality = modality_of(ds)
    rule = None
    if decider.policy is not None:
        rule = decider.policy.decide(ds, decider.key, size)
        options = rule.compression(options) if rule.action == "compress" else options
    result = _by_rule(rule, size) or _classify(ds, size, options)
    if result is None:
        frames = None if isinstance(data, bytes | bytearray) else plan(ds, data, frames_above)
        result = _compress(ds, frames, size, options, stage)
    result.modality = modality
    if rule is not None:
        result.rule = rule.name
    if result.copy_source:
        result.transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "") or None
    return result


def modality_of(ds: Dataset) -> str:
    """(0008,0060) Modality as the record keeps it: letters and digits, at most 16."""
    return "".join(ch for ch in str(ds.get("Modality", "") or "") if ch.isalnum())[:16]


def _by_rule(rule: Rule | None, size: int) -> Result | None:
    """The outcome a policy rule decides without compressing (copy, skip)."""
    if rule is None or rule.action == "compress":
        return None
    if rule.action == "copy":
        return Result(
            "skipped", "policy_copy", f"rule {rule.name!r}: copied unchanged", size,
            copy_source=True,
        )  # fmt: skip
    return Result("skipped", "policy_skip", f"rule {rule.name!r}: not written", size)


def _compress(
    ds: Dataset, frames: Plan | None, size: int, options: CompressionOptions, stage: StageTimer
) -> Result:
    """Compress the image whole, or a group of frames at a time when ``frames`` plans it;
    for ``auto`` these rank the candidates on a sample first, then take them in order."""
    sampled: list[str] = []  # the sample's notice, for every outcome
    if frames is not None and options.auto:
        ranked, notice = auto.rank_on_sample(frames, options, stage)
        options, sampled = options.model_copy(update={"target": ranked}), [notice]
    check_interrupted()  # at every stage boundary: a time limit stops the work here
    try:
        with stage("decode"):  # what the targets' checks look at
            source = decode_source(ds) if frames is None else first_frame(frames)
        refuse_kept_high_bits(source, options)
    except UnsupportedImage as exc:
        raise_outside_causes(exc)
        return _with_notices(_unsupported([exc], size, options), sampled)
    way: Way
    if frames is not None:
        way = _FrameGroups(source, options, stage, frames)
    elif options.auto:
        way = auto.Smallest(source, _Whole(source, options, stage).attempt, options)
    else:
        way = _Whole(source, options, stage)
    return _with_notices(_first_kept(way, size, options, stage), sampled)


def _first_kept(way: Way, size: int, options: CompressionOptions, stage: StageTimer) -> Result:
    """The target loop: the first of the way's trials whose output verifies and passes
    the quality guard is the result. A refusal, or a result outside the guard, gives way
    to the next (none left: unsupported); a result that does not verify, or a crash of
    every plugin, fails the object unless the way falls through (``auto``)."""
    refusals: list[UnsupportedImage] = []
    failures: list[PermanentError] = []
    for trial in way.trials():
        if trial.refusal is not None:
            refusals.append(trial.refusal)
            continue
        try:
            if trial.error is not None:
                raise trial.error
            checked = Verification(0, None)
            if options.verify:
                check_interrupted()
                with stage("verify"):
                    checked = way.check(trial)
        except PermanentError as exc:
            trial.discard()
            if not way.falls_through:
                raise
            raise_outside_causes(exc)
            trial.error = exc
            failures.append(exc)
            continue
        except BaseException:
            trial.discard()
            raise
        guard = quality_refusal(trial.target, checked, options)
        if guard is not None:
            trial.discard()
            refusals.append(guard)
            continue
        assert trial.encoded is not None and trial.plugin is not None  # a trial that made one
        try:
            result = _finish(size, trial.output, trial.encoded, trial.target, trial.plugin,
                             checked, trial.note, options)  # fmt: skip
        except BaseException:
            trial.discard()
            raise
        return _with_notices(result, [*trial.notices, *_guarded(refusals), *way.notices(trial)])
    if failures:
        raise failures[0]
    return _unsupported(refusals, size, options)


E = TypeVar("E")  # what a way's encoder gives: a data set, or spooled frame groups


@dataclass
class _Fixed(ABC, Generic[E]):
    """The targets in their given order, each encoded when the loop reaches it."""

    source: SourceImage  # what the targets' checks look at
    options: CompressionOptions
    stage: StageTimer
    falls_through = False

    def trials(self) -> Iterator[Trial]:
        """Each target's trial, made when it is reached."""
        return (self.attempt(target) for target in self.options.targets())

    def attempt(self, target: Target) -> Trial:
        """Encode and write the image with ``target``; a refusal or a crash of every
        plugin is kept in the trial."""
        check_interrupted()
        try:
            check_supported(self.source, target, self.options)
            started = time.perf_counter()
            with self.stage("encode"):
                encoded, plugin, note = _encode_any_plugin(
                    self._encoder(target), target, self.options
                )
            seconds = time.perf_counter() - started
            check_interrupted()
            with self.stage("serialize"):
                output, header, notes = self._write(encoded, target)
        except UnsupportedImage as exc:
            raise_outside_causes(exc)
            return Trial(target, refusal=exc)
        except PermanentError as exc:  # every plugin of the target crashed
            raise_outside_causes(exc)
            return Trial(target, error=exc)
        return Trial(target, plugin, size_of(output), seconds, output, header, note, notices=notes)

    def notices(self, kept: Trial) -> list[str]:
        """Nothing to say of the choice: the first target that took the image."""
        return []

    @abstractmethod
    def check(self, trial: Trial) -> Verification:
        """Decode the trial's output and compare it with the source."""

    @abstractmethod
    def _encoder(self, target: Target) -> Callable[[Plugin], E]:
        """Encoding with ``target``, given the plugin."""

    @abstractmethod
    def _write(self, encoded: E, target: Target) -> tuple[bytes | BinaryIO, Dataset, list[str]]:
        """The output, its data set (without Pixel Data) and its record's notices."""


class _Whole(_Fixed[Dataset]):
    """The image held whole: every frame encoded in one call, the output in memory."""

    def _encoder(self, target: Target) -> Callable[[Plugin], Dataset]:
        return partial(encode, self.source, target, options=self.options)

    def _write(self, encoded: Dataset, target: Target) -> tuple[bytes, Dataset, list[str]]:
        output = serialize(encoded)
        del encoded[PIXEL_DATA]  # written into the output already
        return output, encoded, self.source.notices

    def check(self, trial: Trial) -> Verification:
        """Decode the output in memory and compare it with the source."""
        assert isinstance(trial.output, bytes)
        return verify(trial.output, self.source, trial.target, self.options.jls_error)


@dataclass
class _FrameGroups(_Fixed[Encoded]):
    """A large native multi-frame object a group of frames at a time (see
    :mod:`worker.codec.frames`), ``source`` its first frame: the output is a temporary
    file."""

    frames: Plan

    def _encoder(self, target: Target) -> Callable[[Plugin], Encoded]:
        return partial(encode_groups, self.frames, target, options=self.options)

    def _write(self, encoded: Encoded, target: Target) -> tuple[BinaryIO, Dataset, list[str]]:
        try:
            output, written = write_output(self.frames, encoded, self.source, target, self.options)
        finally:
            encoded.close()
        return output, written, encoded.high_bits.notices(int(self.source.dataset.HighBit))

    def check(self, trial: Trial) -> Verification:
        """Decode the written file frame by frame and compare each with the source."""
        assert not isinstance(trial.output, bytes)
        return verify_output(
            trial.output, self.frames, self.source, trial.target, self.options.jls_error
        )


def quality_refusal(
    target: Target, checked: Verification, options: CompressionOptions
) -> UnsupportedImage | None:
    """The refusal of a lossy result outside the quality guard (``max_error``,
    ``min_psnr``); None if it is inside, or the target is lossless."""
    if not target.lossy:
        return None
    reasons = []
    if options.max_error is not None and checked.max_error > options.max_error:
        reasons.append(f"max error {checked.max_error} above max_error {options.max_error}")
    psnr = checked.psnr  # None: identical
    if options.min_psnr and psnr is not None and psnr < options.min_psnr:
        reasons.append(f"PSNR {psnr:.1f} dB below min_psnr {options.min_psnr:g}")
    if not reasons:
        return None
    return UnsupportedImage("quality_guard", f"{target.name} discarded: {', '.join(reasons)}")


def _guarded(refusals: list[UnsupportedImage]) -> list[str]:
    """What the record of a result says about earlier results the guard discarded."""
    return [refusal.message for refusal in refusals if refusal.code == "quality_guard"]


def _with_notices(result: Result, notices: list[str]) -> Result:
    """``result`` with ``notices`` added; a done result's message says them too."""
    result.notices = [*result.notices, *notices]
    if result.state == "done" and notices:
        result.message = one_line(f"{result.message}; " + "; ".join(notices))
    return result


def _classify(ds: Dataset, size: int, options: CompressionOptions) -> Result | None:
    """Objects that are not compressed at all, copied unchanged so the archive stays
    complete: directories, data sets that are not instances, no or float pixels,
    unknown or compressed syntaxes."""
    not_instance = _not_an_instance(ds)
    if not_instance is not None:
        return Result(*not_instance, size, copy_source=True)
    if FLOAT_PIXEL_DATA in ds or DOUBLE_FLOAT_PIXEL_DATA in ds:
        refusal = UnsupportedImage(
            "float_pixel_data", "Float/Double Float Pixel Data has no compressed syntax"
        )
        return _unsupported([refusal], size, options)
    if PIXEL_DATA not in ds:
        copy = options.no_pixel_data == "copy"
        what = "copied unchanged" if copy else "not written"
        return Result(
            "skipped",
            "no_pixel_data",
            f"no Pixel Data ({_sop_class(ds)}); {what}",
            size,
            copy_source=copy,
        )
    syntax = describe(ds.file_meta.TransferSyntaxUID)
    if not syntax.known:
        refusal = UnsupportedImage(
            "unknown_transfer_syntax",
            f"transfer syntax {syntax.uid!r} is not defined by DICOM (private?): "
            "its encoding is unknown",
        )
        return _unsupported([refusal], size, options)
    if not syntax.encapsulated:
        return None
    if not options.transcode:
        return Result(
            "skipped",
            "already_compressed",
            f"already compressed: {syntax.name}; copied",
            size,
            copy_source=True,
        )
    if not syntax.lossless or str(ds.get("LossyImageCompression", "")) == "01":
        return Result(
            "skipped",
            "lossy_source",
            f"{syntax.name} is (or may be) lossy; never re-encoded; copied",
            size,
            copy_source=True,
        )
    missing = _missing_decoder(syntax.uid)
    if missing is not None:
        return Result(
            "skipped",
            "no_decoder",
            f"no installed decoder for {syntax.name}: {missing}; copied",
            size,
            copy_source=True,
        )
    return None


# Media Storage Directory Storage: the SOP class of a DICOMDIR (PS3.10 §8.6).
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


def _not_an_instance(ds: Dataset) -> tuple[State, str, str] | None:
    """(state, code, message) for objects that parse but are no storable instance."""
    media_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    if media_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        return ("skipped", "media_directory", "a DICOMDIR (media directory index); copied")
    missing = [name for name in ("SOPClassUID", "SOPInstanceUID") if not ds.get(name)]
    if missing:
        what = " and ".join(missing)
        return ("skipped", "not_an_instance", f"no {what}: not a storable instance; copied")
    return None


def _missing_decoder(syntax: str) -> str | None:
    """Why no installed pydicom plugin decodes ``syntax``; None when one does."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return "pydicom has no decoder for it"
    if decoder.is_available:
        return None
    return "; ".join(decoder.missing_dependencies) or "no plugin available"


def _sop_class(ds: Dataset) -> str:
    uid = ds.SOPClassUID
    return str(getattr(uid, "name", uid))


def _encode_any_plugin(
    encode_with: Callable[[Plugin], T], target: Target, options: CompressionOptions
) -> tuple[T, Plugin, str]:
    """Encode with the chosen plugin; if it crashes natively, with the next one."""
    plugin = resolve_plugin(target, options.plugin_for(target))
    try:
        return encode_with(plugin), plugin, ""
    except CodecCrashed as crash:
        for other in target.plugins:
            if other != plugin and plugin_status(target, other).available:
                note = f"{plugin.name} crashed ({crash}); encoded with {other.name}"
                return encode_with(other), other, note
        raise PermanentError("codec_crashed", f"{target.name}/{plugin.name}: {crash}") from crash


def _finish(
    size: int,
    output: bytes | BinaryIO,
    encoded: Dataset,
    target: Target,
    plugin: Plugin,
    checked: Verification,
    note: str,
    options: CompressionOptions,
) -> Result:
    ratio = size / size_of(output)
    common: dict[str, Any] = {
        "target": target.name,
        "plugin": plugin.name,
        # unknown without verification: never claimed
        "max_error": checked.max_error if options.verify else None,
        "psnr": checked.psnr if options.verify else None,
    }
    if options.min_ratio and ratio < options.min_ratio:
        if not isinstance(output, bytes):
            output.close()
        return Result(
            "skipped",
            "no_gain",
            f"{target.name} gave {ratio:.2f}x, below min_ratio {options.min_ratio}; copied",
            size,
            copy_source=True,
            **common,
        )
    verified = "verified" if options.verify else "NOT verified (verify off)"
    message = f"{target.name}/{plugin.name} {ratio:.2f}x, {verified}"
    if checked.max_error:
        message += f", max error {checked.max_error}"
    if checked.psnr is not None:
        message += f", PSNR {checked.psnr:.1f} dB"
    if note:
        message += f"; {note}"
    return Result(
        "done",
        "compressed",
        message,
        size,
        output=output,
        transfer_syntax=str(target.uid),
        sop_instance_uid=str(encoded.SOPInstanceUID),
        **common,
    )


def _unsupported(
    refusals: list[UnsupportedImage], bytes_in: int, options: CompressionOptions
) -> Result:
    """No target took the image: copy and skip it, or fail it, as configured."""
    first = refusals[0]
    reasons = "; ".join(exc.message for exc in refusals)
    if options.unsupported == "fail":
        return failure(first.code, reasons, bytes_in, options)
    return Result("skipped", first.code, f"{reasons}; copied unchanged", bytes_in, copy_source=True)
