"""CPU seconds of a process tree, read from ``/proc`` (Linux).

The benchmarks and the tests measure what a party (a Celery worker and its pool, the S3
server...) spent between two moments: read before and after, and subtract.
"""

from __future__ import annotations

import os
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def processes(reaped: bool = False) -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + system CPU seconds) of every running process; with
    ``reaped``, each also counts the children it has waited for (cutime, cstime)."""
    found: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        if reaped:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
        found[int(entry.name)] = (int(fields[1]), ticks / _CLOCK_TICKS)
    return found


def tree_cpu_seconds(pid: int | None, descendants: bool = True, reaped: bool = False) -> float:
    """User + system CPU seconds of ``pid`` and (unless not asked) its live descendants;
    with ``reaped``, also of the descendants that ended and were waited for (a Celery
    pool child replaced after ``worker_max_tasks_per_child`` tasks, for one)."""
    if pid is None:
        return 0.0
    table = processes(reaped)
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += table.get(current, (0, 0.0))[1]
        if descendants:
            todo.extend(children.get(current, []))
    return total
