"""Processes as Linux's ``/proc`` shows them: state, parent, group, CPU seconds, memory.

The one reader of ``/proc`` (proc(5)). A worker asks whether a claim's holder still
runs; the benchmarks and the tests measure what a party (a Celery worker and its pool,
the S3 server...) spent between two moments: read before and after, and subtract.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ZOMBIE = "Z"  # ended, not yet waited for by its parent: it runs no more


@dataclass(frozen=True)
class ProcessStat:
    """The fields of ``/proc/PID/stat`` dcmpress reads."""

    pid: int
    state: str  # R running, S sleeping, D disk wait, Z zombie, T stopped...
    parent: int
    group: int  # process group id
    cpu_seconds: float  # user + system (utime, stime)
    reaped_cpu_seconds: float  # of the children it has waited for (cutime, cstime)

    @property
    def running(self) -> bool:
        """True unless a zombie."""
        return self.state != ZOMBIE


def parse_stat(text: str) -> ProcessStat:
    """One ``/proc/PID/stat`` line; the command name in parentheses may hold anything."""
    head, _, tail = text.rpartition(")")
    fields = tail.split()  # fields[0] is proc(5)'s field 3, the state
    return ProcessStat(
        pid=int(head.split(" ", 1)[0]),
        state=fields[0],
        parent=int(fields[1]),
        group=int(fields[2]),
        cpu_seconds=(int(fields[11]) + int(fields[12])) / _CLOCK_TICKS,
        reaped_cpu_seconds=(int(fields[13]) + int(fields[14])) / _CLOCK_TICKS,
    )


def read_stat(pid: int | str = "self") -> ProcessStat | None:
    """The process's ``stat``, or None if there is no such process (it ended); other
    errors (``/proc`` not readable) are raised."""
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (FileNotFoundError, ProcessLookupError):  # gone before or while it was read
        return None


def all_processes() -> list[ProcessStat]:
    """Every process there is now, zombies included; those that end meanwhile are not."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = read_stat(entry.name)
        except OSError:  # not ours to read
            continue
        if stat is not None:
            found.append(stat)
    return found


def is_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an unreaped corpse is not running)."""
    stat = read_stat(pid)
    return stat is not None and stat.running


def children(pid: int) -> list[int]:
    """The running children of ``pid`` (a Celery worker's prefork pool)."""
    return [p.pid for p in all_processes() if p.parent == pid and p.running]


def group_members(group: int) -> list[int]:
    """The running processes of process group ``group``."""
    return [p.pid for p in all_processes() if p.group == group and p.running]


def tree_cpu_seconds(pid: int | None, descendants: bool = True, reaped: bool = False) -> float:
    """User + system CPU seconds of ``pid`` and (unless not asked) its live descendants;
    with ``reaped``, also of the descendants that ended and were waited for (a Celery
    pool child replaced after ``worker_max_tasks_per_child`` tasks, for one)."""
    if pid is None:
        return 0.0
    table = {p.pid: p for p in all_processes()}
    kids: dict[int, list[int]] = {}
    for stat in table.values():
        kids.setdefault(stat.parent, []).append(stat.pid)
    total, todo = 0.0, [pid]
    while todo:
        current = table.get(todo.pop())
        if current is None:
            continue
        total += current.cpu_seconds + (current.reaped_cpu_seconds if reaped else 0.0)
        if descendants:
            todo.extend(kids.get(current.pid, []))
    return total


def peak_rss(pid: int | str = "self") -> int | None:
    """The process's peak resident set in bytes (``VmHWM``), or None if not shown.

    Unlike ``ru_maxrss`` it starts afresh at ``exec``: a child of a large parent does
    not report the parent's size."""
    try:
        lines = (PROC / str(pid) / "status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # in kB
    return None


def open_descriptors(pid: int | str = "self") -> set[str]:
    """The process's open file descriptors, or none where ``/proc`` does not show them."""
    directory = PROC / str(pid) / "fd"
    return set(os.listdir(directory)) if directory.exists() else set()


def command_line(pid: int) -> list[str]:
    """The process's arguments (none for a zombie, a kernel thread or a process gone)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def cpu_model() -> str | None:
    """The CPU's model name, as ``/proc/cpuinfo`` gives it."""
    try:
        text = (PROC / "cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "model name":
            return value.strip()
    return None
