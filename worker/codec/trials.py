"""What one target made of an image (:class:`Trial`), and the ways trials are made.

The engine has one target loop (``worker.codec.engine._first_kept``): it takes the
trials of a :class:`Way` in order and keeps the first whose output verifies and passes
the quality guard. The ways differ in how they encode and in what order they offer
their trials: fixed targets on an image held whole, or a group of frames at a time
(both in the engine), and ``auto``, every candidate first, the smallest offered first
(:mod:`worker.codec.auto`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from pydicom.dataset import Dataset

from worker.codec.plugins.base import Plugin
from worker.codec.targets import Target
from worker.codec.verify import Verification
from worker.errors import PermanentError, UnsupportedImage


@dataclass
class Trial:
    """What one target made of the image (or of a sample of it), or why it made nothing."""

    target: Target
    plugin: Plugin | None = None
    size: int = 0  # bytes of the output, or of the sample's encoded frames
    seconds: float = 0.0  # of the encoding alone
    output: bytes | BinaryIO = b""  # in memory, or a temporary file (frame groups)
    encoded: Dataset | None = None  # the output's data set, without its Pixel Data
    note: str = ""  # a plugin that crashed and the one that took over
    refusal: UnsupportedImage | None = None
    error: PermanentError | None = None  # a crash, or a failed verification
    notices: list[str] = field(default_factory=list)  # what the output's record must say

    @property
    def made(self) -> bool:
        """The target produced a result."""
        return self.refusal is None and self.error is None

    def discard(self) -> None:
        """Let the output go (a temporary file is removed): it is not the result."""
        if not isinstance(self.output, bytes):
            self.output.close()
        self.output = b""


class Way(Protocol):
    """How the target loop gets its trials and checks their outputs."""

    @property
    def falls_through(self) -> bool:
        """A result that fails its check gives way to the next trial (else it fails
        the object)."""

    def trials(self) -> Iterator[Trial]:
        """The trials in the order they are judged, each made when it is reached or
        made before (as ``auto`` does)."""

    def check(self, trial: Trial) -> Verification:
        """Decode the trial's output and compare it with the source; raises
        ``verification_failed``."""

    def notices(self, kept: Trial) -> list[str]:
        """What the record of the kept trial says of how it was chosen."""
