"""python-gdcm: the fastest RLE encoder, and one that aborts its process.

On 8-bit images with an odd number of pixels (and other inputs) GDCM's RLE codec
throws a C++ exception nothing catches: the whole process gets SIGABRT. A Celery
worker child dying mid-task has its message redelivered - a crash loop - so GDCM
always encodes in a throw-away fork (:func:`~worker.codec.isolation.run_isolated`),
where a crash becomes :class:`~worker.codec.isolation.CodecCrashed` and the engine
encodes with the next RLE plugin. It is optional: ``pip install "dcmpress[gdcm]"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from worker.codec.isolation import run_isolated
from worker.codec.plugins.base import Plugin
from worker.codec.plugins.rle import RleQuirks

T = TypeVar("T")


def contained(run: Callable[[], T]) -> T:
    """Run a gdcm call in a throw-away fork (its decoders abort on bad input too)."""
    return run_isolated(run)


class GdcmRleQuirks(RleQuirks):
    """python-gdcm's RLE codec."""

    def call(self, encode: Callable[[], T]) -> T:
        return contained(encode)


GDCM_RLE = Plugin("gdcm", ("python-gdcm",), extra="gdcm", quirks=GdcmRleQuirks())
