"""Where an experiment runs: a local Dask cluster by default, or a deployed one over mutual TLS.

Any experiment script uses it the same way::

    parser = argparse.ArgumentParser()
    cluster.add_arguments(parser)
    args = parser.parse_args()
    with cluster.connect(args) as (client, where):
        ...

Problems a user can meet (no outputs file, unknown stack, unreachable scheduler, TLS
rejected, too few workers, mismatched versions) raise ClusterError with one line that says
what to do; ``run`` turns it into that line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUTPUTS = Path("outputs.json")
DEPLOY_HINT = "cdktf deploy {stack} --outputs-file outputs.json --outputs-file-include-sensitive-outputs"
COST_OUTPUTS = ("region", "worker_instance_types", "scheduler_instance_type", "scheduler_market")
REQUIRED_OUTPUTS = (
    "scheduler_address",
    "dashboard_url",
    "workers",
    "tls_ca_pem",
    "tls_client_cert_pem",
    "tls_client_key_pem",
)
# What must be identical on the client and every node, or pickled work breaks in odd ways.
MATCHED_PACKAGES = ("python", "dask", "distributed", "sklearn", "numpy", "cloudpickle")


class ClusterError(Exception):
    """A problem the user can fix; the message is one line that says how."""


@dataclass(frozen=True)
class Where:
    """Where the experiment ran, for the summary and the console."""

    kind: str  # "local" or "remote"
    scheduler: str
    dashboard: str | None
    worker_nodes: int  # when the search started
    threads: int
    stack: str | None = None
    # Region, instance types and scheduler market from the stack's outputs, to price the run.
    cost_basis: dict | None = None
    # An adaptive stack's bounds (min, max): worker nodes come and go with the work.
    adaptive: tuple[int, int] | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where to run (default: a local Dask cluster, no cloud)")
    target = group.add_mutually_exclusive_group()
    target.add_argument("--stack", metavar="NAME", help="a deployed stack, read from the outputs file")
    target.add_argument("--scheduler", metavar="ADDRESS", help="a scheduler address such as tls://203.0.113.7:8786")
    group.add_argument(
        "--outputs", metavar="FILE", type=Path, default=DEFAULT_OUTPUTS, help="cdktf outputs (default: %(default)s)"
    )
    group.add_argument("--tls-ca", metavar="FILE", help="CA certificate (with --scheduler)")
    group.add_argument("--tls-cert", metavar="FILE", help="client certificate (with --scheduler)")
    group.add_argument("--tls-key", metavar="FILE", help="client private key (with --scheduler)")
    group.add_argument(
        "--workers", metavar="N", type=int, help="worker nodes to wait for (default: the stack's minimum)"
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=600.0,
        help="how long to wait for the scheduler and the worker nodes (default: %(default)g)",
    )


def keep_private(path: Path) -> None:
    """A file holding the cluster's keys, readable by other users of this machine, is made
    private (with one line saying so), or refused when it is not ours to change."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    try:
        path.chmod(mode & 0o700)
    except PermissionError:
        raise ClusterError(
            f"{path}: holds the cluster's TLS keys and others can read it (mode {mode:04o}); "
            "ask its owner to `chmod 600` it"
        ) from None
    console(f"warning: {path} holds the cluster's TLS keys and others could read it (mode {mode:04o}); made it 0600")


def read_outputs(path: Path, stack: str) -> dict:
    """The outputs of one stack, as written by `cdktf deploy --outputs-file`."""
    hint = DEPLOY_HINT.format(stack=stack)
    # The state beside it holds every key of the cluster: it gets the same care.
    for secret in (path, path.parent / f"terraform.{stack}.tfstate", path.parent / f"terraform.{stack}.tfstate.backup"):
        keep_private(secret)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterError(f"{path}: not found; deploy first with `{hint}`, or pass --outputs FILE") from None
    except json.JSONDecodeError as error:
        raise ClusterError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(document, dict) or stack not in document:
        found = ", ".join(sorted(document)) if isinstance(document, dict) and document else "none"
        raise ClusterError(f"{path}: no stack named {stack!r} (stacks found: {found})")
    outputs = document[stack]
    for key in REQUIRED_OUTPUTS:
        if key not in outputs:
            extra = (
                " (sensitive outputs need --outputs-file-include-sensitive-outputs)" if key.startswith("tls_") else ""
            )
            raise ClusterError(f"{path}: stack {stack!r} has no output {key!r}; redeploy with `{hint}`{extra}")
    return outputs


@contextlib.contextmanager
def private_tls_files(outputs: dict) -> Iterator[dict[str, str]]:
    """The client's TLS material as files only this user can read, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="dask-tls-") as folder:  # created with mode 0700
        paths = {}
        for name, key in (("ca", "tls_ca_pem"), ("cert", "tls_client_cert_pem"), ("key", "tls_client_key_pem")):
            path = Path(folder) / f"{name}.pem"
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(outputs[key])
            paths[name] = str(path)
        yield paths


def security_for(ca: str | None, cert: str | None, key: str | None):
    """Mutual TLS from the given files, or from Dask's own configuration when none are given."""
    from distributed.security import Security

    if not (ca or cert or key):
        security = Security()  # distributed.comm.tls.* from ~/.config/dask or DASK_ environment
        if not security.tls_ca_file:
            raise ClusterError(
                "no TLS files: pass --tls-ca, --tls-cert and --tls-key, or set distributed.comm.tls in Dask's config"
            )
        return security
    missing = [flag for flag, value in (("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)) if not value]
    if missing:
        raise ClusterError(f"{', '.join(missing)}: required with the other TLS options")
    check_tls_files(ca, cert, key)
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)


def check_tls_files(ca: str, cert: str, key: str) -> None:
    """One line naming the flag for a missing, unreadable, empty or wrong PEM file, before
    Dask builds its TLS context from them (and fails with a long traceback)."""
    expected = {"--tls-ca": (ca, "CERTIFICATE"), "--tls-cert": (cert, "CERTIFICATE"), "--tls-key": (key, "PRIVATE KEY")}
    for flag, (value, kind) in expected.items():
        path = Path(value)
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            raise ClusterError(f"{flag}: no such file {value}") from None
        except IsADirectoryError:
            raise ClusterError(f"{flag}: {value} is a directory, not a PEM file") from None
        except PermissionError:
            raise ClusterError(f"{flag}: cannot read {value} (permission denied)") from None
        if not text.strip():
            raise ClusterError(f"{flag}: {value} is empty")
        if f"-----BEGIN {kind}-----" not in text and not (kind == "PRIVATE KEY" and " PRIVATE KEY-----" in text):
            raise ClusterError(f"{flag}: {value} holds no PEM {kind.lower()} (-----BEGIN {kind}-----)")
    try:
        ssl.create_default_context(cafile=ca)
    except ssl.SSLError as error:
        raise ClusterError(f"--tls-ca: {ca} is not a valid CA certificate ({error.reason or error})") from None
    try:
        ssl.create_default_context().load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise ClusterError(
            f"--tls-cert, --tls-key: {cert} and {key} are not a certificate and its own key ({error.reason or error})"
        ) from None


def probe(address: str, security, timeout: float) -> None:
    """Tell an unreachable scheduler from a TLS rejection before Dask retries either for long."""
    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, location = parse_address(address)
    if scheme != "tls":
        raise ClusterError(f"{address}: the cluster only accepts tls:// addresses")
    host, port = parse_host_port(location)
    context: ssl.SSLContext = security.get_connection_args("client")["ssl_context"]
    deadline = time.monotonic() + timeout
    console(f"connecting to {address} (for up to {timeout:g} s)")
    waiting = Heartbeat(f"waiting for the scheduler at {address}", deadline)
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(10.0, timeout)) as raw:
                with context.wrap_socket(raw, server_hostname=host) as tls:
                    tls.recv(0)  # TLS 1.3 servers reject a client certificate after the handshake
                return
        except ssl.SSLError as error:
            raise ClusterError(
                f"{address}: TLS rejected ({error.reason or error}); use the certificates of this cluster's deployment"
            ) from None
        except OSError:
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"{address}: scheduler not reachable within {timeout:g} s; is the cluster up, "
                    "and is your address in allowed_cidrs?"
                ) from None
            waiting.beat()
            time.sleep(1.0)


def worker_nodes(client) -> int:
    """Worker nodes, not processes: a node may run several Dask workers."""
    from distributed.comm.addressing import get_address_host

    return len({get_address_host(address) for address in client.scheduler_info(n_workers=-1)["workers"]})


HEARTBEAT_SECONDS = 10.0


class Heartbeat:
    """Says what the client waits for, with the time left, at least every HEARTBEAT_SECONDS."""

    def __init__(self, what: str, deadline: float) -> None:
        self.what, self.deadline = what, deadline
        self.reset()

    def reset(self) -> None:
        """Something was just said: the next line is due a full interval from now."""
        self.last = time.monotonic()

    def beat(self, detail: str = "") -> None:
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_SECONDS:
            self.last = now
            console(f"  still {self.what}{detail}: {max(0.0, self.deadline - now):.0f} s left (Ctrl-C to stop)")


def wait_for_nodes(client, expected: int, timeout: float, report: Callable[[int, int], None]) -> None:
    deadline = time.monotonic() + timeout
    waiting = Heartbeat(f"waiting for {expected} worker node(s)", deadline)
    seen = -1
    while (count := worker_nodes(client)) < expected:
        if count != seen:
            report(count, expected)
            seen = count
            waiting.reset()
        else:
            waiting.beat(f", {count} joined")
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"only {count} of {expected} worker nodes joined within {timeout:g} s; check the worker "
                "group in the AWS console, or pass --workers/--timeout"
            )
        time.sleep(1.0)
    report(count, expected)


class NodeMeter:
    """Worker nodes over time, from a thread of its own: says when the count changes, and adds
    up node-seconds (what an adaptive cluster's run is billed for)."""

    def __init__(self, client, on_change: Callable[[int, int], object], interval: float = 1.0) -> None:
        self._client, self._on_change, self._interval = client, on_change, interval
        self._stop = threading.Event()
        self.node_seconds = 0.0
        self.peak = 0

    def _sample(self) -> None:
        count, now = worker_nodes(self._client), time.monotonic()
        self.node_seconds += self._count * (now - self._since)
        if count != self._count:
            self._on_change(self._count, count)
        self._count, self._since, self.peak = count, now, max(self.peak, count)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def start(self) -> NodeMeter:
        self._count, self._since = worker_nodes(self._client), time.monotonic()
        self.peak = self._count
        self._thread = threading.Thread(target=self._run, name="node-meter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._sample()

    def __enter__(self) -> NodeMeter:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def version_mismatches(versions: dict) -> list[str]:
    """'package: client X, <where> Y' for every matched package that differs anywhere."""

    def normalized(package: str, version: str | None) -> str | None:
        # Python patch releases pickle alike; minor releases do not.
        return ".".join(version.split(".")[:2]) if package == "python" and version else version

    client = versions["client"]["packages"]
    nodes = {"scheduler": versions["scheduler"]["packages"]}
    nodes.update({address: info["packages"] for address, info in versions["workers"].items()})
    problems = []
    for package in MATCHED_PACKAGES:
        mine = normalized(package, client.get(package))
        theirs = {where: normalized(package, p.get(package)) for where, p in nodes.items()}
        different = {where: v for where, v in theirs.items() if v != mine}
        if different:
            where, version = next(iter(sorted(different.items())))
            more = f" (and {len(different) - 1} more)" if len(different) > 1 else ""
            name = "scikit-learn" if package == "sklearn" else package
            problems.append(f"{name}: client {mine}, {where} {version}{more}")
    return problems


def check_versions(client) -> None:
    problems = version_mismatches(client.get_versions(packages=["sklearn"]))
    if problems:
        raise ClusterError(
            "client and cluster differ: " + "; ".join(problems) + " - install requirements.txt and redeploy"
        )


def stale_code_warning(image_uri: str) -> str | None:
    """A warning when the nodes run another version of experiments/ than this checkout."""
    try:
        from stacks.content import image_content_hash
    except ImportError:  # experiments copied without the stacks package
        return None
    deployed, local = image_uri.rpartition(":")[2].removesuffix("-lab"), image_content_hash()
    if deployed == local:
        return None
    return (
        f"warning: the nodes run image {deployed}, built from other code than this checkout ({local}); "
        "functions from experiments/ run as deployed - run `cdktf deploy` to ship your changes"
    )


def console(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[tuple[object, Where]]:
    """A connected Client and where it runs; local unless --stack or --scheduler is given."""
    if args.stack is None and args.scheduler is None:
        yield from _local()
    elif args.stack is not None:
        outputs = read_outputs(args.outputs, args.stack)
        # `workers` is the minimum the cluster keeps; an adaptive cluster adds nodes as work asks.
        expected = args.workers if args.workers is not None else int(outputs["workers"])
        bounds = (int(outputs["min_workers"]), int(outputs["max_workers"])) if "max_workers" in outputs else None
        adaptive = bounds if bounds and bounds[0] != bounds[1] else None
        if warning := stale_code_warning(outputs.get("image_uri", "")):
            console(warning)
        with private_tls_files(outputs) as tls:
            security = security_for(tls["ca"], tls["cert"], tls["key"])
            # Stacks deployed before the cost outputs existed still run; they are just not priced.
            cost_basis = {k: outputs[k] for k in COST_OUTPUTS} if all(k in outputs for k in COST_OUTPUTS) else None
            yield from _remote(
                outputs["scheduler_address"], security, expected, args.timeout, args.stack, outputs["dashboard_url"],
                cost_basis, adaptive,
            )  # fmt: skip
    else:
        security = security_for(args.tls_ca, args.tls_cert, args.tls_key)
        yield from _remote(args.scheduler, security, args.workers or 1, args.timeout, None, None, None, None)


def _local() -> Iterator[tuple[object, Where]]:
    from distributed import Client, LocalCluster

    # One process with a thread per core: scikit-learn's compiled estimators release the GIL,
    # so threads run fits in parallel without starting and feeding worker processes.
    # Every listening socket stays on loopback: nobody else on the network reaches a laptop's
    # cluster, which would run any code sent to it.
    threads = os.cpu_count() or 1
    loopback = "127.0.0.1:0"
    with (
        LocalCluster(
            processes=False,
            n_workers=1,
            threads_per_worker=threads,
            dashboard_address=loopback,
            worker_dashboard_address=loopback,
        ) as local,
        Client(local) as client,
    ):
        # Dask's own link names the machine's address, not the loopback one it listens on.
        dashboard = f"http://127.0.0.1:{client.scheduler_info()['services']['dashboard']}/status"
        _startup_over()
        yield client, Where("local", local.scheduler_address, dashboard, 1, threads)


def _remote(
    address: str,
    security,
    expected: int,
    timeout: float,
    stack: str | None,
    dashboard: str | None,
    cost_basis: dict | None,
    adaptive: tuple[int, int] | None,
) -> Iterator[tuple[object, Where]]:
    from distributed import Client

    from experiments.tunnel import local_link

    probe(address, security, timeout)
    with Client(address, security=security, timeout=f"{max(timeout, 10):g}s") as client:
        if adaptive:
            console(
                f"connected to {address}; an adaptive cluster of {adaptive[0]} to {adaptive[1]} worker nodes: "
                "nodes join as the search asks for them and leave when idle"
            )
        else:
            console(f"connected to {address}; waiting for {expected} worker node(s)")
        if expected:
            wait_for_nodes(client, expected, timeout, lambda n, of: console(f"  worker nodes: {n}/{of}"))
        check_versions(client)
        info = client.scheduler_info(n_workers=-1)
        threads = sum(w["nthreads"] for w in info["workers"].values())
        # A stack's dashboard is behind its TLS gateway: the browser gets a local forwarder.
        files = (security.tls_ca_file, security.tls_client_cert, security.tls_client_key)
        link = contextlib.nullcontext(client.dashboard_link) if dashboard is None else local_link(dashboard, *files)
        with link as dashboard:
            _startup_over()
            yield (
                client,
                Where("remote", address, dashboard, worker_nodes(client), threads, stack, cost_basis, adaptive),
            )


def _startup_over() -> None:
    """Re-enable the garbage collector that `run` turned off for the startup, if it did.

    What the startup loaded (modules, the cluster) lives until exit: frozen, later collections
    skip it rather than scan it again and again.
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def run(main: Callable[[], int | None]) -> None:
    """Run an experiment's main: user-fixable problems end as one line and exit status 2.

    The startup (imports, starting or reaching the cluster) runs without the garbage collector,
    which would only scan the million objects that imports create, again and again: ~0.3 s on
    two cores. `connect` turns it back on. The same holds at exit, where the interpreter's last
    collections would scan it all once more (~0.5 s): the heap is frozen first.
    """
    gc.disable()
    try:
        status = main() or 0
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    finally:
        gc.freeze()
        gc.enable()
    sys.exit(status)
