"""Which user-data templates a node runs and the values the stack renders them with.

The templates live in userdata/ and are rendered by Terraform's templatefile at deploy time,
so Terraform values (the scheduler's private IP) fill them. Nothing secret is ever passed:
nodes fetch their TLS keys from SSM with their instance role.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from stacks.config import (
    DASHBOARD_LOCAL_PORT,
    DASHBOARD_PORT,
    JUPYTER_LOCAL_PORT,
    JUPYTER_PORT,
    MIN_WORKERS_TAG,
    SCHEDULER_PORT,
    ClusterSettings,
)

# The cluster's state parameter (ClusterSettings.state_parameter): new until a scheduler starts
# the cluster; then its start (epoch seconds) and the image the scheduler runs, space-separated;
# ended once the cluster is over.
STATE_NEW, STATE_ENDED = "new", "ended"
JUPYTER_TOKEN_PARAMETER = "jupyter.token"  # noqa: S105 (an SSM parameter name, not a token)

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "userdata"
# The node's TLS folder, the one place it is named: the templates and every node command get it
# from here. Mounted read-only at the same path in the containers.
TLS_DIR = "/etc/dask/tls"
CONTAINER_UID = 10001  # the image's non-root user; it must be able to read its TLS key
# How long a node keeps retrying the image pull or the scheduler before it gives up and
# powers itself off (which terminates it): a broken cluster must not bill for hours.
MAX_WAIT_SECONDS = 900
# Workers exit when their scheduler has been unreachable this long; their node then stops.
DEATH_TIMEOUT_SECONDS = 300
# How long a lost scheduler's replacement may take (its group finds spot capacity, the instance
# boots and pulls the image, the instance before it lets go of the address): worker nodes wait
# this long for it, and a replacement this long for the address.
REPLACEMENT_WAIT_SECONDS = 1200
# The worker autoscaler's pace: a round every few seconds; nodes go only after the work has
# wanted fewer of them for a minute (EC2 bills at least a minute, a node takes minutes to boot).
AUTOSCALER_INTERVAL_SECONDS = 5
SCALE_DOWN_AFTER_SECONDS = 60
# How often the scheduler node meters what the cluster has spent (image/dask_node/cost_cap.py):
# the cap may be passed by at most this long at the cluster's hourly rate.
COST_METER_SECONDS = 60


def template_files(role: str) -> list[str]:
    """The template files, in order, that make up one node role's user-data."""
    return ["common.sh.tftpl", f"{role}.sh.tftpl", "main.sh.tftpl"]


def worker_group_name(settings: ClusterSettings) -> str:
    # A literal name rather than a reference: the scheduler's user-data needs it, and the
    # group depends on the scheduler's address, so a reference would be a cycle.
    return f"{settings.resource_prefix}-workers"


def scheduler_group_name(settings: ClusterSettings) -> str:
    return f"{settings.resource_prefix}-scheduler"


def tls_options(role: str, tls_dir: str = TLS_DIR) -> list[str]:
    return [
        f"--tls-ca-file={tls_dir}/ca.pem",
        f"--tls-cert={tls_dir}/{role}.pem",
        f"--tls-key={tls_dir}/{role}.key",
    ]


def scheduler_command(
    settings: ClusterSettings,
    *,
    tls_dir: str = TLS_DIR,
    host: str = "",
    port: int = SCHEDULER_PORT,
    dashboard_port: int = DASHBOARD_LOCAL_PORT,
    idle_seconds: float | None = None,
    boot_grace_seconds: float | None = None,
    metered: bool = True,
    cap_in_template: bool = False,
) -> list[str]:
    """The `dask scheduler` command line the scheduler container runs (tests run it on loopback).

    The dashboard listens on loopback only: the TLS gateway is its only way out. The cluster's
    idle rule is dask_node.idle_shutdown's (image/dask_node/) (tasks, clients, JupyterLab, boot), not Dask's
    `--idle-timeout` (tasks only). The first worker is awaited as long as a worker node retries
    its bootstrap steps. The cost cap (dask_node.cost_cap) asks AWS what the cluster runs:
    `metered=False` leaves it out (a scheduler on loopback without AWS). The cap itself is a
    deploy-time variable: `cap_in_template` leaves `--cost-cap-usd` to the template, which adds it.
    """
    if idle_seconds is None:
        idle_seconds = settings.idle_timeout_minutes * 60
    if boot_grace_seconds is None:
        boot_grace_seconds = MAX_WAIT_SECONDS
    return [
        "dask", "scheduler",
        "--protocol=tls",
        *([f"--host={host}"] if host else []),
        f"--port={port}",
        f"--dashboard-address=127.0.0.1:{dashboard_port}",
        *tls_options("scheduler", tls_dir),
        "--preload=dask_node.trust",
        "--preload=dask_node.idle_shutdown",
        f"--cluster-idle-seconds={idle_seconds:g}",
        f"--cluster-boot-grace-seconds={boot_grace_seconds:g}",
        *([f"--jupyter-port={JUPYTER_LOCAL_PORT}"] if settings.jupyter else []),
        *(cost_cap_options(settings, with_cap=not cap_in_template) if metered else []),
    ]  # fmt: skip


def cost_cap_options(settings: ClusterSettings, *, with_cap: bool = True) -> list[str]:
    """The cost cap's options (dask_node.idle_shutdown starts it): the cap, where to meter and
    where to keep the spend."""
    return [
        *([f"--cost-cap-usd={settings.max_cost_usd:g}"] if with_cap else []),
        f"--cost-cluster={settings.name}",
        f"--cost-region={settings.region}",
        f"--cost-state-parameter={settings.state_parameter}",
        f"--cost-spend-parameter={settings.spend_parameter}",
        f"--cost-volume-gb={settings.root_volume_gb}",
        f"--cost-interval={COST_METER_SECONDS:g}",
    ]


def gateway_command(
    settings: ClusterSettings,
    *,
    tls_dir: str = TLS_DIR,
    listen_host: str = "",
    ports: dict[int, int] | None = None,
) -> list[str]:
    """The TLS gateway in front of the dashboard (and JupyterLab): public port to loopback port."""
    if ports is None:
        ports = {
            DASHBOARD_PORT: DASHBOARD_LOCAL_PORT,
            **({JUPYTER_PORT: JUPYTER_LOCAL_PORT} if settings.jupyter else {}),
        }
    return [
        "python", "-m", "dask_node.gateway",
        f"--tls-dir={tls_dir}",
        *(f"{listen_host}:{public}=127.0.0.1:{local}" for public, local in ports.items()),
    ]  # fmt: skip


def autoscaler_command(
    settings: ClusterSettings,
    *,
    tls_dir: str = TLS_DIR,
    scheduler: str = f"tls://127.0.0.1:{SCHEDULER_PORT}",
) -> list[str]:
    """The worker autoscaler's command line on the scheduler node; the node adds --region."""
    return [
        "python", "-m", "dask_node.worker_autoscaler",
        f"--scheduler={scheduler}",
        f"--group={worker_group_name(settings)}",
        f"--min-workers-tag={MIN_WORKERS_TAG}",
        f"--tls-dir={tls_dir}",
        f"--interval={AUTOSCALER_INTERVAL_SECONDS:g}",
        f"--scale-down-after={SCALE_DOWN_AFTER_SECONDS:g}",
    ]  # fmt: skip


def spot_watcher_command(settings: ClusterSettings, role: str, *, tls_dir: str = TLS_DIR) -> list[str]:
    """The spot watcher's command line. A worker's retires its workers through the scheduler (its
    template adds --scheduler, a Terraform value); the scheduler's hands over to a new scheduler
    instance through its group, without keys (its template adds --region)."""
    command = ["python", "-m", "dask_node.spot_watcher", f"--role={role}"]
    if role == "worker":
        return [*command, f"--tls-dir={tls_dir}"]
    return [*command, f"--group={scheduler_group_name(settings)}"]


def worker_options(settings: ClusterSettings, *, tls_dir: str = TLS_DIR) -> list[str]:
    """Options of the `dask worker` command (nanny included) the worker container runs."""
    shape = [f"--nworkers={settings.worker_processes}"]
    if settings.worker_threads != "auto":
        shape.append(f"--nthreads={settings.worker_threads}")
    return [
        "--nanny",
        *shape,
        "--memory-limit=auto",
        f"--death-timeout={DEATH_TIMEOUT_SECONDS}",
        *tls_options("worker", tls_dir),
    ]


def _common(settings: ClusterSettings, role: str, image_uri: str, registry: str) -> dict[str, object]:
    return {
        "role": role,
        "cluster_name": settings.name,
        "image_uri": image_uri,
        "registry": registry,
        "ssm_prefix": settings.secret_path(role),
        "container_uid": CONTAINER_UID,
        "max_wait_seconds": MAX_WAIT_SECONDS,
        "replacement_wait_seconds": REPLACEMENT_WAIT_SECONDS,
        "max_lifetime_minutes": settings.max_lifetime_hours * 60,
        "worker_group_name": worker_group_name(settings),
        "scheduler_group_name": scheduler_group_name(settings),
        "state_parameter": settings.state_parameter,
        "state_ended": STATE_ENDED,
        "scheduler_port": SCHEDULER_PORT,
        "tls_dir": TLS_DIR,
        "spot_watcher_command": shlex.join(spot_watcher_command(settings, role)),
    }


def scheduler_variables(
    settings: ClusterSettings,
    image_uri: str,
    registry: str,
    *,
    interface_id: str,
    address: str,
    max_cost_usd: str,
) -> dict[str, object]:
    """`interface_id`, `address` and `max_cost_usd` are Terraform values: the scheduler's network
    interface, which each scheduler instance attaches, its private address, and the cost cap
    (the deploy-time variable, which the template adds to the scheduler's command)."""
    return {
        **_common(settings, "scheduler", image_uri, registry),
        "scheduler_interface_id": interface_id,
        "scheduler_host": address,
        "dashboard_port": DASHBOARD_PORT,
        "idle_seconds": settings.idle_timeout_minutes * 60,
        "scheduler_spot": settings.scheduler_market == "spot",
        "scheduler_command": shlex.join(scheduler_command(settings, cap_in_template=True)),
        "max_cost_usd": max_cost_usd,
        "gateway_command": shlex.join(gateway_command(settings)),
        "autoscaler_command": shlex.join(autoscaler_command(settings)),
        "jupyter": settings.jupyter,
        "jupyter_local_port": JUPYTER_LOCAL_PORT,
        "jupyter_token_parameter": settings.secret_parameter("scheduler", JUPYTER_TOKEN_PARAMETER),
    }


def worker_variables(
    settings: ClusterSettings, image_uri: str, registry: str, scheduler_private_ip: str
) -> dict[str, object]:
    # The template builds the scheduler's address from scheduler_host, a Terraform value.
    return {
        **_common(settings, "worker", image_uri, registry),
        "scheduler_host": scheduler_private_ip,
        "worker_options": shlex.join(worker_options(settings)),
    }
