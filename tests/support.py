"""Helpers shared by the tests: run the engine, decode results independently."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import RLELossless

from dcmpress.stack.samples import to_bytes
from worker.codec.engine import Result, process
from worker.codec.plugins.htj2k import HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL
from worker.codec.plugins.jpegxl import JPEG_XL_LOSSLESS
from worker.settings import CompressionOptions


def run(ds_or_bytes: Dataset | bytes, **options: Any) -> Result:
    """Run the engine on a dataset (serialised first) or raw bytes."""
    data = ds_or_bytes if isinstance(ds_or_bytes, bytes) else to_bytes(ds_or_bytes)
    return process(data, CompressionOptions(**options))


def read(data: bytes) -> Dataset:
    """Parse a Part 10 file strictly: preamble, DICM prefix and file meta required."""
    return dcmread(io.BytesIO(data))


def independent_decode(data: bytes, encoder_plugin: str = "") -> np.ndarray:
    """Decode with a different codec library than the one the engine verified with.

    JPEG-LS and JPEG 2000 go through GDCM; RLE through pydicom's pure-Python decoder
    (or pylibjpeg-rle if the result was written by pydicom's encoder); HTJ2K (written by
    OpenJPH) through OpenJPEG; JPEG XL through libjxl, the only decoder there is here.
    """
    ds = read(data)
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax == RLELossless:
        plugin = "pylibjpeg" if encoder_plugin == "pydicom" else "pydicom"
    elif syntax in (HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL):
        plugin = "pylibjpeg"
    elif syntax == JPEG_XL_LOSSLESS:
        plugin = "imagecodecs"
    elif syntax.is_encapsulated:
        plugin = "gdcm"
    else:
        plugin = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr, _ = get_decoder(syntax).as_array(ds, raw=True, decoding_plugin=plugin)
    return arr


def source_pixels(ds: Dataset) -> np.ndarray:
    """The source pixels as stored (no colour conversion)."""
    data = to_bytes(ds)
    parsed = read(data)
    arr, _ = get_decoder(parsed.file_meta.TransferSyntaxUID).as_array(parsed, raw=True)
    return arr


def assert_lossless(result: Result, source: np.ndarray) -> Dataset:
    """The result is done, decodes bit-identical independently; return its dataset."""
    assert result.state == "done", (result.code, result.message)
    assert result.output is not None
    decoded = independent_decode(result.output, result.plugin or "")
    assert decoded.shape == source.shape
    assert decoded.dtype.kind == source.dtype.kind
    np.testing.assert_array_equal(decoded, source)
    return read(result.output)
