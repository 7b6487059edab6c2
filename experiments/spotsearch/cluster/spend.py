"""A deployed cluster's spend against its dollar cap (max_cost_usd), as its scheduler node meters
it (image/dask_node/cost_cap.py, which logs each round as an event on TOPIC): said when a search
starts, once at 80%, and as the reason a search stops when the cap ends the cluster."""

from __future__ import annotations

import json
import re
import warnings
from contextlib import suppress

from spotsearch.cluster.messages import ClusterError, console

TOPIC = "spotsearch-cost"  # dask_node.cost_cap's; the scheduler lets no worker log on it
# dask_node.cost_cap also tells every Client (a notebook's) with a `warn` event starting so; a
# search says it its own way, in one line, and leaves that warning out.
CLIENT_WARNING = "max_cost_usd: "
RAISE_IT = "raise max_cost_usd (in cdktf.json, or `cdktf deploy --var max_cost_usd=...`) and redeploy"


def latest(client) -> dict | None:
    """The scheduler's last spend event, read with msgpack only; None where nothing meters (a
    local cluster, any plain Dask cluster)."""
    from distributed.core import PooledRPCCall

    scheduler = PooledRPCCall(client.scheduler.address, client.rpc, deserializers=["msgpack"])
    events = client.sync(scheduler.events, topic=TOPIC)
    return dict(events[-1][1]) if events else None


def _amounts(event: dict) -> str:
    return f"${event['spent_usd']:.2f} of its ${event['cap_usd']:.2f} cap"


def ended_line(event: dict, cluster: str = "the cluster") -> str:
    return f"{cluster} has reached its cost cap and ended ({_amounts(event)} spent); {RAISE_IT}"


def say_at_start(client) -> None:
    """One line with the spend so far; ClusterError on a cluster that has reached its cap."""
    event = latest(client)
    if event is None:
        return
    if event.get("ended"):
        raise ClusterError(ended_line(event))
    console(f"the cluster has spent {_amounts(event)} so far; it ends at the cap")


class CapWatch:
    """Subscribed to the spend events while a search runs: says the 80% warning, and keeps the
    event of the cap's end (sent before the scheduler closes) for the search to name its end."""

    def __init__(self, client) -> None:
        self.client = client
        self.ended: dict | None = None

    def _event(self, event: tuple) -> None:
        message = event[1]
        if not isinstance(message, dict):
            return
        if message.get("ended"):
            self.ended = message
        elif message.get("warning"):
            console(f"warning: the cluster has spent {_amounts(message)}; at the cap it ends, with this search")

    def stopped_line(self, saved) -> str:
        where = f" in {saved.folder}, from where the same search resumes" if saved.folder else " (in memory only)"
        return f"{ended_line(self.ended)}; {len(saved)} finished fits are saved{where}"

    def __enter__(self) -> CapWatch:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message=re.escape(CLIENT_WARNING), category=UserWarning)
        self.client.subscribe_topic(TOPIC, self._event)
        return self

    def __exit__(self, *exc_info) -> None:
        with suppress(Exception):  # a client whose scheduler has gone cannot say it unsubscribes
            self.client.unsubscribe_topic(TOPIC)
        self._warnings.__exit__(*exc_info)


def ended_at_cap(outputs: dict, stack: str) -> str | None:
    """The line for a deployed stack whose cluster ended at its cap, from what its scheduler kept
    in SSM and its scheduler group's size (0 until a redeploy starts the cluster again), read
    with the user's AWS credentials; None if it did not end so, or if either cannot be read."""
    name, region, group = (outputs.get(k) for k in ("cluster_spend_parameter", "region", "scheduler_group_name"))
    if not (name and region and group):
        return None
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        kept = json.loads(
            boto3.client("ssm", region_name=region).get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        )
        if not isinstance(kept, dict) or not kept.get("ended"):
            return None
        groups = boto3.client("autoscaling", region_name=region).describe_auto_scaling_groups(
            AutoScalingGroupNames=[group]
        )["AutoScalingGroups"]
    except (BotoCoreError, ClientError, ValueError):
        return None
    if not groups or groups[0]["DesiredCapacity"] != 0:  # redeployed: a new scheduler is on its way
        return None
    return ended_line(kept, f"cluster {stack}").replace("redeploy", f"run `cdktf deploy {stack}`")
