"""The emulated laptop's side: experiment scripts run against the emulated stack, a client driven
line by line (laptop_client.py), and the local runs they are compared with."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from stacks.content import PROJECT_ROOT as ROOT

from .harness import EmulatedDeploy

STACK = "emu"
# Starting Python with Dask on the laptop: seconds on a quiet machine, far more on a busy one.
LAPTOP_START_SECONDS = 180


def run_on_laptop(
    cluster: EmulatedDeploy, script: str, results: Path, *args: str, aws: bool = False
) -> subprocess.Popen:
    """An experiment script on the laptop, against the stack in the outputs file (with `aws`,
    and the user's AWS credentials)."""
    return cluster.on_laptop(
        sys.executable, str(ROOT / "experiments" / script), "--stack", STACK, "--outputs", str(cluster.outputs_file),
        "--results", str(results), *args, cwd=results.parent, aws=aws,
    )  # fmt: skip


def local_run(script: str, results: Path, *args: str) -> dict:
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--results", str(results), *args],
                         capture_output=True, text=True, timeout=600, cwd=results.parent)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return summary(results)


def summary(results: Path) -> dict:
    (path,) = results.glob("*/summary.json")
    return json.loads(path.read_text())


def finish(process: subprocess.Popen, timeout: float = 480) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"the experiment did not finish in {timeout} s:\n{output}") from None
    assert process.returncode == 0, output
    return output


class Laptop:
    """tests/emulated/laptop_client.py on the laptop, one command at a time."""

    def __init__(self, cluster: EmulatedDeploy) -> None:
        self.process = cluster.on_laptop(
            sys.executable, str(ROOT / "tests" / "emulated" / "laptop_client.py"), str(cluster.outputs_file), STACK,
            cwd=cluster.folder, stdin=subprocess.PIPE,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []  # everything it printed, for failure messages
        threading.Thread(target=self._read_all, daemon=True).start()
        assert self.read(LAPTOP_START_SECONDS) == "connected"

    def read(self, timeout: float):
        deadline = time.monotonic() + timeout
        while True:  # the answer is the JSON line; anything else is the client's own output
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"laptop client: no answer within {timeout:g} s: {''.join(self.output)}") from None
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(line)

    def _read_all(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)

    def __enter__(self) -> Laptop:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Ends the client (killed: its connection closes at once), which kept the cluster in use."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)

    def ask(self, command: str, timeout: float = 120):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read(timeout)
