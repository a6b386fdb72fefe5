"""Child processes run one after the other from a small launcher: the wall time and
the peak RSS of each alone; and where the programs they run are found."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ChildRun:
    """One finished child process."""

    seconds: float  # wall seconds from fork to reaped
    peak_rss: int  # bytes: ru_maxrss from wait4 on this child alone
    returncode: int


@dataclass(frozen=True)
class ChildCommand:
    """A command line and the files its stdout and stderr go to."""

    argv: tuple[str, ...]  # argv[0] an absolute path
    stdout: Path
    stderr: Path


# A small launcher: the kernel folds the memory image a child was forked from into
# that child's ru_maxrss (exec records the old image's high-water mark), so children
# forked from this benchmark (hundreds of MiB of test data) would all report at least
# its size. Forked from this ~6 MiB interpreter instead, each child's wait4 ru_maxrss
# is max(launcher size, the child's own peak) - the launcher's size is the floor.
_LAUNCHER = r"""
import json, os, sys, time
results = []
for argv, stdout, stderr in json.load(sys.stdin):
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, path in ((1, stdout), (2, stderr)):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    results.append([seconds, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)])
json.dump(results, sys.stdout)
"""


def run_children(commands: Sequence[ChildCommand], env: dict[str, str]) -> list[ChildRun]:
    """Run ``commands`` one after the other from a small launcher; time and RSS of each.

    ``os.wait4`` on each child gives that child's usage alone (``RUSAGE_CHILDREN`` would
    be a maximum over every child ever reaped). On Linux its ru_maxrss is the largest
    RSS of the child or of a descendant it reaped: ``dcmpress compress -j 1``'s pool
    worker counts, the sum of the two processes does not.
    """
    jobs = [[list(c.argv), str(c.stdout), str(c.stderr)] for c in commands]
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _LAUNCHER],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return [ChildRun(*row) for row in json.loads(proc.stdout)]


def launcher_floor() -> int:
    """Bytes of ru_maxrss a child reports even if it uses less: the launcher's own size."""
    true = shutil.which("true") or "/bin/true"
    log = Path(os.devnull)
    return run_children([ChildCommand((true,), log, log)], child_env())[0].peak_rss


def child_env() -> dict[str, str]:
    """This environment without DCMPRESS_* settings, so every run uses the same options,
    and without PYTHONDONTWRITEBYTECODE: a child's modules are compiled once (by the
    warm-up) and then loaded, as an installed package's are, not compiled at every
    start (50 ms of an editable checkout's start-up)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DCMPRESS_") and k != "PYTHONDONTWRITEBYTECODE"
    }


def find_tool(program: str) -> str | None:
    """The peer executable on PATH, preferring one outside this virtualenv.

    python-gdcm installs a ``gdcmconv`` Python wrapper into the venv; the system's
    (Debian) binary is measured instead so Python start-up is not charged to GDCM.
    """
    venv = Path(sys.prefix).resolve()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which(program, path=entry)
        if found and not Path(found).resolve().is_relative_to(venv):
            return found
    return shutil.which(program)


def fresh_directory(parent: Path, name: str) -> Path:
    """An empty directory ``parent/name`` (removed first if it exists)."""
    path = parent / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
