"""A real PACS for the tests: Debian's Orthanc with its GDCM plugin, on loopback only.

``orthanc`` is a session-scoped fixture (import it into a conftest) that starts its own
``Orthanc`` process on a random free HTTP port of 127.0.0.1, with a configuration, a
database and a storage area of its own in a temporary directory, and stops it after the
session. Its DICOM server, peers, WebDAV and every other network feature are off; the
HTTP server answers loopback clients only (Orthanc 1.10 has no bind-address option, so
``RemoteAccessAllowed: false`` is what keeps it local).

The fixture skips only when the Orthanc binary is missing; a missing GDCM plugin or an
Orthanc that does not come up is an error, not a skip.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ORTHANC_MISSING = "Orthanc is not installed: apt-get install orthanc orthanc-gdcm"
GDCM_MISSING = "Orthanc's GDCM plugin is not installed: apt-get install orthanc-gdcm"
# where Debian's orthanc-gdcm puts the plugin (the first is a symlink to the second)
GDCM_PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancGdcm.so",
    "/usr/lib/orthanc/libOrthancGdcm.so*",
    "/usr/lib/*/orthanc/libOrthancGdcm.so*",
)
STARTUP_SECONDS = 30.0
REQUEST_SECONDS = 60.0


class OrthancError(RuntimeError):
    """Orthanc refused a request; the message carries Orthanc's own explanation."""


def orthanc_binary() -> str | None:
    """The path of the ``Orthanc`` executable, or None when it is not installed."""
    found = shutil.which("Orthanc")  # /usr/sbin may be missing from a user's PATH
    return found or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)


def gdcm_plugin() -> Path | None:
    """The shared library of Orthanc's GDCM plugin, or None when it is not installed."""
    for pattern in GDCM_PLUGIN_GLOBS:
        for path in sorted(Path("/").glob(pattern.lstrip("/"))):
            if path.is_file():
                return path
    return None


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def configuration(directory: Path, http_port: int, plugin: Path | None) -> dict[str, Any]:
    """An Orthanc configuration that keeps everything in ``directory`` and off the net.

    With ``plugin`` (the GDCM plugin's library) GDCM decodes every transfer syntax it
    knows; Orthanc tries plugins before its built-in DCMTK decoder
    (``BuiltinDecoderTranscoderOrder: "After"``), and falls back to DCMTK for the rest.
    """
    storage = directory / "storage"
    config: dict[str, Any] = {
        "Name": "dcmpress-tests",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "StorageCompression": False,
        "MaximumStorageSize": 0,
        "MaximumPatientCount": 0,
        # a compressed output keeps its source's UIDs: storing it must replace the source
        "OverwriteInstances": True,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # answers 127.0.0.1 only (1.10 cannot bind to it)
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "HttpDescribeErrors": True,
        "HttpCompressionEnabled": False,
        "HttpThreadsCount": 8,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),  # unused while the DICOM server is off
        "DicomModalities": {},
        "OrthancPeers": {},
        "WebDavEnabled": False,
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "LuaScripts": [],
        "SaveJobs": False,
        "ConcurrentJobs": 1,
        "StableAge": 3600,  # no "stable" events (and no Lua) while the tests run
        "BuiltinDecoderTranscoderOrder": "After",
        "Plugins": [str(plugin)] if plugin else [],
    }
    if plugin:
        # the GDCM plugin's own options (Debian's /etc/orthanc/gdcm.json): enabled for
        # every syntax it knows (no "RestrictTransferSyntaxes"), one thread at a time
        config["Gdcm"] = {"Enable": True, "Throttling": 1}
    return config


class Orthanc:
    """A client of a running Orthanc's REST API at ``url`` (loopback)."""

    def __init__(self, url: str, gdcm: bool) -> None:
        self.url = url.rstrip("/")
        self.gdcm = gdcm
        # no proxy: the environment's HTTP(S)_PROXY must never see a loopback request
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """Send one request and return the response body; raise OrthancError on refusal."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/dicom")
        try:
            with self._opener.open(req, timeout=REQUEST_SECONDS) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as error:
            raise OrthancError(
                f"{method} {path}: HTTP {error.code}: {_explain(error.read())}"
            ) from None

    def get_json(self, path: str) -> Any:
        """GET ``path`` and parse its JSON answer."""
        return json.loads(self.request("GET", path))

    def store(self, data: bytes) -> str:
        """Store a DICOM file (POST /instances) and return its Orthanc instance ID."""
        answer = json.loads(self.request("POST", "/instances", data))
        if isinstance(answer, list):  # a ZIP of several files: not what the tests send
            raise OrthancError(f"POST /instances: expected one instance, got {answer}")
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise OrthancError(f"POST /instances: {answer}")
        instance_id: str = answer["ID"]
        return instance_id

    def transfer_syntax(self, instance_id: str) -> str:
        """The transfer syntax UID the instance is stored in."""
        return self.request("GET", f"/instances/{instance_id}/metadata/TransferSyntax").decode()

    def frame_count(self, instance_id: str) -> int:
        """The number of frames Orthanc sees in the instance."""
        return len(self.get_json(f"/instances/{instance_id}/frames"))

    def raw_frames(self, instance_id: str) -> list[bytes]:
        """Every frame as stored, undecoded (``/frames/{n}/raw``): one JPEG-LS, JPEG 2000,
        RLE... codestream per frame for an encapsulated syntax, the frame's native bytes
        otherwise."""
        count = self.frame_count(instance_id)
        return [
            self.request("GET", f"/instances/{instance_id}/frames/{n}/raw") for n in range(count)
        ]

    def decoded_frame(self, instance_id: str, n: int = 0) -> np.ndarray:
        """Frame ``n`` as Orthanc decodes it: stored values, no rescale, no windowing.

        Read from ``/frames/{n}/matlab``, the one route of Orthanc 1.10.1 that gives the
        decoded values exactly for every pixel format it has (signed, colour) and goes
        through the decoder plugins (GDCM) first: ``/numpy`` decodes with the built-in
        DCMTK decoder only, ``/image-int16`` and the like clamp to their type and refuse
        colour. Grayscale comes back as (rows, cols), colour as (rows, cols, 3) in the
        colour space Orthanc decodes to (YBR_FULL_422 becomes RGB); int64 for integers.
        Raises OrthancError when Orthanc cannot decode the frame.
        """
        text = self.request("GET", f"/instances/{instance_id}/frames/{n}/matlab").decode()
        return parse_matlab(text)

    def delete(self, instance_id: str) -> None:
        """Remove the instance from Orthanc."""
        self.request("DELETE", f"/instances/{instance_id}")


def parse_matlab(text: str) -> np.ndarray:
    """Orthanc's MATLAB rendering of a decoded frame as an array.

    Grayscale is ``double([ r0c0 r0c1 ... ; r1c0 ... ])``. Colour is
    ``double(permute(reshape([ ... ], [ 3 rows cols ]), [ 3 2 1 ]))`` whose list runs
    sample by sample, then column, then row: C order of (rows, cols, 3) (checked on a
    non-square image; the sizes are printed rows first). Orthanc prints integers whole.
    """
    colour = re.fullmatch(
        r"\s*double\(permute\(reshape\(\[(.*)\],\s*\[([\d\s]+)\]\),\s*\[[\d\s]+\]\)\)\s*",
        text,
        re.S,
    )
    if colour:
        samples, rows, cols = (int(size) for size in colour.group(2).split())
        return _numbers(colour.group(1).split()).reshape(rows, cols, samples)
    gray = re.fullmatch(r"\s*double\(\[(.*)\]\)\s*", text, re.S)
    if not gray:
        raise OrthancError(f"unexpected MATLAB answer: {text[:80]!r}")
    lines = [line.split() for line in gray.group(1).split(";")]
    lines = [line for line in lines if line]
    if len({len(line) for line in lines}) > 1:
        raise OrthancError("MATLAB answer with rows of different lengths")
    return _numbers([value for line in lines for value in line]).reshape(len(lines), -1)


def _numbers(values: list[str]) -> np.ndarray:
    """The values as int64, or float64 when any is not an integer."""
    floats = np.array(values, dtype=np.float64)
    if np.all(np.isfinite(floats)) and np.all(floats == np.round(floats)):
        return floats.astype(np.int64)
    return floats


def _explain(body: bytes) -> str:
    """Orthanc's error answer (JSON with Message and Details) as one line."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip() or "(no details)"
    if not isinstance(answer, dict):
        return str(answer)
    parts = [str(answer.get(key)) for key in ("Message", "Details") if answer.get(key)]
    return ": ".join(parts) or str(answer)


@contextlib.contextmanager
def start_orthanc(directory: Path, *, gdcm: bool = True) -> Iterator[Orthanc]:
    """Run Orthanc in ``directory`` for the duration of the block, then stop it.

    ``gdcm=False`` starts it with its built-in (DCMTK) decoders only.
    """
    binary = orthanc_binary()
    if binary is None:
        raise FileNotFoundError(ORTHANC_MISSING)
    plugin = gdcm_plugin() if gdcm else None
    if gdcm and plugin is None:
        raise FileNotFoundError(GDCM_MISSING)
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "orthanc.log"
    for _attempt in range(3):  # another process may take the free port before Orthanc
        port = free_port()
        config_path = directory / "orthanc.json"
        config_path.write_text(json.dumps(configuration(directory, port, plugin), indent=2))
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [binary, "--no-jobs", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )
        try:
            client = Orthanc(f"http://127.0.0.1:{port}", gdcm=plugin is not None)
            if _wait_ready(client, process):
                if plugin is not None and "gdcm" not in client.get_json("/plugins"):
                    raise RuntimeError(f"Orthanc did not load {plugin}: {_tail(log_path)}")
                yield client
                return
        finally:
            _stop(process)
    raise RuntimeError(f"Orthanc did not start: {_tail(log_path)}")


def _wait_ready(client: Orthanc, process: subprocess.Popen[bytes]) -> bool:
    """Wait until GET /system answers; False if the process exits first."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            client.get_json("/system")
            return True
        except (OSError, OrthancError):
            time.sleep(0.1)
    raise RuntimeError(f"Orthanc did not answer GET /system within {STARTUP_SECONDS} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the process, and kill it if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _tail(path: Path, lines: int = 30) -> str:
    """The last lines of Orthanc's log."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A running Orthanc with the GDCM plugin on a random loopback port, for the session."""
    if orthanc_binary() is None:
        pytest.skip(ORTHANC_MISSING)
    with start_orthanc(tmp_path_factory.mktemp("orthanc")) as client:
        yield client
