"""The cluster a search runs on: a local one by default, a deployed stack's, or any Dask scheduler.

`Cluster` is the face users see (an object `distributed.Client` accepts, as dask's own clusters);
`connect` is what it runs: a connected Client and where it runs.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from spotsearch.cluster.messages import ClusterError, WithoutMessage, console
from spotsearch.cluster.outputs import COST_OUTPUTS, DEFAULT_OUTPUTS, read_outputs
from spotsearch.cluster.spend import ended_at_cap
from spotsearch.cluster.tls_files import private_tls_files, security_for
from spotsearch.cluster.versions import check_versions, stale_code_warning
from spotsearch.cluster.waiting import probe, wait_for_nodes, worker_nodes
from spotsearch.spawn import glibc_allocator_defaults, main_script_hidden

DEFAULT_TIMEOUT = 600.0


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
    # A stack's `data_sources`: the S3 locations its workers may read (None: not known, any cluster),
    # and its bucket for the laptop's data (stacks/uploads.py).
    data_sources: tuple[str, ...] | None = None
    uploads_bucket: str | None = None


class Cluster:
    """A Dask cluster to fit searches on, connected and checked: this machine's (the default), a
    deployed stack's, or any Dask scheduler's. `distributed.Client(cluster)` connects to it, with
    its TLS settings, and `client.dashboard_link` is a link that works in this machine's browser.

    Parameters
    ----------
    stack : the name of a deployed stack (`cdktf deploy`), read from `outputs`.
    scheduler : the tls:// address of any Dask scheduler, with `tls_ca`, `tls_cert` and
        `tls_key` (or Dask's own TLS configuration).
    outputs : the outputs file `cdktf deploy --outputs-file` wrote (default: outputs.json in
        the current folder).
    workers : the worker nodes to wait for (default: the stack's minimum).
    timeout : seconds to wait for the scheduler and the worker nodes.
    processes : for the local cluster, this many worker processes of one thread each, rather
        than threads in this process (the default): faster for fits that hold Python's GIL (text
        pipelines, transformers of your own), slower to start (see docs/speed.md).

    Neither `stack` nor `scheduler`: a local cluster, on loopback only. The connection is made,
    and the cluster checked (reachable, TLS accepted, the same package versions), when the object
    is made; `close()`, or the end of a `with` block, ends what it opened (never the deployed
    cluster itself, which ends itself when idle).

    Example
    -------
    >>> from distributed import Client
    >>> from spotsearch import Cluster
    >>> with Cluster() as cluster, Client(cluster) as client:  # Cluster(stack="dask"): a deployed one
    ...     client.dashboard_link.startswith("http://127.0.0.1:")
    True
    """

    def __init__(
        self,
        *,
        stack: str | None = None,
        scheduler: str | None = None,
        outputs: str | os.PathLike = DEFAULT_OUTPUTS,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        workers: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        processes: int | None = None,
    ) -> None:
        from distributed.core import Status

        self._opened = ExitStack()
        with self._opened:
            connection = connect(
                stack=stack, scheduler=scheduler, outputs=Path(outputs), tls_ca=tls_ca, tls_cert=tls_cert,
                tls_key=tls_key, workers=workers, timeout=timeout, processes=processes,
            )  # fmt: skip
            self._client, self.where = self._opened.enter_context(connection)
            self._opened = self._opened.pop_all()
        self.status = Status.running

    @property
    def scheduler_address(self) -> str:
        return self.where.scheduler

    @property
    def security(self):
        """The TLS settings of the connection (None for the local cluster)."""
        return self._client.security if self.where.kind == "remote" else None

    @property
    def dashboard_link(self) -> str | None:
        return self.where.dashboard

    def get_client(self):
        """A Client of this cluster (the one it checked the cluster with)."""
        return self._client

    def close(self) -> None:
        from distributed.core import Status

        if self.status == Status.running:
            self.status = Status.closing
            try:
                self._opened.close()
            finally:
                self.status = Status.closed

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __await__(self):  # Client awaits a cluster to start it: this one started when it was made
        async def started() -> Cluster:
            return self

        return started().__await__()

    def __repr__(self) -> str:
        what = f"stack {self.where.stack!r}" if self.where.stack else self.where.kind
        return f"<Cluster: {what}, scheduler {self.scheduler_address}, dashboard {self.dashboard_link}>"


@contextlib.contextmanager
def connect(
    *,
    stack: str | None = None,
    scheduler: str | None = None,
    outputs: Path = DEFAULT_OUTPUTS,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    processes: int | None = None,
) -> Iterator[tuple[object, Where]]:
    """A connected Client and where it runs.

    - neither `stack` nor `scheduler`: a local cluster on loopback (threads in this process, or
      `processes` worker processes of one thread);
    - `stack`: the deployed stack of that name, from the `outputs` file; waits up to `timeout`
      seconds for the scheduler and for `workers` worker nodes (default: the stack's minimum);
    - `scheduler`: a tls:// address, with the TLS files (or Dask's own TLS configuration).
    """
    if processes is not None and (stack is not None or scheduler is not None):
        raise ClusterError(
            "processes (--processes): only for the local cluster; a deployed one has worker_processes in cdktf.json"
        )
    if stack is None and scheduler is None:
        yield from _local(processes)
    elif stack is not None:
        found = read_outputs(outputs, stack)
        # `workers` is the minimum the cluster keeps; an adaptive cluster adds nodes as work asks.
        expected = workers if workers is not None else int(found["workers"])
        bounds = (int(found["min_workers"]), int(found["max_workers"])) if "max_workers" in found else None
        if warning := stale_code_warning(found.get("image_uri", "")):
            console(warning)
        with private_tls_files(found) as tls:
            # Stacks deployed before the cost outputs existed still run; they are just not priced.
            cost_basis = {k: found[k] for k in COST_OUTPUTS} if all(k in found for k in COST_OUTPUTS) else None
            yield from _remote(
                found["scheduler_address"],
                security_for(tls["ca"], tls["cert"], tls["key"]),
                expected=expected,
                timeout=timeout,
                stack=stack,
                dashboard=found["dashboard_url"],
                cost_basis=cost_basis,
                adaptive=bounds if bounds and bounds[0] != bounds[1] else None,
                ended=lambda: ended_at_cap(found, stack),
                data_sources=tuple(found.get("data_sources", [])),  # none before the setting existed
                uploads_bucket=found.get("uploads_bucket"),
            )
    else:
        security = security_for(tls_ca, tls_cert, tls_key)
        yield from _remote(scheduler, security, expected=workers or 1, timeout=timeout)


def _local(processes: int | None = None) -> Iterator[tuple[object, Where]]:
    from distributed import Client, LocalCluster

    # By default one process with a thread per core: scikit-learn's compiled estimators release
    # the GIL, so threads run fits in parallel without starting and feeding worker processes.
    # Fits that hold the GIL (tokenizing text, Python code of the user's) run one at a time
    # there: `processes` runs them in worker processes of one thread each.
    # Every listening socket stays on loopback: nobody else on the network reaches a laptop's
    # cluster, which would run any code sent to it.
    threads = processes or os.cpu_count() or 1
    loopback = "127.0.0.1:0"
    layout = (
        {"processes": True, "n_workers": processes, "threads_per_worker": 1, "host": "127.0.0.1"}
        if processes
        else {"processes": False, "n_workers": 1, "threads_per_worker": threads}
    )
    with _quiet_heartbeat_at_close():
        # while worker processes start: they must not run the script again, and keep glibc's own
        # allocator settings
        with main_script_hidden(), glibc_allocator_defaults():
            local = LocalCluster(dashboard_address=loopback, worker_dashboard_address=loopback, **layout)
        with local, Client(local) as client:
            # Dask's own link names the machine's address, not the loopback one it listens on.
            dashboard = f"http://127.0.0.1:{client.scheduler_info()['services']['dashboard']}/status"
            startup_over()
            yield client, Where("local", local.scheduler_address, dashboard, 1, threads)


@contextlib.contextmanager
def _quiet_heartbeat_at_close() -> Iterator[None]:
    """The local worker shares this process with its scheduler, so its heartbeat can only fail
    when the two close together at the end of a run: distributed then logs a traceback (seen on a
    busy machine) under a run that went well. That one message is left out."""
    quiet = WithoutMessage("Failed to communicate with scheduler during heartbeat")
    logger = logging.getLogger("distributed.worker")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _remote(
    address: str,
    security,
    *,
    expected: int,
    timeout: float,
    stack: str | None = None,
    dashboard: str | None = None,
    cost_basis: dict | None = None,
    adaptive: tuple[int, int] | None = None,
    ended: Callable[[], str | None] | None = None,
    data_sources: tuple[str, ...] | None = None,
    uploads_bucket: str | None = None,
) -> Iterator[tuple[object, Where]]:
    from distributed import Client

    from spotsearch.cluster.forwarder import local_link

    probe(address, security, timeout, stack=stack, ended=ended)
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
        with link as dashboard_link:
            startup_over()
            where = Where("remote", address, dashboard_link, worker_nodes(client), threads, stack, cost_basis)
            yield client, replace(where, adaptive=adaptive, data_sources=data_sources, uploads_bucket=uploads_bucket)


def startup_over() -> None:
    """Re-enable the garbage collector that `cli.run` turned off for the startup, if it did.

    What the startup loaded (modules, the cluster) lives until exit: frozen, later collections
    skip it rather than scan it again and again.
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
