"""The ``auto`` target: each candidate encodes the image, the smallest verified one wins.

The candidates are ``auto_candidates``, or else every installed lossless target but
jpegxl (:func:`~worker.codec.targets.auto_candidates`).

* **Whole objects** (all but the large multi-frame files of :mod:`worker.codec.frames`):
  every candidate encodes every frame and its Part 10 output is written in memory. The
  smallest is verified; should it fail, the next smallest is, and the notice says why.
  With ``prefer_speed`` X the candidates whose encoding took at most (100 + X) % of the
  fastest one's time come first, smallest first; the others only if all of them fail.
* **Large multi-frame objects**: :data:`SAMPLE_FRAMES` frames spread over the object
  (first, middle, last) are decoded, and each candidate encodes them with the very steps
  of the frames path (:func:`~worker.codec.compress.encode_pixels`, plugin quirks
  included). The object is then compressed a group of frames at a time with the
  winner, the other candidates following as fallbacks in the order of their sample
  sizes. A source whose sample no candidate takes goes to the candidates in their given
  order, whose refusals are then recorded as for any target list.

The record's target and plugin are the winner's. A notice (kept with the record, as
moved overlays are) names every candidate with the size it reached, smallest first:
``auto chose htj2k, the smallest: htj2k 90,112 B in 0.004 s; jpeg-ls 91,330 B in
0.021 s; j2k refused (image_too_small: ...)``; sizes are of the whole output, or of the
sample's encoded frames (``on 3 of 400 frames``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset

from worker.codec.compress import (
    PIXEL_DATA,
    SourceImage,
    check_supported,
    decode_source,
    encode_pixels,
    serialize,
)
from worker.codec.frames import Plan
from worker.codec.isolation import CodecCrashed
from worker.codec.plugins.base import Plugin
from worker.codec.targets import Target, resolve_plugin
from worker.codec.verify import Verification, verify
from worker.errors import (
    PermanentError,
    UnsupportedImage,
    check_interrupted,
    raise_outside_causes,
)
from worker.settings import CompressionOptions
from worker.timing import StageTimer

SAMPLE_FRAMES = 3  # frames of a large multi-frame object every candidate encodes

# encodes the image to one target: (encoded data set, plugin used, a note on the plugin)
EncodeWith = Callable[[Target], tuple[Dataset, Plugin, str]]


@dataclass
class Trial:
    """What one candidate made of the image (or of the sample), or why it made nothing."""

    target: Target
    plugin: Plugin | None = None
    size: int = 0  # bytes of the output, or of the sample's encoded frames
    seconds: float = 0.0  # of the encoding alone
    output: bytes = b""
    encoded: Dataset | None = None  # the result's data set, without its Pixel Data
    note: str = ""  # a plugin that crashed and the one that took over
    refusal: UnsupportedImage | None = None
    error: PermanentError | None = None  # a crash, or a failed verification

    @property
    def made(self) -> bool:
        """The candidate produced a result."""
        return self.refusal is None and self.error is None


@dataclass(frozen=True)
class Picked:
    """The winner of a whole object, verified, and the notice for its record."""

    trial: Trial
    checked: Verification
    notice: str


def pick(
    source: SourceImage, options: CompressionOptions, stage: StageTimer, encode_with: EncodeWith
) -> Picked | list[UnsupportedImage]:
    """Encode ``source`` with every candidate; return the smallest that verifies, or every
    candidate's refusal when none took the image.

    Raises the first candidate's PermanentError when none made a result (all crashed)
    or none of the results verified.
    """
    trials = [
        _whole_trial(source, target, options, stage, encode_with) for target in options.targets()
    ]
    order = ranked(trials, options.prefer_speed)
    if not order:
        refusals = [trial.refusal for trial in trials if trial.refusal is not None]
        if refusals:
            return refusals
        raise next(trial.error for trial in trials if trial.error is not None)
    for trial in order:
        checked = Verification(0, None)
        if options.verify:
            check_interrupted()
            try:
                with stage("verify"):
                    checked = verify(trial.output, source, trial.target, options.jls_error)
            except PermanentError as exc:
                raise_outside_causes(exc)
                trial.error, trial.output = exc, b""
                continue
        chosen = notice(trials, trial, options.prefer_speed)
        for other in trials:
            if other is not trial:
                other.output = b""  # only the winner is written
        return Picked(trial, checked, chosen)
    raise next(trial.error for trial in order if trial.error is not None)


def _whole_trial(
    source: SourceImage,
    target: Target,
    options: CompressionOptions,
    stage: StageTimer,
    encode_with: EncodeWith,
) -> Trial:
    check_interrupted()
    try:
        check_supported(source, target, options)
        started = time.perf_counter()
        with stage("encode"):
            encoded, plugin, note = encode_with(target)
        seconds = time.perf_counter() - started
        check_interrupted()
        with stage("serialize"):
            output = serialize(encoded)
    except UnsupportedImage as exc:
        raise_outside_causes(exc)
        return Trial(target, refusal=exc)
    except PermanentError as exc:  # every plugin of the candidate crashed
        raise_outside_causes(exc)
        return Trial(target, error=exc)
    del encoded[PIXEL_DATA]  # written into the output already
    return Trial(target, plugin, len(output), seconds, output, encoded, note)


def rank_on_sample(
    frames: Plan, options: CompressionOptions, stage: StageTimer
) -> tuple[list[str], str]:
    """The candidates for a large multi-frame object, best on a sample of its frames
    first, and the notice for its record."""
    candidates = options.targets()
    indices = sample_indices(frames.frames)
    try:
        with stage("decode"):
            samples = [decode_source(frames.frame_dataset(index)) for index in indices]
    except UnsupportedImage as exc:  # the frames path refuses it as for any target
        raise_outside_causes(exc)
        return [target.name for target in candidates], f"auto could not sample: {exc.message}"
    trials = [_sample_trial(samples, target, options, stage) for target in candidates]
    order = ranked(trials, options.prefer_speed)
    names = [trial.target.name for trial in order]
    names += [target.name for target in candidates if target.name not in names]
    if not order:
        return names, notice(trials, None, options.prefer_speed)
    where = ", ".join(str(index + 1) for index in indices)
    scope = f"on {len(indices)} of {frames.frames} frames ({where})"
    return names, notice(trials, order[0], options.prefer_speed, scope)


def sample_indices(count: int) -> list[int]:
    """Up to :data:`SAMPLE_FRAMES` frame indices spread evenly, first and last included."""
    if count <= SAMPLE_FRAMES:
        return list(range(count))
    step = (count - 1) / (SAMPLE_FRAMES - 1)
    return sorted({round(step * position) for position in range(SAMPLE_FRAMES)})


def _sample_trial(
    samples: list[SourceImage], target: Target, options: CompressionOptions, stage: StageTimer
) -> Trial:
    check_interrupted()
    size = 0
    seconds = 0.0
    try:
        plugin = resolve_plugin(target, options.plugin_for(target))
        for sample in samples:
            check_supported(sample, target, options)
            started = time.perf_counter()
            with stage("encode"):
                encoded = encode_pixels(sample, target, plugin, options)
            seconds += time.perf_counter() - started
            size += len(encoded.PixelData)
    except UnsupportedImage as exc:
        raise_outside_causes(exc)
        return Trial(target, refusal=exc)
    except CodecCrashed as crash:  # the frames path falls back to another plugin; here
        return Trial(target, error=PermanentError("codec_crashed", f"{target.name}: {crash}"))
    return Trial(target, plugin, size, seconds)


def ranked(trials: list[Trial], prefer_speed: float | None) -> list[Trial]:
    """The candidates that made a result, in the order they are tried: smallest first;
    with ``prefer_speed``, those within that many percent of the fastest time first."""
    made = sorted((trial for trial in trials if trial.made), key=lambda t: (t.size, t.seconds))
    if prefer_speed is None or not made:
        return made
    limit = min(trial.seconds for trial in made) * (1 + prefer_speed / 100)
    fast = [trial for trial in made if trial.seconds <= limit]
    return fast + [trial for trial in made if trial not in fast]


def notice(
    trials: list[Trial], winner: Trial | None, prefer_speed: float | None, scope: str = ""
) -> str:
    """One line: which candidate won and what each reached, smallest first."""
    if winner is None:
        head = "auto: no candidate took the sample"
    else:
        rule = "the smallest"
        if prefer_speed is not None:
            rule += f" within {prefer_speed:g} % of the fastest"
        if any(trial.error is not None and trial.size for trial in trials):
            rule += " that verified"
        head = f"auto chose {winner.target.name}{' ' + scope if scope else ''}, {rule}"
    parts = []
    for trial in sorted(trials, key=lambda t: (not t.size, t.size)):
        name = trial.target.name
        if trial.refusal is not None:
            parts.append(f"{name} refused ({trial.refusal.code}: {trial.refusal.message})")
        elif trial.error is not None and not trial.size:
            parts.append(f"{name} failed ({trial.error.code}: {trial.error.message})")
        else:
            reached = f"{name} {trial.size:,} B in {trial.seconds:.3f} s"
            if trial.error is not None:
                reached += f", not kept ({trial.error.code}: {trial.error.message})"
            parts.append(reached)
    return f"{head}: " + "; ".join(parts)
