"""RLE Lossless through pydicom's RLE encoding, whichever plugin codes the segments.

pydicom 3.0 writes too few byte segments when Bits Stored <= 8 in 16-bit containers;
encoding as if Bits Stored were Bits Allocated is equivalent (the values fit) and
correct, and the result then says the real Bits Stored again. Also pydicom's own
pure-Python RLE plugin (slow, but always there).
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset

from worker.codec.plugins.base import Plugin, Quirks, as_whole_words


class RleQuirks(Quirks):
    """Every RLE plugin: encode narrow values in wide containers as full words."""

    def prepare(self, ds: Dataset) -> Callable[[Dataset], None]:
        bits_stored, bits_allocated = int(ds.BitsStored), int(ds.BitsAllocated)
        if not bits_stored <= 8 < bits_allocated:
            return super().prepare(ds)
        return as_whole_words(ds)


PYDICOM_RLE = Plugin("pydicom", (), quirks=RleQuirks())
