"""Cluster settings: read from cdktf.json's ``context.clusters``, validated, frozen.

Pure Python on purpose: validating here costs nothing, while a bad value that reaches jsii
or AWS surfaces as a traceback or as an error after resources were created.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

CONFIG_FILE = "cdktf.json"
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
JUPYTER_PORT = 8888

# A comfortable spread of x86_64 types with 4 vCPUs: several interchangeable pools give
# price-capacity-optimized room to avoid interruptions.
DEFAULT_WORKER_TYPES = ("c6i.xlarge", "c6a.xlarge", "c5.xlarge", "c5a.xlarge", "m6i.xlarge", "m6a.xlarge")

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[1-9]$")
INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
# Graviton families carry a "g" after the generation digit (c7g, m6gd, t4g, im4gn); a1 is Arm too.
ARM_TYPE_RE = re.compile(r"^([a-z]+[0-9]+g[a-z]*|a1)\.")
SUBNET_RE = re.compile(r"^subnet-([0-9a-f]{8}|[0-9a-f]{17})$")
PRICE_RE = re.compile(r"^[0-9]+(\.[0-9]+)?$")


class SettingsError(ValueError):
    """A setting has a value we refuse; the message names the setting and the value."""


@dataclass(frozen=True, kw_only=True)
class ClusterSettings:
    """Everything that varies between clusters. Only ``allowed_cidrs`` has no default."""

    name: str
    allowed_cidrs: tuple[str, ...]
    allow_public_access: bool = False
    region: str = "us-east-1"
    workers: int = 2
    worker_instance_types: tuple[str, ...] = DEFAULT_WORKER_TYPES
    scheduler_instance_type: str = "m6i.large"
    scheduler_market: Literal["spot", "on-demand"] = "spot"
    spot_max_price: str | None = None  # USD per hour; None caps at the on-demand price
    idle_timeout_minutes: int = 30
    max_lifetime_hours: int = 12
    worker_processes: int | Literal["auto"] = "auto"
    worker_threads: int | Literal["auto"] = "auto"
    root_volume_gb: int = 30
    subnet_ids: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    jupyter: bool = False

    @property
    def resource_prefix(self) -> str:
        """Prefix of every named AWS resource, so several clusters never collide."""
        return f"dask-{self.name}"

    @property
    def node_parameter_path(self) -> str:
        """SSM path (no leading slash) of the nodes' secrets: TLS material, Jupyter token."""
        return f"{self.resource_prefix}/node"

    def node_parameter(self, name: str) -> str:
        """Full SSM name of one of the nodes' secrets, such as /dask-dask/node/worker.key."""
        return f"/{self.node_parameter_path}/{name}"


def _fail(where: str, message: str, value: Any) -> SettingsError:
    return SettingsError(f"{where}: {message}, got {json.dumps(value)}")


def _positive_int(where: str, value: Any, *, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(where, "must be a positive whole number", value)
    if maximum is not None and value > maximum:
        raise _fail(where, f"must be at most {maximum}", value)
    return value


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, "must be true or false", value)
    return value


def _string_list(where: str, value: Any, *, allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, "must be a list of strings", value)
    if not value and not allow_empty:
        raise _fail(where, "must not be empty", value)
    return tuple(value)


def check_instance_type(where: str, value: Any) -> str:
    if not isinstance(value, str) or not INSTANCE_TYPE_RE.match(value):
        raise _fail(where, "must be an EC2 instance type such as c6i.xlarge", value)
    if ARM_TYPE_RE.match(value):
        raise _fail(where, "is an Arm (Graviton) type; the image is built for linux/amd64", value)
    return value


def check_spot_price(where: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise _fail(where, 'must be a price in USD per hour such as "0.25"', value)
    text = str(value)
    try:
        ok = bool(PRICE_RE.match(text)) and Decimal(text) > 0
    except InvalidOperation:
        ok = False
    if not ok:
        raise _fail(where, 'must be a positive price in USD per hour such as "0.25"', value)
    return text


def _cidrs(where: str, value: Any, allow_public: bool) -> tuple[str, ...]:
    if value == []:
        raise _fail(
            where, "add the networks allowed to reach the cluster, such as your public IP as 203.0.113.7/32", value
        )
    cidrs = _string_list(where, value)
    for cidr in cidrs:
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError:
            raise _fail(where, "each entry must be a network such as 203.0.113.7/32", cidr) from None
        if network.prefixlen == 0 and not allow_public:
            raise _fail(
                where,
                "opens the scheduler to the whole internet; set allow_public_access: true to insist",
                cidr,
            )
    return cidrs


def _workers_shape(where: str, value: Any) -> int | Literal["auto"]:
    if value == "auto":
        return "auto"
    return _positive_int(where, value, maximum=256)


def _tags(where: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _fail(where, "must be an object of tag names to values", value)
    for key, tag in value.items():
        if not key or len(key) > 128 or key.lower().startswith("aws:"):
            raise _fail(where, "tag names must be 1-128 characters and not start with aws:", key)
        if not isinstance(tag, str) or len(tag) > 256:
            raise _fail(f"{where}.{key}", "must be a string of at most 256 characters", tag)
    return dict(value)


def parse_cluster(name: str, raw: Any) -> ClusterSettings:
    """Validate one cluster's raw settings from cdktf.json."""
    where = f"clusters.{name}"
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _fail("clusters", "cluster names must be lowercase letters, digits and '-', at most 20", name)
    if not isinstance(raw, dict):
        raise _fail(where, "must be an object of settings", raw)
    known = {f.name for f in fields(ClusterSettings)} - {"name"}
    for key in raw:
        if key not in known:
            raise _fail(where, f"unknown setting (known: {', '.join(sorted(known))})", key)
    if "allowed_cidrs" not in raw:
        raise SettingsError(
            f"{where}.allowed_cidrs: required; give the networks allowed to reach the cluster, "
            'such as ["203.0.113.7/32"] for your own public IP'
        )

    def at(key: str) -> str:
        return f"{where}.{key}"

    d = ClusterSettings.__dataclass_fields__
    get = lambda key: raw.get(key, d[key].default)  # noqa: E731

    allow_public = _bool(at("allow_public_access"), get("allow_public_access"))
    region = get("region")
    if not isinstance(region, str) or not REGION_RE.match(region):
        raise _fail(at("region"), "must be an AWS region such as eu-west-1", region)
    market = get("scheduler_market")
    if market not in ("spot", "on-demand"):
        raise _fail(at("scheduler_market"), 'must be "spot" or "on-demand"', market)
    worker_types = raw.get("worker_instance_types", list(DEFAULT_WORKER_TYPES))
    worker_types = _string_list(at("worker_instance_types"), worker_types)
    for instance_type in worker_types:
        check_instance_type(at("worker_instance_types"), instance_type)
    subnets = _string_list(at("subnet_ids"), raw.get("subnet_ids", []), allow_empty=True)
    for subnet in subnets:
        if not SUBNET_RE.match(subnet):
            raise _fail(at("subnet_ids"), "each entry must be a subnet id such as subnet-0abc12345def67890", subnet)

    return ClusterSettings(
        name=name,
        allowed_cidrs=_cidrs(at("allowed_cidrs"), raw["allowed_cidrs"], allow_public),
        allow_public_access=allow_public,
        region=region,
        workers=_positive_int(at("workers"), get("workers"), maximum=500),
        worker_instance_types=worker_types,
        scheduler_instance_type=check_instance_type(at("scheduler_instance_type"), get("scheduler_instance_type")),
        scheduler_market=market,
        spot_max_price=check_spot_price(at("spot_max_price"), get("spot_max_price")),
        idle_timeout_minutes=_positive_int(at("idle_timeout_minutes"), get("idle_timeout_minutes")),
        max_lifetime_hours=_positive_int(at("max_lifetime_hours"), get("max_lifetime_hours"), maximum=24 * 14),
        worker_processes=_workers_shape(at("worker_processes"), get("worker_processes")),
        worker_threads=_workers_shape(at("worker_threads"), get("worker_threads")),
        root_volume_gb=_positive_int(at("root_volume_gb"), get("root_volume_gb"), maximum=16384),
        subnet_ids=subnets,
        tags=_tags(at("tags"), raw.get("tags", {})),
        jupyter=_bool(at("jupyter"), get("jupyter")),
    )


def parse_clusters(context: Any) -> list[ClusterSettings]:
    """Validate ``context.clusters`` as a whole: one entry per cluster, in file order."""
    clusters = context.get("clusters") if isinstance(context, dict) else None
    if not isinstance(clusters, dict) or not clusters:
        raise _fail(
            "clusters",
            'add at least one cluster under "context" in cdktf.json, such as '
            '{"clusters": {"dask": {"allowed_cidrs": ["203.0.113.7/32"]}}}',
            clusters,
        )
    return [parse_cluster(name, raw) for name, raw in clusters.items()]


def load_clusters(path: str | Path = CONFIG_FILE) -> list[ClusterSettings]:
    """Read and validate the clusters configured in cdktf.json."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SettingsError(f"{path}: not found; run from the project directory") from None
    except json.JSONDecodeError as error:
        raise SettingsError(f"{path}: not valid JSON ({error})") from None
    return parse_clusters(document.get("context", {}) if isinstance(document, dict) else None)
