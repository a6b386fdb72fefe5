"""Processes from /proc: what the pipeline, the benchmarks and the tests read."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from worker import procfs
from worker.procfs import tree_cpu_seconds

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


def test_a_child_not_yet_waited_for_is_a_zombie_and_no_longer_running() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while (stat := procfs.read_stat(child.pid)) and stat.running:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert stat is not None and stat.state == procfs.ZOMBIE  # ended, not reaped
        assert stat.parent == os.getpid()
        assert not procfs.is_running(child.pid)
        assert child.pid not in procfs.children(os.getpid())
    finally:
        child.wait()
    assert procfs.read_stat(child.pid) is None  # reaped: gone
    assert not procfs.is_running(child.pid)


def test_a_running_child_is_seen_with_its_group_and_arguments() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "marker-argument"],
        start_new_session=True,
    ) as child:
        try:
            assert procfs.is_running(child.pid)
            assert child.pid in procfs.children(os.getpid())
            assert procfs.group_members(child.pid) == [child.pid]  # its own session
            assert procfs.command_line(child.pid)[-1] == "marker-argument"
        finally:
            child.kill()


def test_a_command_name_with_parentheses_and_spaces_is_parsed() -> None:
    line = "4242 (a) b (c) R 1 4242 4242 0 -1 4194560 0 0 0 0 250 50 7 3 20 0 1 0 1 2 3"
    stat = procfs.parse_stat(line)
    assert (stat.pid, stat.state, stat.parent, stat.group) == (4242, "R", 1, 4242)
    ticks = os.sysconf("SC_CLK_TCK")
    assert stat.cpu_seconds == 300 / ticks and stat.reaped_cpu_seconds == 10 / ticks


def test_peak_rss_grows_with_what_a_process_held() -> None:
    before = procfs.peak_rss()
    assert before is not None and before > 0
    held = bytearray(before + 16 * 1024 * 1024)  # zero-filled: every page touched
    assert (procfs.peak_rss() or 0) >= len(held)
    assert procfs.open_descriptors()  # stdin, stdout, stderr at least
