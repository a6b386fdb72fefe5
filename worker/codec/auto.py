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
from collections.abc import Callable, Iterator

from worker.codec.compress import SourceImage, check_supported, decode_source, encode_pixels
from worker.codec.frames import Plan
from worker.codec.isolation import CodecCrashed
from worker.codec.options import CompressionOptions
from worker.codec.targets import Target, resolve_plugin
from worker.codec.trials import Trial
from worker.codec.verify import Verification, verify
from worker.errors import PermanentError, UnsupportedImage, check_interrupted, raise_outside_causes
from worker.timing import StageTimer

SAMPLE_FRAMES = 3  # frames of a large multi-frame object every candidate encodes


class Smallest:
    """``auto`` on an image held whole, as a way of the engine's target loop: every
    candidate encodes the image first, then the smallest result is checked, the next
    smallest if it does not verify. When no candidate made a result, their refusals
    are offered (or, if every one crashed, their errors)."""

    falls_through = True

    def __init__(
        self,
        source: SourceImage,
        attempt: Callable[[Target], Trial],
        options: CompressionOptions,
    ) -> None:
        self.source = source
        self.attempt = attempt  # one candidate's trial, encoded and serialised
        self.options = options
        self.tried: list[Trial] = []

    def trials(self) -> Iterator[Trial]:
        """Every candidate's trial, the results in :func:`ranked` order."""
        self.tried = [self.attempt(target) for target in self.options.targets()]
        order = ranked(self.tried, self.options.prefer_speed)
        yield from order or [trial for trial in self.tried if trial.refusal] or self.tried

    def check(self, trial: Trial) -> Verification:
        """Verify the candidate's output, held in memory."""
        assert isinstance(trial.output, bytes)  # an image held whole is written in memory
        return verify(trial.output, self.source, trial.target, self.options.jls_error)

    def notices(self, kept: Trial) -> list[str]:
        """Which candidate won, and what each reached."""
        return [notice(self.tried, kept, self.options.prefer_speed)]


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
