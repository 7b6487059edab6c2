"""Cluster settings: read from cdktf.json's ``context.clusters``, validated, frozen.

Pure Python on purpose: validating here costs nothing, while a bad value that reaches jsii
or AWS surfaces as a traceback or as an error after resources were created.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from stacks.checks import (
    SettingsError,
    check_spot_price,
    cidrs,
    cost_cap,
    fail,
    instance_types,
    known_regions,
    positive_int,
    root_volume,
    shown,
    string_list,
    true_or_false,
    unique,
    workers_shape,
)
from stacks.data_sources import data_sources

CONFIG_FILE = "cdktf.json"
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
JUPYTER_PORT = 8888
# On the scheduler node the dashboard and JupyterLab listen on loopback only, on these ports;
# the TLS gateway (image/dask_node/gateway.py) serves them on the two above.
DASHBOARD_LOCAL_PORT = 8788
JUPYTER_LOCAL_PORT = 8889
NODE_ROLES = ("scheduler", "worker")

# A comfortable spread of x86_64 types with 4 vCPUs: several interchangeable pools give
# price-capacity-optimized room to avoid interruptions.
DEFAULT_WORKER_TYPES = ("c6i.xlarge", "c6a.xlarge", "c5.xlarge", "c5a.xlarge", "m6i.xlarge", "m6a.xlarge")
# The scheduler's group of one picks among these too: a replacement finds spot capacity in
# some pool even when the one it ran in was reclaimed. 2 vCPUs and 8 GiB each.
DEFAULT_SCHEDULER_TYPES = ("m6i.large", "m6a.large", "m5.large", "m5a.large", "m7i.large")

# Lowercase words joined by single hyphens: the name ends up in ECR's repository name
# (dask-<name>), which allows no trailing or doubled separator, and in IAM and EC2 names.
NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
NAME_MAX = 20
SUBNET_RE = re.compile(r"^subnet-([0-9a-f]{8}|[0-9a-f]{17})$")
# The worker group's tag that tells the scheduler's autoscaler the fewest nodes to keep. The
# group's own MinSize stays 0: the cluster's end sets its desired capacity to 0, below any minimum.
MIN_WORKERS_TAG = "DaskMinWorkers"
# The tags the stack itself relies on (filters, cost reports, the console's Name column).
RESERVED_TAGS = ("Project", "DaskCluster", "ManagedBy", "Name", "DaskRole", MIN_WORKERS_TAG)
MAX_USER_TAGS = 50 - len(RESERVED_TAGS)  # AWS allows 50 tags per resource
# AWS tag keys and values: letters, digits, spaces and _ . : / = + - @ (EC2, IAM, ECR, SSM alike).
TAG_TEXT_RE = re.compile(r"^[\w\s.:/=+\-@]*$", re.UNICODE)
MAX_WORKERS = 500  # worker nodes in one cluster: far beyond a search's needs, within EC2 quotas
# Settings of earlier versions, and what replaced them.
RENAMED = {"scheduler_instance_type": 'scheduler_instance_types, a list such as ["m6i.large", "m6a.large"]'}


@dataclass(frozen=True, kw_only=True)
class ClusterSettings:
    """Everything that varies between clusters. Only ``allowed_cidrs`` has no default."""

    name: str
    allowed_cidrs: tuple[str, ...]
    allow_public_access: bool = False
    region: str = "us-east-1"
    # Worker nodes follow the work between these bounds (image/dask_node/worker_autoscaler.py);
    # `workers` in cdktf.json sets both, for a cluster of fixed size.
    min_workers: int = 0
    max_workers: int = 2
    worker_instance_types: tuple[str, ...] = DEFAULT_WORKER_TYPES
    scheduler_instance_types: tuple[str, ...] = DEFAULT_SCHEDULER_TYPES
    scheduler_market: Literal["spot", "on-demand"] = "spot"
    spot_max_price: str | None = None  # USD per hour; None caps at the on-demand price
    idle_timeout_minutes: int = 30
    max_lifetime_hours: int = 12
    # USD the cluster may spend from its start before it ends itself (image/dask_node/cost_cap.py).
    # A default cluster (2 workers and a scheduler, spot) spends about $3 in its 12 hours and never
    # meets it; one of 50 workers forgotten over a weekend stops at $20 instead of about $40.
    max_cost_usd: float = 20.0
    worker_processes: int | Literal["auto"] = "auto"
    worker_threads: int | Literal["auto"] = "auto"
    root_volume_gb: int = 30
    subnet_ids: tuple[str, ...] = ()
    # S3 prefixes and objects the workers may read, for searches on data kept there (stacks/data_sources.py).
    data_sources: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    jupyter: bool = False

    @property
    def resource_prefix(self) -> str:
        """Prefix of every named AWS resource, so several clusters never collide."""
        return f"dask-{self.name}"

    @property
    def adaptive(self) -> bool:
        return self.min_workers != self.max_workers

    def secret_path(self, role: str) -> str:
        """SSM path (no leading slash) of one node role's secrets; only that role reads it."""
        return f"{self.resource_prefix}/{role}"

    @property
    def state_parameter(self) -> str:
        """SSM name of the cluster's state: when it started (the lifetime cap counts from then,
        across scheduler replacements) or that it ended. Both roles read it; schedulers write it."""
        return f"/{self.resource_prefix}/cluster/state"

    @property
    def spend_parameter(self) -> str:
        """SSM name of what the cluster has spent since its start, metered by its scheduler node;
        it survives a scheduler's replacement. The schedulers read and write it; the laptop reads it."""
        return f"/{self.resource_prefix}/cluster/spend"

    def secret_parameter(self, role: str, name: str) -> str:
        """Full SSM name of one of a role's secrets, such as /dask-dask/worker/worker.key."""
        return f"/{self.secret_path(role)}/{name}"


def _worker_bounds(where: str, raw: dict) -> tuple[int, int]:
    """(min_workers, max_workers): `workers` fixes both; otherwise each has its default."""
    if "workers" in raw:
        workers = positive_int(f"{where}.workers", raw["workers"], maximum=MAX_WORKERS)
        for bound in ("min_workers", "max_workers"):
            if bound in raw:
                raise fail(
                    f"{where}.{bound}",
                    "cannot be combined with workers (a fixed size); set min_workers and max_workers alone",
                    raw[bound],
                )
        return workers, workers
    d = ClusterSettings.__dataclass_fields__
    low = raw.get("min_workers", d["min_workers"].default)
    if isinstance(low, bool) or not isinstance(low, int) or not 0 <= low <= MAX_WORKERS:
        raise fail(f"{where}.min_workers", f"must be a whole number from 0 to {MAX_WORKERS}", low)
    high = positive_int(f"{where}.max_workers", raw.get("max_workers", d["max_workers"].default), maximum=MAX_WORKERS)
    if low > high:
        raise fail(f"{where}.min_workers", f"must be at most max_workers ({high})", low)
    return low, high


def _tags(where: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise fail(where, "must be an object of tag names to values", value)
    if len(value) > MAX_USER_TAGS:
        raise fail(
            where,
            f"at most {MAX_USER_TAGS} tags (AWS allows 50 per resource; the stack sets {len(RESERVED_TAGS)})",
            len(value),
        )
    reserved = {name.lower(): name for name in RESERVED_TAGS}
    for key, tag in value.items():
        if not key or len(key) > 128 or key.lower().startswith("aws:") or not TAG_TEXT_RE.match(key):
            raise fail(
                where, "tag names must be 1-128 letters, digits, spaces or _.:/=+-@ and not start with aws:", key
            )
        if key.lower() in reserved:
            raise fail(where, f"{reserved[key.lower()]} is set by the stack itself; choose another tag name", key)
        if not isinstance(tag, str) or len(tag) > 256 or not TAG_TEXT_RE.match(tag):
            raise fail(f"{where}.{key}", "must be a string of at most 256 letters, digits, spaces or _.:/=+-@", tag)
    return dict(value)


def parse_cluster(name: str, raw: Any) -> ClusterSettings:
    """Validate one cluster's raw settings from cdktf.json."""
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > NAME_MAX:
        raise fail(
            "clusters",
            f"cluster names must be lowercase letters and digits in words joined by single '-', at most {NAME_MAX}",
            name,
        )
    where = f"clusters.{name}"
    if not isinstance(raw, dict):
        raise fail(where, "must be an object of settings", raw)
    known = {f.name for f in fields(ClusterSettings)} - {"name"} | {"workers"}
    for key in raw:
        if key in RENAMED:
            raise fail(f"{where}.{key}", f"was renamed; write {RENAMED[key]}", raw[key])
        if key not in known:
            raise fail(where, f"unknown setting (known: {', '.join(sorted(known))})", key)
    if "allowed_cidrs" not in raw:
        raise SettingsError(
            f"{where}.allowed_cidrs: required; give the networks allowed to reach the cluster, "
            'such as ["203.0.113.7/32"] for your own public IP'
        )

    def at(key: str) -> str:
        return f"{where}.{key}"

    d = ClusterSettings.__dataclass_fields__
    get = lambda key: raw.get(key, d[key].default)  # noqa: E731

    allow_public = true_or_false(at("allow_public_access"), get("allow_public_access"))
    region = get("region")
    if not isinstance(region, str) or region not in known_regions():
        raise fail(at("region"), "must be an AWS region such as eu-west-1", region)
    market = get("scheduler_market")
    if market not in ("spot", "on-demand"):
        raise fail(at("scheduler_market"), 'must be "spot" or "on-demand"', market)
    worker_types = instance_types(at("worker_instance_types"), raw.get("worker_instance_types", DEFAULT_WORKER_TYPES))
    scheduler_types = instance_types(
        at("scheduler_instance_types"), raw.get("scheduler_instance_types", DEFAULT_SCHEDULER_TYPES)
    )
    subnets = string_list(at("subnet_ids"), raw.get("subnet_ids", []), allow_empty=True)
    for subnet in subnets:
        if not SUBNET_RE.match(subnet):
            raise fail(at("subnet_ids"), "each entry must be a subnet id such as subnet-0abc12345def67890", subnet)
    unique(at("subnet_ids"), subnets)
    min_workers, max_workers = _worker_bounds(where, raw)

    return ClusterSettings(
        name=name,
        allowed_cidrs=cidrs(at("allowed_cidrs"), raw["allowed_cidrs"], allow_public),
        allow_public_access=allow_public,
        region=region,
        min_workers=min_workers,
        max_workers=max_workers,
        worker_instance_types=worker_types,
        scheduler_instance_types=scheduler_types,
        scheduler_market=market,
        spot_max_price=check_spot_price(at("spot_max_price"), get("spot_max_price")),
        idle_timeout_minutes=positive_int(at("idle_timeout_minutes"), get("idle_timeout_minutes")),
        max_lifetime_hours=positive_int(at("max_lifetime_hours"), get("max_lifetime_hours"), maximum=24 * 14),
        max_cost_usd=cost_cap(at("max_cost_usd"), get("max_cost_usd")),
        worker_processes=workers_shape(at("worker_processes"), get("worker_processes")),
        worker_threads=workers_shape(at("worker_threads"), get("worker_threads")),
        root_volume_gb=root_volume(at("root_volume_gb"), get("root_volume_gb")),
        subnet_ids=subnets,
        data_sources=data_sources(at("data_sources"), raw.get("data_sources", [])),
        tags=_tags(at("tags"), raw.get("tags", {})),
        jupyter=true_or_false(at("jupyter"), get("jupyter")),
    )


def parse_clusters(context: Any) -> list[ClusterSettings]:
    """Validate ``context.clusters`` as a whole: one entry per cluster, in file order."""
    clusters = context.get("clusters") if isinstance(context, dict) else None
    if not isinstance(clusters, dict) or not clusters:
        raise fail(
            "clusters",
            'add at least one cluster under "context" in cdktf.json, such as '
            '{"clusters": {"dask": {"allowed_cidrs": ["203.0.113.7/32"]}}}',
            clusters,
        )
    return [parse_cluster(name, raw) for name, raw in clusters.items()]


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    """JSON allows a key twice and keeps the last: a cluster defined twice would silently vanish."""
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise SettingsError(f"{CONFIG_FILE}: the key {json.dumps(key)} appears twice in one object; keep one")
    return dict(pairs)


def load_clusters(path: str | Path = CONFIG_FILE) -> list[ClusterSettings]:
    """Read and validate the clusters configured in cdktf.json."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
        document = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except FileNotFoundError:
        raise SettingsError(f"{path}: not found; run from the project directory") from None
    except OSError as error:  # a folder, say, or unreadable
        raise SettingsError(f"{path}: cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise SettingsError(
            f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start})"
        ) from None
    except json.JSONDecodeError as error:
        raise SettingsError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise SettingsError(f'{path}: must hold a JSON object (with "context"), got {shown(document)}')
    context = document.get("context", {})
    if not isinstance(context, dict):
        raise fail(f"{path}: context", "must be an object", context)
    return parse_clusters(context)
