"""Helpers shared by the tests: run the engine, decode results independently."""

from __future__ import annotations

import io
import tempfile
import warnings
from typing import Any

import numpy as np
import typer
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import RLELossless

from dcmpress.options import compression_flags
from dcmpress.stack.samples import to_bytes
from worker.codec.engine import Result, process
from worker.codec.options import CompressionOptions
from worker.codec.plugins.htj2k import HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL
from worker.codec.plugins.jpegxl import JPEG_XL_LOSSLESS


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


# Image Pixel cases every lossless target takes: make_image keyword arguments
LOSSLESS_CASES: dict[str, dict[str, Any]] = {
    "8-bit": {"bits_allocated": 8},
    "8 stored in 16": {"bits_stored": 8},
    "12-bit": {"bits_stored": 12},
    "16-bit": {"bits_stored": 16},
    "signed 12-bit": {"bits_stored": 12, "signed": True},
    "signed 16-bit": {"bits_stored": 16, "signed": True},
    "signed 8-bit": {"bits_allocated": 8, "signed": True},
    "1 bit stored": {"bits_allocated": 8, "bits_stored": 1},
    "MONOCHROME1": {"bits_stored": 10, "photometric": "MONOCHROME1"},
    "RGB": {"bits_allocated": 8, "samples": 3},
    "RGB planar": {"bits_allocated": 8, "samples": 3, "planar": 1},
    "RGB 16-bit": {"bits_stored": 16, "samples": 3},
    "multi-frame": {"bits_stored": 12, "frames": 4},
    "multi-frame RGB": {"bits_allocated": 8, "samples": 3, "frames": 3},
    "32 allocated, 16 stored": {"bits_allocated": 32, "bits_stored": 16},
    "1x1": {"rows": 1, "cols": 1, "bits_stored": 12},
    "odd 33x35": {"rows": 33, "cols": 35, "bits_stored": 12},
    "3x7 8-bit": {"rows": 3, "cols": 7, "bits_allocated": 8},
}


def from_file(data: bytes, options: CompressionOptions) -> tuple[Result, bytes]:
    """The engine on ``data`` read from a temporary file, the frame path taken at any
    size: the result and its output, a temporary file that is read and removed."""
    with tempfile.TemporaryFile() as file:
        file.write(data)
        file.seek(0)
        result = process(file, options, frames_above=1)
    assert result.output is not None and not isinstance(result.output, bytes), result.message
    result.output.seek(0)
    written = result.output.read()
    result.close()
    return result, written


def options_probe() -> tuple[typer.Typer, list[CompressionOptions]]:
    """A typer app whose `run` command takes the compression flags and keeps the
    options they made."""
    seen: list[CompressionOptions] = []
    probe = typer.Typer()

    @probe.command()
    @compression_flags
    def run(name: str, *, options: CompressionOptions) -> None:
        seen.append(options)

    @probe.command()
    def other() -> None:  # a second command keeps typer's subcommand form
        pass

    return probe, seen
