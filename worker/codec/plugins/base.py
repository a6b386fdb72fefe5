"""A plugin, and the hooks through which its quirks reach the engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from pydicom.dataset import Dataset

if TYPE_CHECKING:
    from worker.codec.compress import SourceImage
    from worker.codec.options import CompressionOptions
    from worker.codec.targets import Target

T = TypeVar("T")

# Below this many pixels per frame the JPEG-LS and JPEG 2000 encoders may refuse an
# image; their refusal then means "too small", not a broken image.
TINY_IMAGE_PIXELS = 256


class Quirks:
    """What a plugin needs around ``pydicom.pixels.compress``; by default, nothing."""

    def refuse(self, source: SourceImage, target: Target, options: CompressionOptions) -> None:
        """Raise UnsupportedImage for an image this plugin must not be given."""

    def prepare(self, ds: Dataset) -> Callable[[Dataset], None]:
        """Adjust ``ds`` just before encoding; return what undoes it on the result."""
        return _nothing

    def call(self, encode: Callable[[], T]) -> T:
        """Run the encoding (a plugin that may crash its process runs it elsewhere)."""
        return encode()

    def rejection_code(self, ds: Dataset) -> str:
        """The outcome code when the encoder raises on ``ds`` (its message says why)."""
        return "encoder_rejected"


def _nothing(_: Dataset) -> None:
    return None


def as_whole_words(ds: Dataset) -> Callable[[Dataset], None]:
    """Have the encoder code whole samples: ``ds`` says Bits Stored = Bits Allocated
    (the values fit: narrow ones zero-extended, signed ones sign-extended); return what
    makes the result say the real Bits Stored and High Bit again."""
    bits_stored, bits_allocated = int(ds.BitsStored), int(ds.BitsAllocated)
    ds.BitsStored, ds.HighBit = bits_allocated, bits_allocated - 1

    def restore(result: Dataset) -> None:
        result.BitsStored, result.HighBit = bits_stored, bits_stored - 1

    return restore


class TinyImagesQuirks(Quirks):
    """Encoders that refuse images of a handful of pixels: a size, not a defect."""

    def rejection_code(self, ds: Dataset) -> str:
        if int(ds.Rows) * int(ds.Columns) < TINY_IMAGE_PIXELS:
            return "image_too_small"
        return super().rejection_code(ds)


@dataclass(frozen=True)
class Plugin:
    """One pydicom encoding plugin, the pip packages it needs, and its quirks."""

    name: str
    packages: tuple[str, ...]
    extra: str = ""  # the dcmpress extra that installs it, if it is optional
    quirks: Quirks = field(default_factory=Quirks, compare=False, repr=False)

    @property
    def install_hint(self) -> str:
        """The one pip command that makes the plugin available ('' if built in)."""
        if self.extra:
            return f'pip install "dcmpress[{self.extra}]"'
        return "pip install " + " ".join(self.packages) if self.packages else ""
