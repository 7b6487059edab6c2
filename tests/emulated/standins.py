"""Stand-ins for what an EC2 node has and this machine cannot run: docker, dnf, systemd.

Each node gets shims (`docker`, `dnf`, `systemctl`, `systemd-run`) that run this file with the
node's folder. Every call is appended to NODE/calls.jsonl (arguments only: a password read
from stdin is never written). Unsupported options fail loudly, so a change to userdata/ that
needs more of docker than is emulated here shows up as a failing test, not a silent pass.

- `docker`: exists only after `dnf install docker` (as on Amazon Linux 2023). `login` needs
  ECR's password on stdin; `pull` needs a login to that registry and the tag in (moto's) ECR;
  `run -d` starts a supervisor that runs the command as a process, as the image's user, with the
  image's environment and working directory, only the -v mounts of the node (read-only where
  asked), `--env-file`/`-e`, and the restart policy `on-failure:N`; `inspect -f` answers
  `.State.Status`, `.State.ExitCode` and `.RestartCount`; `logs [--tail N]` prints the
  container's output; `rm NAME` removes an ended container.
- `dnf install docker`: installs the docker shim. `systemctl enable --now docker`: succeeds once
  docker is installed. `systemctl poweroff`: tells the node's PID 1 (node_init.py).
- `systemd-run [--unit U] [--description D] [--on-active=T] CMD...`: CMD in the background, at
  once or after T (a timer), detached from the caller as a service is.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

STOP_TIMEOUT_SECONDS = 10.0  # docker's default before SIGKILL


class Node:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config = json.loads((folder / "config.json").read_text())

    def record(self, tool: str, args: list[str], **extra) -> None:
        with (self.folder / "calls.jsonl").open("a") as calls:
            calls.write(json.dumps({"time": time.time(), "tool": tool, "args": args, **extra}) + "\n")

    def container_dir(self, name: str) -> Path:
        return self.folder / "containers" / name

    def shim(self, tool: str) -> str:
        return f'#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} {self.folder} {tool} "$@"\n'


def fail(message: str, code: int = 1) -> int:
    print(message, file=sys.stderr)
    return code


# ---- dnf, systemctl, systemd-run ----


def dnf(node: Node, args: list[str]) -> int:
    packages = [a for a in args[1:] if not a.startswith("-")]
    if args[:1] != ["install"] or packages != ["docker"]:
        return fail(f"dnf stand-in: only `dnf install docker` is emulated, got {shlex.join(args)}")
    docker = Path(node.config["installed_bin"]) / "docker"
    docker.write_text(node.shim("docker"))
    docker.chmod(0o755)
    return 0


def systemctl(node: Node, args: list[str]) -> int:
    if args == ["enable", "--now", "docker"]:
        if not (Path(node.config["installed_bin"]) / "docker").exists():
            return fail("Failed to enable unit: Unit file docker.service does not exist.")
        return 0
    if args == ["poweroff"]:
        os.kill(1, signal.SIGTERM)  # node_init.py is PID 1 of this node
        return 0
    return fail(f"systemctl stand-in: not emulated: {shlex.join(args)}")


def systemd_run(node: Node, args: list[str]) -> int:
    delay = 0.0
    while args and args[0].startswith("--"):
        option = args.pop(0)
        if option in ("--unit", "--description"):
            args.pop(0)
        elif option.startswith("--on-active="):
            delay = _seconds(option.split("=", 1)[1])
        else:
            return fail(f"systemd-run stand-in: option not emulated: {option}")
    if not args:
        return fail("systemd-run stand-in: no command")
    command = ["sh", "-c", f'sleep {delay:g} && exec "$@"', "unit", *args] if delay else args
    subprocess.Popen(
        command, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, cwd="/",
    )  # fmt: skip
    return 0


def _seconds(span: str) -> float:
    units = {"s": 1, "m": 60, "min": 60, "h": 3600}
    number = span.rstrip("abcdefghijklmnopqrstuvwxyz")
    return float(number) * units[span[len(number) :] or "s"]


# ---- docker ----


def docker(node: Node, args: list[str]) -> int:
    if not args:
        return fail("docker stand-in: no command", 125)
    command, rest = args[0], args[1:]
    handlers = {"login": docker_login, "pull": docker_pull, "run": docker_run, "inspect": docker_inspect,
                "logs": docker_logs, "rm": docker_rm}  # fmt: skip
    if command not in handlers:
        return fail(f"docker stand-in: not emulated: docker {command}", 125)
    return handlers[command](node, rest)


def docker_login(node: Node, args: list[str]) -> int:
    if len(args) != 4 or args[:3] != ["--username", "AWS", "--password-stdin"]:
        return fail(f"docker stand-in: login as `--username AWS --password-stdin REGISTRY` only, got {args}")
    password = sys.stdin.read().strip()
    if not password:
        return fail("Error: Cannot perform an interactive login from a non TTY device")
    if password != _ecr_password(node, args[3]):  # what ECR's registry would check
        return fail(f"Error response from daemon: Get https://{args[3]}/v2/: unauthorized")
    logins = node.folder / "docker" / "logins"
    logins.mkdir(parents=True, exist_ok=True)
    (logins / args[3]).touch()
    print("Login Succeeded")
    return 0


def _ecr(node: Node, registry: str):
    """ECR of the registry's region, as the registry itself sees it (moto)."""
    import boto3

    return boto3.client(
        "ecr", region_name=registry.split(".")[3], endpoint_url=node.config["aws_endpoint"],
        aws_access_key_id="registry", aws_secret_access_key="registry",
    )  # fmt: skip


def _ecr_password(node: Node, registry: str) -> str:
    token = _ecr(node, registry).get_authorization_token()["authorizationData"][0]["authorizationToken"]
    return base64.b64decode(token).decode().partition(":")[2]


def _ecr_has(node: Node, image: str) -> bool:
    registry, _, rest = image.partition("/")
    repository, _, tag = rest.partition(":")
    found = _ecr(node, registry).batch_get_image(repositoryName=repository, imageIds=[{"imageTag": tag}])
    return bool(found["images"])


def docker_pull(node: Node, args: list[str]) -> int:
    image = [a for a in args if a != "-q"]
    if len(image) != 1:
        return fail(f"docker stand-in: pull [-q] IMAGE only, got {args}")
    image = image[0]
    if not (node.folder / "docker" / "logins" / image.partition("/")[0]).exists():
        return fail(f"Error response from daemon: Head https://{image}: no basic auth credentials")
    if not _ecr_has(node, image):
        return fail(f"Error response from daemon: manifest for {image} not found: manifest unknown")
    pulled = node.folder / "docker" / "pulled"
    pulled.mkdir(parents=True, exist_ok=True)
    (pulled / image.replace("/", "_")).touch()
    print(image)
    return 0


def docker_run(node: Node, args: list[str]) -> int:
    spec: dict = {"volumes": [], "env": {}, "restart": "no"}
    detached = False
    while args and args[0].startswith("-"):
        option = args.pop(0)
        if option == "-d":
            detached = True
        elif option == "--name":
            spec["name"] = args.pop(0)
        elif option == "--network":
            if (network := args.pop(0)) != "host":
                return fail(f"docker stand-in: only --network host is emulated, got {network}", 125)
        elif option == "--restart":
            spec["restart"] = args.pop(0)
        elif option == "-v":
            source, target, *mode = args.pop(0).split(":")
            spec["volumes"].append({"source": source, "target": target, "read_only": mode == ["ro"]})
        elif option == "-e":
            key, _, value = args.pop(0).partition("=")
            spec["env"][key] = value
        elif option == "--env-file":
            for line in Path(args.pop(0)).read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    spec["env"][key] = value
        else:
            return fail(f"docker stand-in: run option not emulated: {option}", 125)
    if not detached or "name" not in spec or not args:
        return fail("docker stand-in: only `docker run -d --name NAME ... IMAGE [COMMAND...]` is emulated", 125)
    spec["image"], spec["command"] = args[0], args[1:] or node.config["image"]["cmd"]
    if spec["image"] != node.config["image"]["uri"]:
        return fail(f"Unable to find image '{spec['image']}' locally: not this cluster's image", 125)
    if not (node.folder / "docker" / "pulled" / spec["image"].replace("/", "_")).exists():
        return fail(f"docker stand-in: {spec['image']} was never pulled", 125)
    folder = node.container_dir(spec["name"])
    if folder.exists():
        return fail(
            f'docker: Error response from daemon: Conflict. The container name "/{spec["name"]}" is already in use.',
            125,
        )
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(spec))
    subprocess.Popen(
        [sys.executable, __file__, str(node.folder), "_supervise", spec["name"]], start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
    )  # fmt: skip
    for _ in range(100):  # docker run -d returns once the container has started
        if (folder / "state.json").exists():
            print(f"{spec['name']}-emulated")
            return 0
        time.sleep(0.05)
    return fail("docker stand-in: the container did not start", 125)


def _state(node: Node, name: str) -> dict | None:
    try:
        return json.loads((node.container_dir(name) / "state.json").read_text())
    except FileNotFoundError:
        return None


def docker_inspect(node: Node, args: list[str]) -> int:
    if len(args) != 3 or args[0] != "-f":
        return fail(f"docker stand-in: inspect -f FORMAT NAME only, got {args}")
    fields = {"{{.State.Status}}": "status", "{{.State.ExitCode}}": "exit_code", "{{.RestartCount}}": "restarts"}
    if args[1] not in fields:
        return fail(f"docker stand-in: inspect format not emulated: {args[1]}")
    state = _state(node, args[2])
    if state is None:
        return fail(f"Error: No such object: {args[2]}")
    print(state[fields[args[1]]])
    return 0


def docker_rm(node: Node, args: list[str]) -> int:
    """An ended container only (no -f). Its folder is kept aside as NAME.removed-N, for tests."""
    if len(args) != 1 or args[0].startswith("-"):
        return fail(f"docker stand-in: rm NAME only, got {args}")
    state = _state(node, args[0])
    if state is None:
        return fail(f"Error response from daemon: No such container: {args[0]}")
    if state["status"] in ("running", "restarting"):
        return fail(f"Error response from daemon: You cannot remove a running container {args[0]}.")
    folder = node.container_dir(args[0])
    removed = sum(1 for _ in folder.parent.glob(f"{args[0]}.removed-*"))
    folder.rename(folder.parent / f"{args[0]}.removed-{removed}")
    print(args[0])
    return 0


def docker_logs(node: Node, args: list[str]) -> int:
    tail = None
    if args[:1] == ["--tail"]:
        tail, args = int(args[1]), args[2:]
    if len(args) != 1 or _state(node, args[0]) is None:
        return fail(f"Error: No such container: {' '.join(args)}")
    lines = (node.container_dir(args[0]) / "output.log").read_text(errors="replace").splitlines(keepends=True)
    sys.stdout.write("".join(lines[-tail:] if tail else lines))
    return 0


# ---- containers: a supervisor per container, and the container's own process ----


def _write_state(folder: Path, **state) -> None:
    (folder / "state.tmp").write_text(json.dumps(state))
    (folder / "state.tmp").replace(folder / "state.json")


def supervise(node: Node, name: str) -> int:
    """What dockerd does for one container: run it, keep its output, apply its restart policy."""
    folder = node.container_dir(name)
    spec = json.loads((folder / "spec.json").read_text())
    os.umask(0o022)  # dockerd's, not that of whoever ran `docker run`
    policy, _, limit = spec["restart"].partition(":")
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    restarts, code = 0, 0
    with (folder / "output.log").open("ab") as output:
        while True:
            process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", sys.executable, __file__, str(node.folder),
                 "_enter", name],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip
            _write_state(folder, status="running", exit_code=0, restarts=restarts, pid=process.pid)
            code = _wait(process, stopping)
            if not stopping and policy == "on-failure" and code != 0 and restarts < int(limit or 1 << 30):
                _write_state(folder, status="restarting", exit_code=code, restarts=restarts, pid=0)
                time.sleep(0.1 * 2**restarts)  # dockerd's back-off: 100 ms, doubling
                restarts += 1
                continue
            _write_state(folder, status="exited", exit_code=code, restarts=restarts, pid=0)
            return 0


def _wait(process: subprocess.Popen, stopping: list[int]) -> int:
    while process.poll() is None:
        if stopping:  # docker stop: SIGTERM, then SIGKILL after the timeout
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
            break
        time.sleep(0.1)
    code = process.wait()
    return 128 - code if code < 0 else code  # a signal shows as 128+N, as in docker


def enter(node: Node, name: str) -> int:
    """In the container's own mount namespace, as root: the image's files and the -v mounts
    only, then become the image's user and run the command with the image's environment."""
    spec = json.loads((node.container_dir(name) / "spec.json").read_text())
    image = node.config["image"]

    def mount(*args: str) -> None:
        subprocess.run(["mount", *args], check=True)

    # Volumes are staged before the node's own files under them are hidden, on a tmpfs of this
    # mount namespace: folders opened below may hide this container's own folder.
    staging = Path("/mnt")
    mount("-t", "tmpfs", "-o", "mode=0700", "tmpfs", str(staging))
    staged = []
    for index, volume in enumerate(spec["volumes"]):
        stage = staging / f"volume-{index}"
        stage.mkdir(exist_ok=True)
        mount("--bind", volume["source"], str(stage))
        staged.append((stage, volume))
    # The image's Python (this machine's interpreter and the checkout's venv) must be where its
    # user can reach it, at the same paths; either may sit under a folder that user cannot enter
    # (/root/.pyenv, a clone in a 0700 home). Each such folder is replaced, for this container
    # only, by an open one holding just those paths.
    reachable = []
    for index, path in enumerate(Path(p) for p in image["host_paths"]):
        closed = next((a for a in reversed(path.parents) if a != Path("/") and not a.stat().st_mode & 0o001), None)
        if closed is not None:
            stage = staging / f"host-path-{index}"
            stage.mkdir(exist_ok=True)
            mount("--bind", str(path), str(stage))
            reachable.append((closed, path, stage))
    for hidden in image["node_only"]:  # node folders the image does not have
        if Path(hidden).is_dir():
            mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", hidden)
    for hidden in image["hidden_files"]:  # laptop files the image does not have
        mount("--bind", "/dev/null", hidden)
    mount("--bind", image["root"] + "/opt", "/opt")
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/home")
    for path in ("/etc/passwd", "/etc/group"):
        mount("--bind", image["root"] + path, path)
    home = Path(image["home"])
    home.mkdir(parents=True)
    os.chown(home, image["uid"], image["uid"])
    opened: list[Path] = []
    for closed, _, _ in sorted(reachable, key=lambda r: len(r[0].parts)):
        if not any(closed == o or o in closed.parents for o in opened):  # not inside one opened already
            mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(closed))
            opened.append(closed)
    for _, path, stage in reachable:
        path.mkdir(parents=True, exist_ok=True)
        mount("--bind", str(stage), str(path))
    for stage, volume in staged:
        Path(volume["target"]).mkdir(parents=True, exist_ok=True)
        mount("--bind", str(stage), volume["target"])
        if volume["read_only"]:
            mount("-o", "remount,bind,ro", volume["target"])

    os.setgroups([])
    os.setgid(image["uid"])
    os.setuid(image["uid"])
    os.chdir(image["workdir"])
    environment = {**image["env"], "HOME": image["home"], "HOSTNAME": node.config["hostname"], **spec["env"]}
    # AWS's endpoints are moto's, for boto3 in containers as for the AWS CLI on the node.
    environment["AWS_ENDPOINT_URL"] = node.config["aws_endpoint"]
    command = spec["command"]
    os.execvpe(command[0], command, environment)  # noqa: S606 (the container's own command)


def main(argv: list[str]) -> int:
    node, tool, args = Node(Path(argv[0])), argv[1], argv[2:]
    if tool == "_supervise":
        return supervise(node, args[0])
    if tool == "_enter":
        return enter(node, args[0])
    node.record(tool, args)
    tools = {"docker": docker, "dnf": dnf, "systemctl": systemctl, "systemd-run": systemd_run}
    return tools[tool](node, list(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
