"""The machine a run was made on: CPU, cores, memory, load, Python, the versions of
every codec measured and of the peer tools."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from benchmarks.harness.children import find_tool
from benchmarks.harness.sets import LOSSLESS_TARGETS
from worker import procfs
from worker.codec.inflate import physical_memory
from worker.codec.targets import TARGETS, resolve_plugin


def _first_line(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"not runnable: {exc}"
    return next(
        (line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()), ""
    )


def _version_in(text: str) -> str:
    """``3.6.7`` from ``$dcmtk: dcmcjpls v3.6.7 2022-04-22 $`` (the whole text if none)."""
    found = re.search(r"\d+\.\d+(?:\.\d+)?", text)
    return found.group(0) if found else text


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe_machine() -> dict[str, Any]:
    """CPU, cores, RAM, load, Python, and the versions of every codec measured."""
    memory = physical_memory()
    tools = {}
    for program, flag in (
        ("dcmcjpls", "--version"),
        ("dcmcrle", "--version"),
        ("gdcmconv", "--version"),
    ):
        executable = find_tool(program)
        tools[program] = (
            {"path": executable, "version": _version_in(_first_line([executable, flag]))}
            if executable
            else None
        )
    return {
        "cpu": procfs.cpu_model() or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(memory / 1024**3, 1) if memory else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": {
            name: _package_version(name)
            for name in (
                "pydicom",
                "numpy",
                "pyjpegls",
                "pylibjpeg",
                "pylibjpeg-openjpeg",
                "pylibjpeg-rle",
                "imagecodecs",
                "python-gdcm",
            )
        },
        "plugins": {
            target: {
                "encoder": resolve_plugin(TARGETS[target]).name,
                "verification_decoder": TARGETS[target].decoder() or "pydicom's choice",
            }
            for target in LOSSLESS_TARGETS
        },
        "tools": tools,
    }
