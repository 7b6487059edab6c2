"""One setting's value, checked: each function returns the value (normalised) or raises a
SettingsError that names the setting (`where`) and echoes the value, and the limits AWS sets on
them, so that what AWS would refuse at plan or apply is refused at synth (config.py)."""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Literal


class SettingsError(ValueError):
    """A setting has a value we refuse; the message names the setting and the value."""


INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
# Graviton families carry a "g" after the generation digit (c7g, m6gd, t4g, im4gn); a1 is Arm too.
ARM_TYPE_RE = re.compile(r"^([a-z]+[0-9]+g[a-z]*|a1)\.")
# Families a node cannot run on although EC2 knows them: Apple hosts and high-memory "u-"
# types launch only on dedicated hosts, and the Xen-era families cannot be EBS-optimized in
# every size (the nodes ask for it) nor boot Amazon Linux 2023, which needs ENA and NVMe.
UNSUITABLE_FAMILY_RE = re.compile(
    r"^(mac[0-9a-z-]*|u-[0-9a-z]+|u7[a-z0-9-]*|t1|t2|m1|m2|m3|c1|c3|cc2|cg1|cr1|g2|hi1|hs1|i2|r3)\."
)
PRICE_RE = re.compile(r"^[0-9]+(\.[0-9]+)?$")
# Partitions an AWS account can be opened in; the isolated ones need their own tooling.
PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
# What a security group takes: 60 inbound rules per address family, one per port and network.
MAX_ALLOWED_NETWORKS = 15
# Wider than this in total, the cluster is open to a large part of the internet: an IPv4 /8
# (16.7 million addresses), or an IPv6 /32 (a whole provider's allocation).
PUBLIC_BOUND = {4: 2**24, 6: 2**96}
# A cluster's dollar cap (max_cost_usd) above this is a typo, not a budget.
MAX_COST_USD = 100_000
MAX_WORKER_TYPES = 40  # overrides in one mixed instances policy
ROOT_VOLUME_MIN_GB = 8  # Amazon Linux 2023's root snapshot; EC2 refuses a smaller volume


@functools.cache
def _botocore_session():
    import botocore.session  # boto3's own dependency: its service models ship AWS's lists

    return botocore.session.get_session()


@functools.cache
def known_regions() -> frozenset[str]:
    """Every region of the public partitions, from botocore's endpoint data (offline)."""
    session = _botocore_session()
    return frozenset(r for partition in PARTITIONS for r in session.get_available_regions("ec2", partition))


@functools.cache
def node_instance_types() -> tuple[str, ...]:
    """EC2 instance types a node can run on: known to EC2's API model, x86_64, no dedicated host."""
    every = _botocore_session().get_service_model("ec2").shape_for("InstanceType").enum
    return tuple(t for t in every if not ARM_TYPE_RE.match(t) and not UNSUITABLE_FAMILY_RE.match(t))


SHOWN_CHARACTERS = 80  # of a value echoed in an error message


def shown(value: Any) -> str:
    """A value as an error message echoes it: its JSON, shortened if long."""
    text = json.dumps(value)
    return text if len(text) <= SHOWN_CHARACTERS else f"{text[: SHOWN_CHARACTERS - 16]}... ({len(text)} chars)"


def fail(where: str, message: str, value: Any) -> SettingsError:
    return SettingsError(f"{where}: {message}, got {shown(value)}")


def positive_int(where: str, value: Any, *, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(where, "must be a positive whole number", value)
    if maximum is not None and value > maximum:
        raise fail(where, f"must be at most {maximum}", value)
    return value


def true_or_false(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(where, "must be true or false", value)
    return value


def string_list(where: str, value: Any, *, allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(where, "must be a list of strings", value)
    if not value and not allow_empty:
        raise fail(where, "must not be empty", value)
    return tuple(value)


def check_instance_type(where: str, value: Any) -> str:
    if not isinstance(value, str) or not INSTANCE_TYPE_RE.match(value):
        raise fail(where, "must be an EC2 instance type such as c6i.xlarge", value)
    if ARM_TYPE_RE.match(value):
        raise fail(where, "is an Arm (Graviton) type; the image is built for linux/amd64", value)
    if UNSUITABLE_FAMILY_RE.match(value):
        raise fail(
            where, "cannot run a node (dedicated hosts only, or a Xen-era type Amazon Linux 2023 cannot boot)", value
        )
    if value not in node_instance_types():
        raise fail(where, "is not an EC2 instance type (see `aws ec2 describe-instance-types`)", value)
    return value


def unique(where: str, values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if values.count(value) > 1:
            raise fail(where, "lists the same entry twice", value)
    return values


def check_spot_price(where: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise fail(where, 'must be a price in USD per hour such as "0.25"', value)
    text = str(value)
    try:
        ok = bool(PRICE_RE.match(text)) and Decimal(text) > 0
    except InvalidOperation:
        ok = False
    if not ok:
        raise fail(where, 'must be a positive price in USD per hour such as "0.25"', value)
    return text


def cost_cap(where: str, value: Any) -> float:
    """A cluster's dollar cap: a positive, finite amount of USD, at most MAX_COST_USD."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_COST_USD:
        raise fail(where, f"must be an amount of USD above 0 and at most {MAX_COST_USD}, such as 20", value)
    return float(value)


def one_network(where: str, cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        address = ipaddress.ip_address(cidr)
    except ValueError:
        pass
    else:  # a bare address, as checkip.amazonaws.com prints it: AWS wants a prefix length
        raise fail(where, f"a single address needs its prefix length, write {address}/{address.max_prefixlen}", cidr)
    try:
        return ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise fail(where, "each entry must be a network such as 203.0.113.7/32", cidr) from None
    raise fail(
        where, f"has host bits set; the network is {network}, or write the address as /{network.max_prefixlen}", cidr
    )


def cidrs(where: str, value: Any, allow_public: bool) -> tuple[str, ...]:
    if value == []:
        raise fail(
            where, "add the networks allowed to reach the cluster, such as your public IP as 203.0.113.7/32", value
        )
    cidrs = string_list(where, value)
    if len(cidrs) > MAX_ALLOWED_NETWORKS:
        raise fail(where, f"at most {MAX_ALLOWED_NETWORKS} networks fit the security group's rules", len(cidrs))
    networks = [one_network(where, cidr) for cidr in cidrs]
    for i, network in enumerate(networks):
        for other in networks[:i]:
            if network.version == other.version and (network.subnet_of(other) or other.subnet_of(network)):
                raise fail(where, f"overlaps {other}; AWS refuses duplicate rules, list each network once", cidrs[i])
    if not allow_public:
        for version, bound in PUBLIC_BOUND.items():
            total = sum(n.num_addresses for n in networks if n.version == version)
            if total > bound:
                wide = ", ".join(str(n) for n in networks if n.version == version)
                raise fail(
                    where,
                    f"opens the cluster to {total:.3g} IPv{version} addresses, more than an "
                    f"{'IPv4 /8' if version == 4 else 'IPv6 /32'}; set allow_public_access: true to insist",
                    wide,
                )
    return cidrs


def instance_types(where: str, value: Any) -> tuple[str, ...]:
    """The types one Auto Scaling group may launch: real x86_64 types, each once."""
    types = string_list(where, list(value) if isinstance(value, tuple) else value)
    for instance_type in types:
        check_instance_type(where, instance_type)
    unique(where, types)
    if len(types) > MAX_WORKER_TYPES:
        raise fail(where, f"at most {MAX_WORKER_TYPES} types in an Auto Scaling group", len(types))
    return types


def root_volume(where: str, value: Any) -> int:
    size = positive_int(where, value, maximum=16384)  # gp3's largest volume, in GiB
    if size < ROOT_VOLUME_MIN_GB:
        raise fail(
            where, f"must be at least {ROOT_VOLUME_MIN_GB} (the size of Amazon Linux 2023's root snapshot)", value
        )
    return size


def workers_shape(where: str, value: Any) -> int | Literal["auto"]:
    if value == "auto":
        return "auto"
    return positive_int(where, value, maximum=256)
