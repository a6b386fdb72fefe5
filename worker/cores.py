"""How many CPUs this process may really use: its affinity and its cgroup's CPU quota.

``os.cpu_count()`` is the host's count: in a container limited to 2 CPUs on a 64-core
node it says 64, and a worker that starts one process per "core" runs 64 processes (and
their memory) on 2 CPUs' worth of time. Linux gives the limit in two places: the
affinity mask (``taskset``, cpusets) and the CFS quota of the cgroup (``cpu.max`` in
cgroup v2, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1), which is what
Kubernetes CPU limits and ``docker run --cpus`` set.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def usable_cores(cgroup: Path = CGROUP) -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup CPU quota
    (rounded up: a quota of 1.5 CPUs keeps 2 processes busy)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_quota(cgroup)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 1e-9)))
    return max(1, cores)


def cgroup_quota(cgroup: Path = CGROUP) -> float | None:
    """The cgroup's CPU quota in CPUs (``2.0`` for 2 CPUs), or None if unlimited or
    unknown."""
    try:
        text = (cgroup / "cpu.max").read_text().split()  # v2: "200000 100000" or "max ..."
        if len(text) == 2 and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:  # v1
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
