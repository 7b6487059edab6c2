"""A plain Dask cluster of processes on a fixed loopback port whose scheduler a test kills and
starts again: what a replaced spot scheduler at the same address looks like to a search."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from spotsearch.saved_fits import SavedFits
from spotsearch.search import fit_on_cluster


class CountedSaves(SavedFits):
    """SavedFits that counts the fits saved, that is, the fits this search ran."""

    def __init__(self, folder=None) -> None:
        super().__init__(folder)
        self.saves: list[str] = []

    def save(self, key: str, value) -> None:
        self.saves.append(key)
        super().save(key, value)


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

    def fit_losing_the_scheduler(self, search, X, y, saved: CountedSaves, *, after: int = 10, **options) -> int:
        """Fit `search` here, the scheduler killed once `after` fits are saved and started again
        at the same address (what a replaced spot scheduler does); the cluster is clean after.
        Returns the fits saved when it was lost."""
        from distributed import Client

        from .search_cases import assert_clean

        at_loss = []

        def lose_the_scheduler_mid_search() -> None:
            # On fits saved, not fits counted: the scheduler counts a fit before its result reaches
            # the laptop, and on a busy machine that lag is several fits.
            while len(saved) < after:
                time.sleep(0.02)
            self.kill_scheduler()
            at_loss.append(len(saved))
            self.start()  # what the scheduler's replacement and the workers' restart do

        self.start()
        try:
            with Client(self.address, timeout="60s") as client:
                client.wait_for_workers(2, timeout=120)
                threading.Thread(target=lose_the_scheduler_mid_search, daemon=True).start()
                fit_on_cluster(search, X, y, client=client, saved_fits=saved, wait_for_workers=180, **options)
                assert_clean(client)
        finally:
            self.stop()
        return at_loss[0]
