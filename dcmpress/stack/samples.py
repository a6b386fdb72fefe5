"""Synthetic DICOM images: no patient data, but pixels that compress like real ones.

Used by ``dcmpress demo``, the tests and the benchmarks. The pixels are a smooth
anatomy-like pattern plus a little noise, so lossless codecs reach realistic ratios
(random noise would not compress at all).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmwrite, examples
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)


def pattern(rows: int, cols: int, frames: int, samples: int, seed: int = 0) -> np.ndarray:
    """A float array in [0, 1) of shape (frames, rows, cols, samples)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    cy, cx = rows / 2, cols / 2
    radius = np.hypot((y - cy) / max(rows, 1), (x - cx) / max(cols, 1))
    out = np.empty((frames, rows, cols, samples))
    for f in range(frames):
        for s in range(samples):
            body = (radius < 0.4 - 0.01 * f) * (0.5 + 0.3 * np.sin(x / 9.0 + s + f))
            ring = np.exp(-((radius - 0.2) ** 2) / 0.002) * 0.4
            noise = rng.normal(0.0, 0.01, (rows, cols))
            out[f, :, :, s] = np.clip(body + ring + noise, 0.0, 0.999)
    return out


def make_image(
    rows: int = 64,
    cols: int = 64,
    *,
    frames: int = 1,
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    samples: int = 1,
    photometric: str | None = None,
    planar: int = 0,
    syntax: UID = ExplicitVRLittleEndian,
    seed: int = 0,
    sop_class: UID | None = None,
) -> Dataset:
    """Return a complete single- or multi-frame image dataset with native pixel data."""
    bits_stored = bits_stored or bits_allocated
    photometric = photometric or ("RGB" if samples == 3 else "MONOCHROME2")
    values = pattern(rows, cols, frames, samples, seed)
    if signed:
        low, high = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1)
    else:
        low, high = 0, 2**bits_stored
    pixels = (low + values * (high - low)).astype(np.int64)
    dtype = np.dtype(f"{'i' if signed else 'u'}{max(bits_allocated, 8) // 8}")
    arr = pixels.astype(dtype)
    if planar == 1:
        arr = arr.transpose(0, 3, 1, 2)  # frame, sample, row, column
    default_class = CTImageStorage if samples == 1 else SecondaryCaptureImageStorage
    ds = _base_dataset(sop_class or default_class)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = planar
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if samples == 1:
        ds.RescaleIntercept, ds.RescaleSlope = (0 if signed else -1024), 1
    little = syntax != ExplicitVRBigEndian
    data = arr.astype(arr.dtype.newbyteorder("<" if little else ">")).tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)
    ds["PixelData"].VR = "OW" if bits_allocated > 8 else "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _base_dataset(sop_class: UID) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = "DCMPRESS-0001"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT" if sop_class == CTImageStorage else "OT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """Serialise ``ds`` as a Part 10 file in its own transfer syntax."""
    buffer = io.BytesIO()
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian):
        dcmwrite(
            buffer,
            ds,
            implicit_vr=syntax == ImplicitVRLittleEndian,
            little_endian=syntax != ExplicitVRBigEndian,
            enforce_file_format=True,
        )
    else:
        dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def without_file_meta(ds: Dataset) -> bytes:
    """``ds`` as a raw data set: no preamble, no DICM, no file meta (old modalities)."""
    raw = copy.deepcopy(ds)
    del raw.file_meta
    buffer = io.BytesIO()
    dcmwrite(buffer, raw, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


def demo_files() -> Iterator[tuple[str, bytes]]:
    """Sample files: pydicom's bundled examples plus synthesized ones, a few odd."""
    for name in ("ct", "mr", "rgb_color", "palette_color", "jpeg2k", "ybr_color", "rt_plan"):
        yield f"examples/{name}.dcm", to_bytes(getattr(examples, name))
    shapes: list[tuple[str, dict[str, Any]]] = [
        ("ct-16bit", {"rows": 256, "cols": 256, "bits_stored": 12, "signed": True}),
        ("cr-16bit", {"rows": 384, "cols": 320, "bits_stored": 14}),
        ("us-rgb", {"rows": 240, "cols": 320, "bits_allocated": 8, "samples": 3}),
        ("mr-multiframe", {"rows": 128, "cols": 128, "frames": 8, "bits_stored": 12}),
        (
            "big-endian",
            {"rows": 128, "cols": 128, "bits_stored": 12, "syntax": ExplicitVRBigEndian},
        ),
        ("rgb-planar1", {"rows": 96, "cols": 128, "bits_allocated": 8, "samples": 3, "planar": 1}),
    ]
    for index, (name, kwargs) in enumerate(shapes):
        yield f"synthetic/{name}.dcm", to_bytes(make_image(seed=index, **kwargs))
    yield "synthetic/no-file-meta.dcm", without_file_meta(make_image(96, 96, bits_stored=12))


def write_demo_files(directory: Path) -> int:
    """Write :func:`demo_files` under ``directory``; return how many."""
    count = 0
    for name, data in demo_files():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        count += 1
    return count
