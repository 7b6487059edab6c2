"""The whole deploy, emulated on this machine: the synthesized stack's own user-data boots
nodes that talk to each other, to a fake AWS and to a fake instance metadata service.

What is real: the user-data, rendered by Terraform from the synthesized stack's templatefile
expressions and run unmodified as root by bash; the AWS CLI (its own venv, requirements-awscli.txt)
signing with role credentials it reads from the metadata service; curl; Dask, the TLS gateway
and the spot watcher, started from the node's command lines; the client scripts, run from a
"laptop" with nothing but an outputs file.

What is emulated, and how:
- Network: a namespace holding a bridge (10.213.0.0/24) and the AWS endpoint (moto's server, in
  this process, at 10.213.0.1:5000); one namespace per node and one for the laptop, each wired to
  the bridge. No address is added to this machine's own network.
- EC2: each node's metadata service is a FakeMetadata (imds.py) at 169.254.169.254:80 on the
  node's own loopback, IMDSv2 only. Only the values AWS would produce are substituted into
  the rendered user-data: the scheduler interface's id and address, and the ECR repository URL.
- The scheduler's network interface: moto's, in a subnet of the bridge's network, at
  SCHEDULER_ADDRESS. EC2 refuses to attach it while another instance has it (moto does not:
  that refusal is added here) and frees it when that instance is gone. Once moto has it attached
  to a scheduler node's instance, a thread brings it up in that node as `eth1`, with a fixed MAC
  and the policy routing Amazon Linux's amazon-ec2-net-utils gives a second interface; it goes
  from the node (and the bridge) when the node is gone.
- AWS APIs: moto holds the TLS material as SecureString parameters, the ECR repository with the
  image's tag (as `cdktf deploy` pushes it) and the worker Auto Scaling group. Nodes reach it
  through AWS_ENDPOINT_URL (the AWS CLI, and boto3 in containers), standing in for AWS's DNS.
- EC2 Auto Scaling: the scheduler's group of one launches its instance as the deploy is
  applied; `boot("scheduler")` boots it. Once started (`start_group`), a thread boots a node
  for each instance either group launches, shuts a worker node down when its instance leaves
  the group, and terminates the instance of a node that powered itself off or was killed
  (moto's group then replaces it while below its desired capacity).
- The machine: node_init.py is each node's PID 1 (own mount and process namespaces, overlays on
  /etc, /usr/local and /var); standins.py stands in for docker, dnf and systemd.
- The image: built from the Dockerfile's ENV, USER, WORKDIR and COPY lines; its Python
  packages are this venv's (the pins are the same, tests/test_image.py checks).
Tests may shorten waits, and say so: the idle timeout (a setting), how long a node retries a
bootstrap step (userdata.MAX_WAIT_SECONDS), so that failures show in seconds, and the worker
autoscaler's pace (userdata.AUTOSCALER_INTERVAL_SECONDS, SCALE_DOWN_AFTER_SECONDS).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import gzip
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from stacks import userdata
from stacks.config import MIN_WORKERS_TAG, ClusterSettings

from .. import loopback_cluster
from ..conftest import ROOT, terraform_outputs
from .imds import FakeMetadata
from .node_init import OVERLAID

NETWORK = "10.213.0"
AWS_ADDRESS, AWS_PORT = f"{NETWORK}.1", 5000
SCHEDULER_ADDRESS = f"{NETWORK}.10"
LAPTOP_ADDRESS = f"{NETWORK}.100"
AWS_CLI = ROOT / ".venv-awscli" / "bin" / "aws"
HERE = Path(__file__).resolve().parent
CLONE_NEWNET = 0x40000000
INTERFACE_MAC = "02:13:00:00:00:0a"  # an interface keeps its MAC address wherever it is attached
INTERFACE_LINK = "vsched"  # the bridge's end of the scheduler interface
GROUP_SECONDS = 0.5  # how often the emulated worker group looks at moto's
_deploys = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def entered(namespace: str):
    """This thread inside network namespace `namespace`: sockets made here live there."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


def substitute(
    expression: str, *, repository_url: str, scheduler_ip: str, interface_id: str, tls: dict[str, str] | None = None,
    uploads_bucket: str = "",
) -> str:  # fmt: skip
    """A synthesized expression with the attributes only AWS (or the TLS provider) knows replaced
    by values, and the user-data asset path pointed at userdata/."""
    values = {
        r"aws_ecr_repository\.[\w-]+\.repository_url": repository_url,
        # The scheduler's interface and its Elastic IP: one address here, public and private.
        r"aws_network_interface\.[\w-]+\.private_ip|aws_eip\.[\w-]+\.public_ip": scheduler_ip,
        r"aws_network_interface\.[\w-]+\.id": interface_id,
        r"aws_s3_bucket\.[\w-]+\.bucket": uploads_bucket,
    }
    if tls:
        values |= {
            r"tls_self_signed_cert\.[\w-]+\.cert_pem": tls["ca.pem"],
            r"tls_locally_signed_cert\.[\w-]*client[\w-]*\.cert_pem": tls["client.pem"],
            r"tls_private_key\.[\w-]*client[\w-]*\.private_key_pem": tls["client.key"],
        }
    for pattern, value in values.items():
        expression = re.sub(pattern, lambda _, v=value: json.dumps(v), expression)
    return re.sub(r"assets/userdata/[0-9A-F]+/", f"{userdata.TEMPLATE_DIR.as_posix()}/", expression)


def image_spec(uri: str, root: Path, project: Path = ROOT, venv: Path = Path(sys.prefix)) -> dict:
    """The image as `project`'s Dockerfile builds it, for the docker stand-in: files under `root`,
    Python packages from `venv` (the image pins the same)."""
    env, user, workdir, cmd = {}, None, "/", []
    text = (project / "image" / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "ENV":
            env |= dict(item.split("=", 1) for item in shlex.split(rest))
        elif instruction == "USER":
            user = int(rest.strip())
        elif instruction == "WORKDIR":
            workdir = rest.strip()
        elif instruction == "CMD":
            cmd = json.loads(rest)
        elif instruction == "COPY":
            *sources, target = rest.split()
            for source in sources:  # as docker: a folder's contents, or files into a folder/
                destination = root / target.lstrip("/")
                if (project / source).is_dir():
                    shutil.copytree(project / source, destination, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    if target.endswith("/"):
                        destination = destination / Path(source).name
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(project / source, destination)
    assert user is not None, "the Dockerfile must name a USER"
    # As the Dockerfile's `useradd` does.
    (root / "etc").mkdir(exist_ok=True)
    for name, line in (("passwd", f"dask:x:{user}:{user}::{workdir}:/usr/sbin/nologin"), ("group", f"dask:x:{user}:")):
        (root / "etc" / name).write_text(Path(f"/etc/{name}").read_text() + line + "\n")
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    # The image's Python packages are this venv's: its bin first on PATH. The container sees the
    # venv and the interpreter it links to at their own paths, wherever the checkout is.
    env["PATH"] = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    # This venv too: another venv's .pth file may point into it (tests/test_emulated_private_clone.py).
    host_paths = list(dict.fromkeys([str(venv), sys.prefix, str(Path(sys.base_prefix).resolve())]))
    return {"uri": uri, "root": str(root), "uid": user, "env": env, "workdir": workdir, "home": workdir,
            "cmd": cmd, "node_only": ["/etc/dask"], "host_paths": host_paths,
            # The image has no spotsearch: the venv's editable install of it is not read there.
            "hidden_files": [str(path) for path in Path(sysconfig.get_paths()["purelib"]).glob("__editable__*spotsearch*")]}  # fmt: skip


def remove_stale_namespaces() -> None:
    """Namespaces (and their processes) left by a test run that was killed before cleaning up."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    for name in re.findall(r"^(emu(\d+)-\d+-\S+)", listing, re.M):
        namespace, pid = name
        if Path(f"/proc/{pid}").exists():
            continue  # a run still going
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
        for process in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(process), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@dataclass
class Node:
    name: str
    role: str
    address: str
    namespace: str
    folder: Path
    metadata: FakeMetadata
    process: subprocess.Popen | None = None
    terminated: bool = False  # shut down from outside, by the group (not by its own poweroff)

    def calls(self) -> list[list[str]]:
        """The node's stand-in calls (docker, dnf, systemctl, systemd-run), tool first."""
        path = self.folder / "calls.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [[r["tool"], *r["args"]] for r in records]

    def log(self) -> str:
        path = self.file("/var/log/dask-node.log")
        return path.read_text() if path.exists() else ""

    def file(self, path: str) -> Path:
        """Where a file the node wrote under one of the overlaid folders (/etc, /usr/local, /var) is kept."""
        root = next(r for r in OVERLAID if path.startswith(r + "/"))
        return self.folder / "fs" / root.strip("/").replace("/", "_") / "upper" / path.removeprefix(root + "/")

    def container(self, name: str) -> dict | None:
        path = self.folder / "containers" / name / "state.json"
        return json.loads(path.read_text()) if path.exists() else None

    def container_command(self, name: str) -> list[str]:
        return json.loads((self.folder / "containers" / name / "spec.json").read_text())["command"]

    def container_output(self, name: str) -> str:
        path = self.folder / "containers" / name / "output.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def user_data_exit(self) -> int | None:
        path = self.folder / "state" / "user-data.exit"
        return int(path.read_text()) if path.exists() else None

    @property
    def powered_off(self) -> bool:
        return (self.folder / "state" / "powered-off").exists()

    @property
    def gone(self) -> bool:
        """Its instance is no more: powered off, terminated or killed."""
        return self.process is not None and self.process.poll() is not None

    def wait_until(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {what} not within {timeout:g} s\n--- node log ---\n{self.log()}")
            time.sleep(0.5)

    def _init_pid(self) -> int:
        unshare = self.process.pid  # `ip netns exec` became unshare, whose only child is node_init
        (init,) = Path(f"/proc/{unshare}/task/{unshare}/children").read_text().split()
        return int(init)

    def host_pid(self, node_pid: int) -> int:
        """This machine's pid of the node's process `node_pid` (as the node's own tools see it)."""
        namespace = os.readlink(f"/proc/{self._init_pid()}/ns/pid")
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError):
                if os.readlink(status.parent / "ns" / "pid") != namespace:
                    continue
                (line,) = [x for x in status.read_text().splitlines() if x.startswith("NSpid:")]
                if int(line.split()[-1]) == node_pid:
                    return int(status.parent.name)
        raise LookupError(f"{self.name}: no process {node_pid}")

    def terminate(self) -> None:
        """EC2 terminates the instance: an orderly shutdown, started from outside the node."""
        self.terminated = True
        with contextlib.suppress(ValueError, OSError):  # it went down by itself a moment ago
            os.kill(self._init_pid(), signal.SIGTERM)

    def wait_powered_off(self, timeout: float) -> None:
        self.wait_until(lambda: self.process is not None and self.process.poll() is not None, timeout, "power-off")


@dataclass
class EmulatedDeploy:
    """One stack's deploy, emulated. Use as a context manager: everything is cleaned up on exit."""

    settings: ClusterSettings
    document: dict  # the synthesized Terraform JSON
    folder: Path
    push_image: bool = True
    project: Path = ROOT  # the checkout the image is built from
    venv: Path = Path(sys.prefix)  # the image's Python packages
    tls_overrides: dict[str, str] = field(default_factory=dict)  # SSM values to break on purpose
    prefix: str = field(default_factory=lambda: f"emu{os.getpid()}-{next(_deploys)}")
    nodes: list[Node] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    laptop_processes: list[subprocess.Popen] = field(default_factory=list)
    workers: dict[str, Node] = field(default_factory=dict)  # by instance id, booted by the emulated group
    schedulers: dict[str, Node] = field(default_factory=dict)  # by instance id, of the scheduler's group
    interface_holder: Node | None = None  # the scheduler node the scheduler's interface is up in
    group_history: list[tuple[float, int, int]] = field(default_factory=list)  # (moment, instances, desired)
    group_errors: list[BaseException] = field(default_factory=list)
    spot_price: str | None = None  # USD per hour, every type and zone; None: moto's own
    _group_thread: threading.Thread | None = None
    _clients: dict = field(default_factory=dict)
    _clients_lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- setup and teardown ----

    def __enter__(self) -> EmulatedDeploy:
        for tool in ("ip", "unshare", "mount"):
            assert shutil.which(tool), f"{tool} is required for the emulated deploy"
        assert os.geteuid() == 0, "the emulated deploy needs root (network and mount namespaces)"
        assert AWS_CLI.exists(), f"{AWS_CLI} missing: `make test` installs it (requirements-awscli.txt)"
        # The containers run as the image's user, with this venv's packages: they must be readable
        # by other users (a venv made under umask 077 is not; the folders above it may be closed).
        unreadable = [
            p for p in (self.venv, *self.venv.glob("lib/python*/site-packages")) if not p.stat().st_mode & 0o005
        ]
        assert not unreadable, (
            f"{unreadable[0]} is private: the emulated nodes' user cannot read it; `chmod -R a+rX {self.venv}`"
        )
        remove_stale_namespaces()
        try:
            self._network()
            self._aws()
            self._render()
        except BaseException:
            self.close()
            raise
        self._ec2_stop = threading.Event()
        self._ec2_thread = threading.Thread(target=self._run_interface, name="emulated-interface", daemon=True)
        self._ec2_thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._group_thread:
            self._group_stop.set()
            self._group_thread.join(30)
        if getattr(self, "_ec2_thread", None):
            self._ec2_stop.set()
            self._ec2_thread.join(30)
        if getattr(self, "_attach", None):
            from moto.ec2.models.elastic_network_interfaces import NetworkInterfaceBackend

            NetworkInterfaceBackend.attach_network_interface = self._attach
        if getattr(self, "_price_history", None):
            from moto.ec2.models.instances import InstanceBackend
            from moto.ec2.responses.spot_instances import SpotInstances

            SpotInstances.describe_spot_price_history = self._price_history
            InstanceBackend.run_instances = self._run_instances
        for process in self.laptop_processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
        for node in self.nodes:
            if node.process and node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(30)
            node.metadata.shutdown()
            node.metadata.server_close()
        if getattr(self, "moto", None):
            self.moto.stop()
        for namespace in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self.namespaces.clear()

    def _namespace(self, label: str, address: str | None) -> str:
        name = f"{self.prefix}-{label}"
        subprocess.run(["ip", "netns", "del", name], capture_output=True)  # left by a killed run
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        if address:
            veth = f"v{len(self.namespaces)}"
            ip("-n", self.fabric, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
            ip("-n", self.fabric, "link", "set", veth, "master", "br0", "up")
            ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", name, "link", "set", "eth0", "up")
        return name

    def _network(self) -> None:
        self.fabric = self._namespace("net", None)
        ip("-n", self.fabric, "link", "add", "br0", "type", "bridge")
        ip("-n", self.fabric, "addr", "add", f"{AWS_ADDRESS}/24", "dev", "br0")
        ip("-n", self.fabric, "link", "set", "br0", "up")
        self.laptop = self._namespace("laptop", LAPTOP_ADDRESS)

    def _aws(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

        with entered(self.fabric):
            self.moto = ThreadedMotoServer(ip_address=AWS_ADDRESS, port=AWS_PORT, verbose=False)
            self.moto.start()
            # moto keeps its state per process: a deploy starts from an empty account.
            reset = urllib.request.Request(f"http://{AWS_ADDRESS}:{AWS_PORT}/moto-api/reset", method="POST")
            urllib.request.urlopen(reset, timeout=10).close()
        self.tls = loopback_cluster.make_tls(self.folder / "tls")
        for role in ("scheduler", "worker"):
            for name in ("ca.pem", f"{role}.pem", f"{role}.key"):
                value = self.tls_overrides.get(f"{role}/{name}", self.tls[name])
                if value:  # an empty override: the parameter is missing
                    self.aws("ssm", "put_parameter", Name=self.settings.secret_parameter(role, name),
                             Value=value, Type="SecureString")  # fmt: skip
        (repository,) = self.document["resource"]["aws_ecr_repository"].values()
        created = self.aws("ecr", "create_repository", repositoryName=repository["name"])
        self.repository_url = created["repository"]["repositoryUri"]
        # The scheduler's interface in a subnet of the bridge's network, and the cluster's state,
        # as `cdktf deploy` creates them.
        vpc = self.aws("ec2", "create_vpc", CidrBlock=f"{NETWORK}.0/24")["Vpc"]["VpcId"]
        subnet = self.aws("ec2", "create_subnet", VpcId=vpc, CidrBlock=f"{NETWORK}.0/24",
                          AvailabilityZone=f"{self.settings.region}a")["Subnet"]["SubnetId"]  # fmt: skip
        self.subnet_id = subnet
        interface = self.aws("ec2", "create_network_interface", SubnetId=subnet, PrivateIpAddress=SCHEDULER_ADDRESS)
        self.interface_id = interface["NetworkInterface"]["NetworkInterfaceId"]
        for parameter in self.document["resource"]["aws_ssm_parameter"].values():
            if "/cluster/" in parameter["name"]:  # the cluster's state and spend
                self.aws("ssm", "put_parameter", Name=parameter["name"], Value=parameter["value"],
                         Type=parameter["type"])  # fmt: skip
        # The bucket for the laptop's uploads, named as Terraform names it after its prefix.
        (bucket,) = self.document["resource"]["aws_s3_bucket"].values()
        self.uploads_bucket = f"{bucket['bucket_prefix']}20261207000000000000000001"
        self.aws("s3", "create_bucket", Bucket=self.uploads_bucket)
        self._refuse_attaching_an_interface_in_use()
        self._spot_prices_set_here()

    def _refuse_attaching_an_interface_in_use(self) -> None:
        """EC2 refuses to attach an interface another instance has; moto does not."""
        from moto.ec2.exceptions import EC2ClientError
        from moto.ec2.models.elastic_network_interfaces import NetworkInterfaceBackend

        self._attach = attach = NetworkInterfaceBackend.attach_network_interface

        def attach_if_free(backend, eni_id: str, instance_id: str, device_index: int):
            eni = backend.get_network_interface(eni_id)
            if eni.instance is not None:
                raise EC2ClientError("InvalidNetworkInterface.InUse", f"Interface: [{eni_id}] in use.")
            return attach(backend, eni_id, instance_id, device_index)

        NetworkInterfaceBackend.attach_network_interface = attach_if_free

    def _spot_prices_set_here(self) -> None:
        """Both groups are spot (the stack's default market), where moto's groups launch on demand;
        moto quotes one spot price, USD 0.00001 an hour, and a test may set another (`spot_price`)."""
        from moto.ec2.models.instances import InstanceBackend
        from moto.ec2.responses.spot_instances import SpotInstances

        self._run_instances = run = InstanceBackend.run_instances

        def run_spot(backend, *args, **kwargs):
            reservation = run(backend, *args, **kwargs)
            for instance in reservation.instances:
                instance.lifecycle = "spot"
            return reservation

        InstanceBackend.run_instances = run_spot

        self._price_history = history = SpotInstances.describe_spot_price_history

        def priced_here(responses):
            result = history(responses)
            if self.spot_price is not None:
                for entry in result.result["SpotPriceHistory"]:
                    entry["SpotPrice"] = self.spot_price
            return result

        SpotInstances.describe_spot_price_history = priced_here

    @property
    def group_name(self) -> str:
        return userdata.worker_group_name(self.settings)

    @property
    def scheduler_group_name(self) -> str:
        return userdata.scheduler_group_name(self.settings)

    def aws(self, service: str, method: str, **kwargs):
        """Call moto as the test (not as a node), from inside the network namespace it serves in."""
        import boto3

        with entered(self.fabric):  # connections are made here, whichever thread calls
            with self._clients_lock:  # made once (tens of milliseconds), and boto3's session is not thread-safe
                if service not in self._clients:
                    self._clients[service] = boto3.client(
                        service, region_name=self.settings.region, endpoint_url=f"http://{AWS_ADDRESS}:{AWS_PORT}",
                        aws_access_key_id="test", aws_secret_access_key="test",
                    )  # fmt: skip
            return getattr(self._clients[service], method)(**kwargs)

    def group(self, name: str | None = None) -> dict:
        """The worker group, or the group named `name`, as moto has it."""
        groups = self.aws(
            "autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=[name or self.group_name]
        )
        return groups["AutoScalingGroups"][0]

    def in_service(self, name: str) -> set[str]:
        return {i["InstanceId"] for i in self.group(name)["Instances"] if i["LifecycleState"] == "InService"}

    def desired_capacity(self) -> int:
        return self.group()["DesiredCapacity"]

    # ---- the worker group, emulated ----

    def start_group(self) -> None:
        """Let the worker group launch nodes, as EC2 Auto Scaling does once the stack is applied.

        Every GROUP_SECONDS: an instance moto's group has and no node runs yet boots a worker node
        (the instance's id in its metadata); a node whose instance left the group (the autoscaler
        terminated it) is shut down, as EC2 does; a node that powered itself off is terminated
        (its shutdown behaviour) and leaves the group, which launches a replacement only while it
        is below its desired capacity.
        """
        self._group_stop = threading.Event()
        self._group_thread = threading.Thread(target=self._run_group, name="emulated-group", daemon=True)
        self._group_thread.start()

    def _run_group(self) -> None:
        while not self._group_stop.wait(GROUP_SECONDS):
            try:
                self._reconcile_group()
            except Exception as error:
                self.group_errors.append(error)

    def _reconcile_group(self) -> None:
        self._reconcile_schedulers()
        group = self.group()
        active = {i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == "InService"}
        self.group_history.append((time.monotonic(), len(active), group["DesiredCapacity"]))
        for instance in sorted(active - set(self.workers)):
            self.workers[instance] = self.boot("worker", instance_id=instance)
        for instance, node in self.workers.items():
            if node.powered_off and instance in active:
                self._terminate(self.group_name, instance)
            elif instance not in active and not node.powered_off and not node.terminated:
                node.terminate()

    def _reconcile_schedulers(self) -> None:
        """The scheduler's group: a node for each new instance; the instance of a node that is
        gone (powered off, or killed) leaves the group and is terminated. A node that left the
        group itself (at a spot notice) runs on until EC2 takes it (`terminate`)."""
        active = self.in_service(self.scheduler_group_name)
        for instance in sorted(active - set(self.schedulers)):
            self.schedulers[instance] = self.boot("scheduler", instance_id=instance)
        for instance, node in self.schedulers.items():
            if node.gone and instance in active:
                self._terminate(self.scheduler_group_name, instance)

    def _terminate(self, group: str, instance: str) -> None:
        """EC2 terminates an instance that is gone; it leaves its group, which replaces it while
        below its desired capacity."""
        self.aws("autoscaling", "detach_instances", AutoScalingGroupName=group, InstanceIds=[instance],
                 ShouldDecrementDesiredCapacity=False)  # fmt: skip
        self.aws("ec2", "terminate_instances", InstanceIds=[instance])

    def kill(self, node: Node) -> None:
        """The node's instance is gone at once, nothing of it shuts down: every process is killed."""
        node.terminated = True
        os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait(30)

    # ---- the scheduler's network interface, emulated ----

    def _run_interface(self) -> None:
        while not self._ec2_stop.wait(0.3):
            try:
                self._reconcile_interface()
            except Exception as error:
                self.group_errors.append(error)

    def _reconcile_interface(self) -> None:
        """Up in the node whose instance moto has it attached to; freed when that node is gone."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ec2.models import ec2_backends

        eni = ec2_backends[DEFAULT_ACCOUNT_ID][self.settings.region].get_network_interface(self.interface_id)
        holder = self.schedulers.get(eni.instance.id) if eni.instance else None
        if holder is not None and holder.gone:
            eni.instance.detach_eni(eni)  # EC2 frees the interface of a terminated instance
            holder = None
        if holder is self.interface_holder:
            return
        if self.interface_holder is not None:
            subprocess.run(["ip", "-n", self.fabric, "link", "del", INTERFACE_LINK], capture_output=True)
            subprocess.run(["ip", "-n", self.interface_holder.namespace, "link", "set", "eth0", "down"],
                           capture_output=True)  # its instance, and its own interface, are gone  # fmt: skip
        if holder is not None:
            namespace = holder.namespace
            ip("-n", self.fabric, "link", "add", INTERFACE_LINK, "type", "veth", "peer", "name", "eth1",
               "address", INTERFACE_MAC, "netns", namespace)  # fmt: skip
            ip("-n", self.fabric, "link", "set", INTERFACE_LINK, "master", "br0", "up")
            # As amazon-ec2-net-utils sets up a second interface: its address answers and replies
            # through it alone.
            subprocess.run(["ip", "netns", "exec", namespace, "sysctl", "-q", "-w", "net.ipv4.conf.all.arp_ignore=1"],
                           check=True)  # fmt: skip
            ip("-n", namespace, "addr", "add", f"{SCHEDULER_ADDRESS}/24", "dev", "eth1")
            ip("-n", namespace, "link", "set", "eth1", "up")
            ip("-n", namespace, "route", "add", f"{NETWORK}.0/24", "dev", "eth1", "table", "10001")
            ip("-n", namespace, "rule", "add", "from", SCHEDULER_ADDRESS, "table", "10001")
        self.interface_holder = holder

    def check_group(self) -> None:
        """Fail with what went wrong in the group's thread, if anything did."""
        if self.group_errors:
            raise self.group_errors[0]

    def worker_node_seconds(self, since: float, until: float) -> float:
        """Instance-seconds the group ran between two moments (time.monotonic())."""
        total, previous = 0.0, None
        for moment, count, _ in self.group_history:
            if previous is not None:
                start, end = max(previous[0], since), min(moment, until)
                total += max(0.0, end - start) * previous[1]
            previous = (moment, count)
        return total

    def _render(self) -> None:
        """User-data and outputs from the synthesized expressions, by real Terraform."""
        doc = self.document
        templates = {t["name"].rsplit("-", 1)[1]: t for t in doc["resource"]["aws_launch_template"].values()}
        values = {"repository_url": self.repository_url, "scheduler_ip": SCHEDULER_ADDRESS, "tls": self.tls,
                  "interface_id": self.interface_id, "uploads_bucket": self.uploads_bucket}  # fmt: skip
        outputs = {
            f"user_data_{role}": {"value": substitute(templates[role]["user_data"], **values)}
            for role in ("scheduler", "worker")
        }
        unresolved = re.compile(r"\b(?:aws|data|tls|random|docker)_\w+\.[\w-]+")
        for name, output in doc["output"].items():
            value = output["value"]
            if isinstance(value, str):
                value = substitute(value, **values)
            if not unresolved.search(json.dumps(value)):  # the price estimate reads spot prices: left out
                outputs[name] = {"value": value}
        config = {"output": outputs, "variable": doc.get("variable", {}), "locals": doc.get("locals", {})}
        (self.folder / "render").mkdir()
        rendered = terraform_outputs(self.folder / "render", config)
        self.user_data = {
            role: gzip.decompress(base64.b64decode(rendered.pop(f"user_data_{role}"))).decode()
            for role in ("scheduler", "worker")
        }
        for role, script in self.user_data.items():
            leftover = re.findall(r"\$\{[a-z_]+\}|%\{", script)
            assert not leftover, f"unrendered template syntax in the {role}'s user-data: {leftover}"
        self.outputs = rendered
        self.image_uri = rendered["image_uri"]
        if self.push_image:  # what `cdktf deploy` does before any node boots
            repository, tag = self.image_uri.split("/", 1)[1].split(":")
            manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}
            self.aws("ecr", "put_image", repositoryName=repository, imageTag=tag, imageManifest=json.dumps(manifest))
        self.image_root = self.folder / "image"
        self.image = image_spec(self.image_uri, self.image_root, self.project, self.venv)
        self._worker_group(rendered)
        self._scheduler_group()

    def _stack_group(self, role: str) -> dict:
        (group,) = [g for g in self.document["resource"]["aws_autoscaling_group"].values() if g["name"].endswith(role)]
        return group

    def _scheduler_group(self) -> None:
        """The scheduler's group of one as the stack defines it, in the interface's subnet: moto
        launches its instance at once, as AWS does when the stack is applied."""
        group = self._stack_group("scheduler")
        assert (group["min_size"], group["max_size"], group["desired_capacity"]) == (0, 1, 1)
        tags = [{"Key": t["key"], "Value": t["value"], "PropagateAtLaunch": t["propagate_at_launch"]}
                for t in group["tag"]]  # fmt: skip
        self.aws("ec2", "create_launch_template", LaunchTemplateName="scheduler",
                 LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "m6i.large"})  # fmt: skip
        self.aws("autoscaling", "create_auto_scaling_group", AutoScalingGroupName=self.scheduler_group_name,
                 LaunchTemplate={"LaunchTemplateName": "scheduler"}, MinSize=0, MaxSize=1, DesiredCapacity=1,
                 VPCZoneIdentifier=self.subnet_id, Tags=tags)  # fmt: skip

    def _worker_group(self, rendered: dict) -> None:
        """The group as the stack defines it: its bounds as Terraform rendered them, MinSize 0,
        new instances protected from scale-in, the DaskMinWorkers tag."""
        group = self._stack_group("workers")
        tags = [{"Key": t["key"], "Value": str(rendered["min_workers"]) if t["key"] == MIN_WORKERS_TAG else t["value"],
                 "PropagateAtLaunch": t["propagate_at_launch"]} for t in group["tag"]]  # fmt: skip
        assert group["protect_from_scale_in"] is True and group["min_size"] == 0
        self.aws("ec2", "create_launch_template", LaunchTemplateName="workers",
                 LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "c6i.xlarge"})  # fmt: skip
        self.aws("autoscaling", "create_auto_scaling_group", AutoScalingGroupName=self.group_name,
                 LaunchTemplate={"LaunchTemplateName": "workers"}, MinSize=0, MaxSize=rendered["max_workers"],
                 DesiredCapacity=rendered["min_workers"], AvailabilityZones=[f"{self.settings.region}a"],
                 NewInstancesProtectedFromScaleIn=True, Tags=tags)  # fmt: skip

    # ---- nodes and the laptop ----

    def boot(self, role: str, instance_id: str | None = None) -> Node:
        """Launch one node of `role`: its namespace, metadata service and user-data."""
        if role == "scheduler" and instance_id is None:  # the instance the scheduler's group launched
            (instance_id,) = sorted(self.in_service(self.scheduler_group_name) - set(self.schedulers))[:1]
        index = len(self.nodes)
        address = f"{NETWORK}.{20 + index}"  # the scheduler's own address is its interface's
        name = f"{role}-{index}"
        namespace = self._namespace(name, address)
        ip("-n", namespace, "addr", "add", "169.254.169.254/32", "dev", "lo")  # EC2's link-local metadata
        folder = self.folder / "nodes" / name
        (folder / "bin").mkdir(parents=True)
        (folder / "installed-bin").mkdir()
        with entered(namespace):
            metadata = FakeMetadata(
                address, address=("169.254.169.254", 80), region=self.settings.region,
                role=f"{self.settings.resource_prefix}-{role}", instance_id=instance_id or f"i-{index:017x}",
            )  # fmt: skip
        if instance_id:  # EC2 gives an instance its address; moto picks its own: the node's is put there
            self._moto_instance(instance_id).nics[0].private_ip_address = address
        node = Node(name, role, address, namespace, folder, metadata)
        self.nodes.append(node)
        if role == "scheduler":
            self.schedulers[instance_id] = node
        config = {
            "installed_bin": str(folder / "installed-bin"), "hostname": name, "image": self.image,
            "aws_endpoint": f"http://{AWS_ADDRESS}:{AWS_PORT}",
        }  # fmt: skip
        (folder / "config.json").write_text(json.dumps(config))
        from .standins import Node as StandinNode

        shims = StandinNode(folder)
        for tool in ("dnf", "systemctl", "systemd-run"):
            (folder / "bin" / tool).write_text(shims.shim(tool))
            (folder / "bin" / tool).chmod(0o755)
        (folder / "user-data.sh").write_text(self.user_data[role])
        environment = {
            "PATH": f"{folder}/bin:{folder}/installed-bin:{AWS_CLI.parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8",
            # The AWS CLI signs with the role credentials from the metadata service, nothing else.
            "AWS_ENDPOINT_URL": f"http://{AWS_ADDRESS}:{AWS_PORT}",
            "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        }  # fmt: skip
        with (folder / "console.log").open("wb") as console:
            node.process = subprocess.Popen(
                ["ip", "netns", "exec", namespace, "unshare", "--mount", "--pid", "--fork", "--kill-child",
                 "--mount-proc", sys.executable, str(HERE / "node_init.py"), str(folder)],
                env=environment, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return node

    def _moto_instance(self, instance_id: str):
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ec2.models import ec2_backends

        return ec2_backends[DEFAULT_ACCOUNT_ID][self.settings.region].get_instance(instance_id)

    def write_outputs(self, path: Path, stack: str) -> Path:
        """The outputs file `cdktf deploy --outputs-file` would write, private as the wrapper makes it."""
        path.write_text(json.dumps({stack: self.outputs}, indent=2))
        path.chmod(0o600)
        return path

    def on_laptop(self, *command: str, cwd: Path, stdin=subprocess.DEVNULL, aws: bool = False) -> subprocess.Popen:
        """A command on the laptop, which reaches the cluster only through the network; it is
        killed with the deploy if it is still running then. With `aws`, it has the user's AWS
        credentials (moto's)."""
        env = None
        if aws:
            env = {**os.environ, "AWS_ENDPOINT_URL": f"http://{AWS_ADDRESS}:{AWS_PORT}",
                   "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}  # fmt: skip
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.laptop, *command], cwd=cwd, stdin=stdin, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env,
        )  # fmt: skip
        self.laptop_processes.append(process)
        return process
