"""No process outlives the test session that started it.

Each test process (pytest, and each xdist worker) becomes a child subreaper: a process a test
started whose parent died (a killed experiment's plotting helper, a node's daemon) is handed to
it rather than to PID 1, so it stays in view. At the end of the session every such process
still running is listed, killed, and reported as a failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time

import psutil

PR_SET_CHILD_SUBREAPER = 36
GRACE_SECONDS = 30.0  # what is ending anyway (a node powering off, a server closing) may finish


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _ends_with_us(process: psutil.Process) -> bool:
    """A child of this process that exits when it does: a resource tracker (multiprocessing's,
    or joblib's loky's) or the Node.js runtime of jsii (cdktf's), stopped at this process's exit."""
    try:
        if process.ppid() == os.getpid() and "resource_tracker" in " ".join(process.cmdline()):
            return True
        parent = process.parent()
        commands = " ".join(process.cmdline()) + (" ".join(parent.cmdline()) if parent else "")
        return "jsii-runtime" in commands
    except psutil.Error:
        return True


def leftover_processes() -> list[psutil.Process]:
    deadline = time.monotonic() + GRACE_SECONDS
    while True:
        for child in psutil.Process().children():  # reap what has exited (we are its parent now)
            with contextlib.suppress(psutil.Error, ChildProcessError):
                if child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)
        alive = [p for p in psutil.Process().children(recursive=True) if p.is_running() and not _ends_with_us(p)]
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid}: {' '.join(process.cmdline())[:200]}"
    except psutil.Error:
        return f"{process.pid}: (gone)"


def kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=10)
