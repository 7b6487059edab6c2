"""A plain Dask cluster of processes on a fixed loopback port whose scheduler a test kills and
starts again: what a replaced spot scheduler at the same address looks like to a search."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RestartableCluster:
    """A scheduler process on a fixed loopback port and a worker process (two workers) for it."""

    def __init__(self, tmp_path: Path) -> None:
        self.port, self.log = free_port(), (tmp_path / "cluster.log").open("ab")
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler = self.workers = None

    def _start(self, *command: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", *command], stdout=self.log, stderr=self.log)

    def start(self) -> None:
        self.scheduler = self._start(
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dashboard-address",
            ":0",
        )
        self.workers = self._start("distributed.cli.dask_worker", self.address, "--nworkers", "2", "--nthreads", "1")

    def kill_scheduler(self) -> float:
        """As a node that dies takes its scheduler: no goodbye. Its workers leave on their own.
        Returns when the scheduler was gone (time.monotonic)."""
        self.scheduler.send_signal(signal.SIGKILL)
        self.scheduler.wait()
        gone = time.monotonic()
        self.workers.wait(timeout=120)
        return gone

    def stop(self) -> None:
        for process in (self.workers, self.scheduler):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
        self.log.close()
