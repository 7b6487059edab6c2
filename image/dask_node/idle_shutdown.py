"""Ends the cluster when nobody is using it: a scheduler preload, in place of `--idle-timeout`.

Dask's own idle timeout counts only tasks. A user who connects late, a slow image pull, or a
notebook session between searches would find the cluster gone. Here the cluster is in use while
any of these holds, and it closes after `--cluster-idle-seconds` with none of them:

- tasks: Dask runs, queues or waits on work (Dask's own rule, `Scheduler.idle_since`);
- a client is connected: an experiment script or a notebook holding a `Client` (not the
  clients tasks open on workers);
- JupyterLab is up: it stops itself after the same idle time with no kernel or browser
  activity (the scheduler node starts it so), so a running JupyterLab means recent use;
- boot: no worker has joined yet and the scheduler started less than
  `--cluster-boot-grace-seconds` ago (nodes pull the image and fetch keys first). A cluster
  whose workers never come still ends, once the grace is over.

When the scheduler closes, its node scales the worker group to 0 and powers off. It also closes
at the cluster's dollar cap, which this preload starts (dask_node.cost_cap) when given one.

    dask scheduler ... --preload dask_node.idle_shutdown --cluster-idle-seconds 1800 \
        --cluster-boot-grace-seconds 1200 [--jupyter-port 8889] [--cost-cap-usd 20 --cost-cluster dask \
        --cost-region us-east-1 --cost-state-parameter /dask-dask/cluster/state \
        --cost-spend-parameter /dask-dask/cluster/spend --cost-volume-gb 30 --cost-interval 60]
"""

from __future__ import annotations

import logging
import socket
import time

import click
from tornado.ioloop import PeriodicCallback

from dask_node import cost_cap

log = logging.getLogger("distributed.scheduler.idle-shutdown")
CHECK_SECONDS = 1.0
# Clients that are not users: the scheduler's own, and those tasks open on workers (`get_client`),
# which stay connected as long as their worker lives. dask_node.trust refuses the latter on the
# nodes; a scheduler run without it (a test's, say) may still have them.
OWN_CLIENT = "fire-and-forget"
WORKER_CLIENT_PREFIX = "Client-worker-"


class IdleShutdown:
    def __init__(self, scheduler, idle_seconds: float, boot_grace_seconds: float, jupyter_port: int | None,
                 clock=time.monotonic) -> None:  # fmt: skip
        self.scheduler = scheduler
        self.idle_seconds = idle_seconds
        self.boot_grace_seconds = boot_grace_seconds
        self.jupyter_port = jupyter_port
        self.clock = clock
        self.started = self.last_use = clock()
        self.worker_joined = False
        self.closing = False
        self.announced_idle = False

    def in_use(self) -> str | None:
        """Why the cluster is in use right now, or None."""
        scheduler = self.scheduler
        self.worker_joined = self.worker_joined or bool(scheduler.workers)
        if scheduler.idle_since is None:
            return "tasks are running"
        clients = [c for c in scheduler.clients if c != OWN_CLIENT and not c.startswith(WORKER_CLIENT_PREFIX)]
        if clients:
            return f"{len(clients)} client(s) connected"
        if self.jupyter_port and _listening(self.jupyter_port):
            return "JupyterLab is running"
        if not self.worker_joined and self.clock() - self.started < self.boot_grace_seconds:
            return "waiting for the first worker"
        return None

    def check(self) -> None:
        if self.closing:
            return
        now = self.clock()
        reason = self.in_use()
        if reason:
            self.last_use, self.announced_idle = now, False
            return
        if not self.announced_idle:
            log.info("cluster idle (no tasks, no client, no notebook): closing in %.0f s", self.idle_seconds)
            self.announced_idle = True
        if now - self.last_use >= self.idle_seconds:
            self.closing = True
            log.info("cluster idle for %.0f s: closing the scheduler", now - self.last_use)
            self.scheduler._ongoing_background_tasks.call_soon(self.scheduler.close, reason="cluster-idle")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@click.command()
@click.option("--cluster-idle-seconds", type=click.FloatRange(min=1), required=True)
@click.option("--cluster-boot-grace-seconds", type=click.FloatRange(min=0), required=True)
@click.option("--jupyter-port", type=int, default=None)
# The dollar cap (dask_node.cost_cap), started here: Dask allows one preload with options.
@click.option("--cost-cap-usd", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--cost-cluster")
@click.option("--cost-region")
@click.option("--cost-state-parameter")
@click.option("--cost-spend-parameter")
@click.option("--cost-volume-gb", type=click.IntRange(min=0))
@click.option("--cost-interval", type=click.FloatRange(min=0.1), default=60.0)
def dask_setup(scheduler, cluster_idle_seconds: float, cluster_boot_grace_seconds: float, jupyter_port: int | None,
               cost_cap_usd: float | None, cost_cluster: str | None, cost_region: str | None,
               cost_state_parameter: str | None, cost_spend_parameter: str | None, cost_volume_gb: int | None,
               cost_interval: float):  # fmt: skip
    monitor = IdleShutdown(scheduler, cluster_idle_seconds, cluster_boot_grace_seconds, jupyter_port)
    scheduler.periodic_callbacks["cluster-idle-shutdown"] = PeriodicCallback(monitor.check, CHECK_SECONDS * 1000)
    log.info(
        "the cluster closes after %.0f s without tasks, clients or notebooks (first worker awaited up to %.0f s)",
        cluster_idle_seconds, cluster_boot_grace_seconds,
    )  # fmt: skip
    if cost_cap_usd is not None:
        where = (cost_cluster, cost_region, cost_state_parameter, cost_spend_parameter, cost_volume_gb)
        if None in where:
            raise click.UsageError("--cost-cap-usd needs --cost-cluster, --cost-region, --cost-state-parameter, "
                                   "--cost-spend-parameter and --cost-volume-gb")  # fmt: skip
        cost_cap.start(
            scheduler, cap_usd=cost_cap_usd, cluster=cost_cluster, region=cost_region,
            state_parameter=cost_state_parameter, spend_parameter=cost_spend_parameter, volume_gb=cost_volume_gb,
            interval=cost_interval,
        )  # fmt: skip
