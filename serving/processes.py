"""Processes by pid: alive, resident memory, and a stop that waits and kills only what it was given."""
from __future__ import annotations

import os
import signal
import time

import psutil


def pid_alive(pid: int) -> bool:
    """Running and not a zombie (a process can exit between two questions: that is an answer, not an error)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def resident_memory(pid: int | None) -> int | None:
    """A process's RSS in bytes, or None if it is gone (TorchServe's own memoryUsage of a worker comes from its
    metrics collector, which reports 0 until its first round; the server is local, so we measure it here)."""
    try:
        return psutil.Process(pid).memory_info().rss if pid else None
    except (psutil.Error, ValueError):
        return None


def process_tree(pid: int) -> list[int]:
    """pid and its descendants now ([] if it is gone)."""
    try:
        return [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def wait_for_exit(pids: list[int], timeout: float) -> list[int]:
    """Until none of `pids` runs (or `timeout` seconds pass): the ones still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        time.sleep(0.1)
    return [pid for pid in pids if pid_alive(pid)]


def kill_all(pids: list[int]) -> list[int]:
    """SIGKILL each of `pids` still running (only processes the caller started); the ones it had to kill."""
    killed = []
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    return killed
