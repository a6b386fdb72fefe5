"""CPU seconds of a process tree: what the benchmarks and the estimate read."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from dcmpress.stack.cpu import tree_cpu_seconds

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"


def test_a_child_that_ended_and_was_waited_for_counts_only_when_reaped_is_asked() -> None:
    """A Celery pool process replaced after worker_max_tasks_per_child ends and is
    waited for by the main process: its CPU is in the main process's cutime/cstime,
    no longer in a live process of the tree."""
    # a parent that runs a CPU-burning child to its end, then waits to be read
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time\nsubprocess.run([sys.executable, '-c', {BURN!r}])\n"
            "print('done', flush=True)\ntime.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as parent:
        try:
            assert parent.stdout is not None
            assert parent.stdout.readline().strip() == "done"
            live_only = tree_cpu_seconds(parent.pid)
            with_reaped = tree_cpu_seconds(parent.pid, reaped=True)
            assert with_reaped - live_only >= 0.25  # the child's 0.3 s of CPU
            assert tree_cpu_seconds(parent.pid, descendants=False) <= live_only
        finally:
            parent.kill()


def test_no_process_counts_nothing_and_this_one_at_least_its_own_cpu() -> None:
    assert tree_cpu_seconds(None) == 0.0
    started = time.process_time()
    assert tree_cpu_seconds(os.getpid()) >= started - 0.05
