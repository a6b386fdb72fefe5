"""Decode DICOM files the way the OHIF web viewer does, for tests.

``tests/viewer/decode.mjs`` runs the pinned ``@cornerstonejs/dicom-image-loader`` (the
loader OHIF / Cornerstone3D display images with) in Node: its own wadouri load path,
codecs (CharLS, OpenJPEG, OpenJPH, libjxl wasm, RLE, native), post-processing and
colour conversion, with only the browser APIs it touches stood in for. This module
is the Python side: the session fixture ``viewer`` (import it into a conftest) and
``Viewer.decode``, which returns each frame's pixels as the viewer holds them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

VIEWER_DIR = Path(__file__).resolve().parent / "viewer"

# JavaScript typed array -> numpy dtype (typed arrays are little-endian here)
ARRAY_TYPES: dict[str, np.dtype[Any]] = {
    "Uint8Array": np.dtype("u1"),
    "Uint8ClampedArray": np.dtype("u1"),
    "Int8Array": np.dtype("i1"),
    "Uint16Array": np.dtype("<u2"),
    "Int16Array": np.dtype("<i2"),
    "Uint32Array": np.dtype("<u4"),
    "Int32Array": np.dtype("<i4"),
    "Float32Array": np.dtype("<f4"),
    "Float64Array": np.dtype("<f8"),
}

MetadataMode = Literal["legacy", "naturalized"]


@dataclass(frozen=True)
class ViewerRequest:
    """One frame to decode: ``frame`` is 0-based; ``decode_level`` asks HTJ2K for a
    reduced resolution (each level halves rows and columns, rounding up)."""

    path: Path
    frame: int = 0
    decode_level: int | None = None
    pre_scale: bool | None = None  # None: the request's default (the viewer: True)
    use_rgba: bool | None = None  # None: the request's default (the viewer: False)


@dataclass
class ViewerFrame:
    """What the viewer holds for one frame after decoding and colour conversion.

    ``pixels`` is (rows, columns) for one sample a pixel, else (rows, columns,
    samples); None when decoding failed, with ``error`` the loader's message.
    ``array_type`` is the JavaScript typed array the loader returned,
    ``photometric_interpretation``, ``min_value`` and ``max_value`` are what it
    reports (min/max after any rescale). ``info`` is the full JSON line.
    """

    path: Path
    frame: int
    decode_level: int | None
    error: str | None = None
    pixels: np.ndarray | None = None
    rows: int = 0
    columns: int = 0
    array_type: str = ""
    samples: int = 0
    photometric_interpretation: str = ""
    min_value: float | None = None
    max_value: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the viewer decoded the frame."""
        return self.error is None


class Viewer:
    """Runs ``decode.mjs`` with Node on batches of frames."""

    def __init__(self, node: str, directory: Path = VIEWER_DIR, timeout: float = 600) -> None:
        self.node = node
        self.directory = directory
        self.timeout = timeout

    @property
    def loader_version(self) -> str:
        """The installed @cornerstonejs/dicom-image-loader version."""
        package = self.directory / "node_modules" / "@cornerstonejs" / "dicom-image-loader"
        data: dict[str, Any] = json.loads((package / "package.json").read_text())
        return str(data["version"])

    def decode(
        self,
        items: Iterable[ViewerRequest | Mapping[str, Any] | str | os.PathLike[str]],
        *,
        metadata: MetadataMode = "legacy",
        pre_scale: bool = True,
        use_rgba: bool = False,
    ) -> list[ViewerFrame]:
        """Decode each item as the viewer does; one ViewerFrame per item, in order.

        An item is a ViewerRequest, a path (frame 0), or a mapping with ``path`` and
        optional ``frame``, ``decode_level``, ``pre_scale``, ``use_rgba``. A frame the
        loader fails on comes back with ``error`` set; the batch goes on.
        ``metadata="legacy"`` loads through dicom-parser (what viewers of local Part 10
        files configure), ``"naturalized"`` through the loader's v5 default provider.
        ``pre_scale=False`` keeps the stored values instead of applying Rescale
        Slope/Intercept; ``use_rgba=True`` is the CPU rendering path (RGBA output).
        """
        requests = [_request(item) for item in items]
        if not requests:
            return []
        with tempfile.TemporaryDirectory(prefix="viewer-") as scratch:
            payload = {
                "metadata": metadata,
                "preScale": pre_scale,
                "useRGBA": use_rgba,
                "items": [
                    _payload(request, Path(scratch) / f"{i}.bin")
                    for i, request in enumerate(requests)
                ],
            }
            proc = subprocess.run(
                [self.node, str(self.directory / "decode.mjs")],
                input=json.dumps(payload),
                capture_output=True,
                text=True,
                cwd=self.directory,
                timeout=self.timeout,
                check=False,
            )
            lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or len(lines) != len(requests):
                raise RuntimeError(
                    f"decode.mjs exited {proc.returncode} after {len(lines)} of "
                    f"{len(requests)} items:\n{proc.stderr[-4000:]}"
                )
            return [_frame(request, line) for request, line in zip(requests, lines, strict=True)]


def _request(item: ViewerRequest | Mapping[str, Any] | str | os.PathLike[str]) -> ViewerRequest:
    if isinstance(item, ViewerRequest):
        return item
    if isinstance(item, Mapping):
        return ViewerRequest(
            path=Path(item["path"]),
            frame=int(item.get("frame", 0)),
            decode_level=item.get("decode_level", item.get("decodeLevel")),
            pre_scale=item.get("pre_scale"),
            use_rgba=item.get("use_rgba"),
        )
    return ViewerRequest(path=Path(item))


def _payload(request: ViewerRequest, out: Path) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "path": str(Path(request.path).resolve()),
        "frame": request.frame,
        "out": str(out),
    }
    if request.decode_level is not None:
        payload["decodeLevel"] = request.decode_level
    if request.pre_scale is not None:
        payload["preScale"] = request.pre_scale
    if request.use_rgba is not None:
        payload["useRGBA"] = request.use_rgba
    return payload


def _frame(request: ViewerRequest, line: dict[str, Any]) -> ViewerFrame:
    frame = ViewerFrame(
        path=Path(request.path), frame=request.frame, decode_level=request.decode_level, info=line
    )
    if not line.get("ok"):
        frame.error = str(line.get("error", "unknown error"))
        return frame
    frame.rows, frame.columns = int(line["rows"]), int(line["columns"])
    frame.array_type = str(line["arrayType"])
    frame.samples = int(line["samples"])
    frame.photometric_interpretation = str(line.get("photometricInterpretation", ""))
    frame.min_value, frame.max_value = line.get("minPixelValue"), line.get("maxPixelValue")
    dtype = ARRAY_TYPES.get(frame.array_type)
    if dtype is None:
        frame.error = f"unknown typed array {frame.array_type}"
        return frame
    data = np.fromfile(line["out"], dtype=dtype)
    shape: Sequence[int] = (frame.rows, frame.columns)
    if frame.samples != 1:
        shape = (frame.rows, frame.columns, frame.samples)
    frame.pixels = data.reshape(shape)
    return frame


def ensure_installed(directory: Path = VIEWER_DIR) -> str:
    """Return the node executable; run ``npm ci`` first if the loader is not installed.

    Skips the calling test when Node.js is missing; a failing install is an error.
    """
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: apt-get install nodejs npm")
    if not (directory / "node_modules" / "@cornerstonejs" / "dicom-image-loader").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("Node.js is installed but npm is not: apt-get install npm")
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"npm ci in {directory} failed:\n{proc.stdout}\n{proc.stderr}")
    return node


@pytest.fixture(scope="session")
def viewer() -> Viewer:
    """The OHIF viewer's decoder (cornerstone dicom-image-loader in Node)."""
    return Viewer(ensure_installed())
