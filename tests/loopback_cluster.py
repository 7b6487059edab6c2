"""A real Dask cluster on loopback, started with the very command lines the nodes run.

Certificates are made here the way the stack makes them (one CA; scheduler and worker
certificates for both TLS roles, the client's for client authentication only), and the
dashboard sits behind the same TLS gateway. Each worker gets its own 127.x address, so that it
counts as a node of its own.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stacks import userdata
from stacks.config import parse_cluster
from stacks.content import PROJECT_ROOT as ROOT
from stacks.content import image_content_hash

DASK = str(Path(sys.executable).parent / "dask")


def _name(common_name: str, role: str | None = None) -> x509.Name:
    unit = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role)] if role else []
    return x509.Name([*unit, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


# As stacks/tls.py: nodes serve and connect, the client only connects.
USES = {
    "scheduler": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "worker": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
}


def make_tls(folder: Path) -> dict[str, str]:
    """CA, scheduler, worker and client material in `folder`; returns the PEM texts by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    texts = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM).decode()}
    for role in ("scheduler", "worker", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(_name(f"test {role}", role)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(USES[role]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        texts[f"{role}.pem"] = cert.public_bytes(serialization.Encoding.PEM).decode()
        texts[f"{role}.key"] = _pem_key(key)
    for name, text in texts.items():
        path = folder / name
        path.write_text(text)
        path.chmod(0o600)
    return texts


def node_environment() -> dict[str, str]:
    """This environment with PYTHONPATH as in the image (/opt/dask): the project's code and the
    node package importable by name."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "image")))}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


@dataclass
class LoopbackCluster:
    tls_dir: Path
    tls: dict[str, str]
    port: int
    dashboard_port: int  # Dask's own, on loopback as on the node
    gateway_port: int  # the TLS gateway in front of it
    logs: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        # A session of its own, so that a test can kill a whole node (nanny and worker) at once.
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=node_environment()
        )
        self.processes[name] = process
        return process

    def start_scheduler(self, idle_seconds: float | None = None, boot_grace_seconds: float | None = None,
                        **settings) -> None:  # fmt: skip
        cluster = parse_cluster("loopback", {"allowed_cidrs": ["127.0.0.0/8"], **settings})
        command = userdata.scheduler_command(
            cluster, tls_dir=str(self.tls_dir), host="127.0.0.1", port=self.port, dashboard_port=self.dashboard_port,
            idle_seconds=idle_seconds, boot_grace_seconds=boot_grace_seconds,
            metered=False,  # no AWS on loopback: the cost cap's meter is tested on moto and the emulated deploy
        )  # fmt: skip
        self._start("scheduler", [DASK, *command[1:]])
        gateway = userdata.gateway_command(
            cluster, tls_dir=str(self.tls_dir), listen_host="127.0.0.1", ports={self.gateway_port: self.dashboard_port}
        )
        self._start("gateway", [sys.executable, *gateway[1:]])
        wait_for_port("127.0.0.1", self.port)
        wait_for_port("127.0.0.1", self.gateway_port)

    def start_worker(self, host: str, **settings) -> None:
        cluster = parse_cluster(
            "loopback", {"allowed_cidrs": ["127.0.0.0/8"], "worker_processes": 1, "worker_threads": 1, **settings}
        )
        options = userdata.worker_options(cluster, tls_dir=str(self.tls_dir))
        self._start(f"worker-{host}", [DASK, "worker", self.address, *options, f"--host={host}"])

    def client(self, wait_for_nodes: int = 0):
        """A Client over mutual TLS with the client certificate, as an experiment connects."""
        from distributed import Client

        from spotsearch.cluster.tls_files import security_for
        from spotsearch.cluster.waiting import wait_for_nodes as wait

        tls = [str(self.tls_dir / name) for name in ("ca.pem", "client.pem", "client.key")]
        client = Client(self.address, security=security_for(*tls), timeout="120s")
        if wait_for_nodes:
            wait(client, wait_for_nodes, 180, lambda *_: None)
        return client

    def kill(self, name: str) -> None:
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait(timeout=30)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    def outputs_file(self, path: Path, stack: str = "loopback", workers: int = 2) -> Path:
        """The cluster as `cdktf deploy --outputs-file ... --outputs-file-include-sensitive-outputs` writes it."""
        outputs = {
            "scheduler_address": self.address,
            "scheduler_private_address": self.address,
            "dashboard_url": f"https://127.0.0.1:{self.gateway_port}/status",
            "image_uri": f"123456789012.dkr.ecr.us-east-1.amazonaws.com/dask-loopback:{image_content_hash()}",
            "ecr_repository_url": "123456789012.dkr.ecr.us-east-1.amazonaws.com/dask-loopback",
            "worker_group_name": "dask-loopback-workers",
            "workers": workers,
            "min_workers": workers,
            "max_workers": workers,
            "region": "us-east-1",
            "worker_instance_types": ["c6i.xlarge", "c5.xlarge"],
            "scheduler_instance_types": ["m6i.large", "m5.large"],
            "scheduler_market": "spot",
            "estimated_hourly_cost_usd": "0.350",
            "tls_ca_pem": self.tls["ca.pem"],
            "tls_client_cert_pem": self.tls["client.pem"],
            "tls_client_key_pem": self.tls["client.key"],
        }
        path.write_text(json.dumps({stack: outputs}, indent=2))
        path.chmod(0o600)  # as the cdktf wrapper's umask writes it
        return path


def start(folder: Path, workers: tuple[str, ...] = ("127.0.0.2", "127.0.0.3"), **scheduler_settings) -> LoopbackCluster:
    tls_dir = folder / "tls"
    cluster = LoopbackCluster(tls_dir, make_tls(tls_dir), free_port(), free_port(), free_port(), folder)
    cluster.start_scheduler(**scheduler_settings)
    for host in workers:
        cluster.start_worker(host)
    return cluster
