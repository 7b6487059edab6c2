"""PID 1 of one emulated node: its file system, its user-data, and its power.

Started by the harness as `ip netns exec NODE unshare --mount --pid --fork --mount-proc ...`, so
the node has its own network, mount and process namespaces. Before the user-data runs, /etc,
/usr/local and /var get copy-on-write overlays whose upper layers are in the node's folder:
what the node writes there (keys, logs, /usr/local/sbin/dask-node) stays on that node and can be
inspected afterwards. Then it runs the user-data as cloud-init does (root, its own file) and
stays up, reaping orphans, until `systemctl poweroff` signals it: it waits a moment as a real
shutdown does, stops every process of the node (SIGTERM, then SIGKILL), and exits.

    node_init.py NODE_DIR
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

OVERLAID = ("/etc", "/usr/local", "/var")
# Orderly shutdown: how long processes get after SIGTERM before the node is gone.
SHUTDOWN_GRACE_SECONDS = 5.0
# A real `systemctl poweroff` returns at once and the machine goes down a moment later:
# a script that carries on after it gets this long to show it.
POWEROFF_DELAY_SECONDS = 1.0


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def overlay(node: Path, path: str) -> None:
    layer = node / "fs" / path.strip("/").replace("/", "_")
    (layer / "upper").mkdir(parents=True, exist_ok=True)
    (layer / "work").mkdir(parents=True, exist_ok=True)
    mount("-t", "overlay", "overlay", "-o", f"lowerdir={path},upperdir={layer}/upper,workdir={layer}/work", path)


def prepare_filesystem(node: Path) -> None:
    mount("--make-rprivate", "/")
    for path in OVERLAID:
        overlay(node, path)
    # This machine may have a docker client; an EC2 node has none until it installs one.
    # Deleted in an overlay, it is gone for this node only.
    for folder in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        docker = Path(folder) / "docker"
        if docker.exists() or docker.is_symlink():
            if not any(folder == path or folder.startswith(path + "/") for path in OVERLAID):
                overlay(node, folder)
            docker.unlink()


def main(node: Path) -> int:
    state = node / "state"
    state.mkdir(exist_ok=True)
    poweroff: list[float] = []
    signal.signal(signal.SIGTERM, lambda *_: poweroff.append(time.monotonic()))
    prepare_filesystem(node)

    user_data = Path("/var/lib/cloud/instance/user-data.txt")
    user_data.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(node / "user-data.sh", user_data)
    user_data.chmod(0o700)
    script = subprocess.Popen([str(user_data)], stdin=subprocess.DEVNULL, cwd="/")
    (state / "booted").write_text(json.dumps({"time": time.time()}))

    deadline = None
    while True:
        if poweroff and deadline is None:
            deadline = poweroff[0] + POWEROFF_DELAY_SECONDS
        if deadline is not None and time.monotonic() >= deadline:
            break
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid == script.pid:
            code = os.waitstatus_to_exitcode(status)
            (state / "user-data.exit").write_text(str(code))
        if pid == 0:
            time.sleep(0.1)

    (state / "powered-off").write_text(json.dumps({"time": time.time()}))
    os.kill(-1, signal.SIGTERM)  # from PID 1: every other process of this node
    end = time.monotonic() + SHUTDOWN_GRACE_SECONDS
    while time.monotonic() < end:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == script.pid:
            (state / "user-data.exit").write_text(str(os.waitstatus_to_exitcode(status)))
        if pid == 0:
            time.sleep(0.1)
    return 0  # the kernel kills whatever is left when PID 1 exits


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
