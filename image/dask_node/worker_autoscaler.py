"""Worker nodes that follow the work: the scheduler node's autoscaler for the worker group.

Every few seconds it asks the Dask scheduler how many workers the work wants (Dask's own
adaptive target: the expected duration of running and queued tasks, and memory use), turns
workers into nodes, and keeps the worker Auto Scaling group's desired capacity within its
bounds:

- up at once, straight to what the work asks for: a waiting search pays for idle slots already;
- down only after the work has asked for fewer nodes for `--scale-down-after` seconds in a row,
  and only by removing nodes Dask chooses (`workers_to_close`, grouped by node: idle ones with
  the least data first). Their workers are retired first (their results move to the nodes that
  stay), then exactly those instances are terminated, the desired capacity decremented in the
  same call. The group protects every instance from scale-in, so it never picks a node itself.

The bounds are read from the group on every round: its MaxSize (max_workers) and the tag
`--min-workers-tag` names (min_workers; the stack sets both, stacks/userdata.py). A restart of
this process, or a redeploy with new bounds, changes nothing else; AWS itself refuses a desired
capacity above MaxSize.

A Dask worker is matched to its instance by its address: the instance's private IP address,
which the scheduler has checked against the connection the worker registered from
(dask_node.trust). Never by its name: any worker may call itself anything, and a worker named
after another node would otherwise get that node terminated.

    python -m dask_node.worker_autoscaler --scheduler tls://127.0.0.1:8786 --group dask-dask-workers \\
        --min-workers-tag DaskMinWorkers --region us-east-1 --tls-dir /etc/dask/tls
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import operator
import pickle
import sys
from dataclasses import dataclass, field

from distributed.comm import get_address_host

from dask_node import tls

log = logging.getLogger("worker-autoscaler")
INTERVAL_SECONDS = 5.0
SCALE_DOWN_AFTER_SECONDS = 60.0
# Instances that count towards the group's size: launching, or in service.
ACTIVE_STATES = ("Pending", "Pending:Wait", "Pending:Proceed", "InService")


@dataclass
class GroupState:
    desired: int
    minimum: int
    maximum: int
    instances: dict[str, bool]  # active instance id -> protected from scale-in
    hosts: dict[str, str] = field(default_factory=dict)  # private IP address -> active instance id


class AutoScalingGroup:
    """The worker Auto Scaling group, through the scheduler node's role (boto3)."""

    def __init__(self, name: str, client, ec2, *, min_workers_tag: str) -> None:
        self.name, self.client, self.ec2 = name, client, ec2
        self.min_workers_tag = min_workers_tag  # the group's tag that holds min_workers

    def read(self) -> GroupState:
        groups = self.client.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name])["AutoScalingGroups"]
        if not groups:  # Terraform creates the group after the scheduler, whose address it needs
            raise LookupError(f"worker group {self.name} not found (yet)")
        (group,) = groups
        tags = {tag["Key"]: tag["Value"] for tag in group.get("Tags", [])}
        instances = {
            i["InstanceId"]: i.get("ProtectedFromScaleIn", False)
            for i in group.get("Instances", [])
            if i["LifecycleState"] in ACTIVE_STATES
        }
        return GroupState(
            desired=group["DesiredCapacity"],
            minimum=int(tags.get(self.min_workers_tag, "0")),
            maximum=group["MaxSize"],
            instances=instances,
            hosts=self._private_addresses(sorted(instances)),
        )

    def _private_addresses(self, instances: list[str]) -> dict[str, str]:
        if not instances:
            return {}
        pages = self.ec2.get_paginator("describe_instances").paginate(InstanceIds=instances)
        return {
            instance["PrivateIpAddress"]: instance["InstanceId"]
            for page in pages
            for reservation in page["Reservations"]
            for instance in reservation["Instances"]
            if instance.get("PrivateIpAddress")
        }

    def set_desired(self, nodes: int) -> None:
        self.client.set_desired_capacity(AutoScalingGroupName=self.name, DesiredCapacity=nodes, HonorCooldown=False)

    def protect(self, instances: list[str]) -> None:
        self.client.set_instance_protection(
            AutoScalingGroupName=self.name, InstanceIds=instances, ProtectedFromScaleIn=True
        )

    def terminate(self, instance: str, decrement: bool) -> None:
        self.client.terminate_instance_in_auto_scaling_group(
            InstanceId=instance, ShouldDecrementDesiredCapacity=decrement
        )


class DaskScheduler:
    """The scheduler's view, over its RPC: not a Client, so the idle rule does not count it as a user."""

    def __init__(self, rpc) -> None:
        self.rpc = rpc

    async def target_workers(self) -> int:
        return await self.rpc.adaptive_target()

    async def nodes(self, hosts: dict[str, str]) -> dict[str, list[str]]:
        """Instance id -> addresses of its Dask workers, given the instances' private IP addresses."""
        identity = await self.rpc.identity(n_workers=-1)
        nodes: dict[str, list[str]] = {}
        for address in identity["workers"]:
            if instance := hosts.get(get_address_host(address)):
                nodes.setdefault(instance, []).append(address)
        return nodes

    async def nodes_to_close(self, hosts: dict[str, str]) -> list[str]:
        """Nodes Dask would close, in its order: idle ones, least data first (whole nodes only)."""
        addresses = await self.rpc.workers_to_close(key=pickle.dumps(operator.attrgetter("host")), attribute="address")
        chosen: list[str] = []
        for address in addresses:
            if (instance := hosts.get(get_address_host(address))) and instance not in chosen:
                chosen.append(instance)
        return chosen

    async def retire(self, addresses: list[str]) -> set[str]:
        """Retire workers (their data moves to others); the addresses actually retired."""
        retired = await self.rpc.retire_workers(workers=addresses, close_workers=True)
        return set(retired)


class Autoscaler:
    def __init__(
        self, group: AutoScalingGroup, dask: DaskScheduler, *, interval: float, scale_down_after: float
    ) -> None:
        self.group, self.dask = group, dask
        self.interval, self.scale_down_after = interval, scale_down_after
        self.low_since_rounds = 0  # consecutive rounds in which the work wanted fewer nodes
        self.last_target: int | None = None

    async def step(self) -> None:
        group = self.group.read()
        nodes = await self.dask.nodes(group.hosts)
        if unprotected := sorted(i for i, protected in group.instances.items() if not protected):
            # Instances launched before the group protected new ones, or unprotected by hand.
            self.group.protect(unprotected)
            log.info("protected %d node(s) from the group's own scale-in: %s", len(unprotected), ", ".join(unprotected))
        wanted = await self.dask.target_workers()
        # Nodes, not processes: a node runs one or more workers. Until one has joined, Dask's
        # count (threads wanted) is taken as nodes; the next rounds correct it.
        per_node = sum(map(len, nodes.values())) / len(nodes) if nodes else 1
        target = min(max(math.ceil(wanted / per_node), group.minimum), group.maximum)
        if target != self.last_target:
            log.info(
                "the work asks for %d worker(s): %d node(s) within [%d, %d]; %d joined, desired %d",
                wanted, target, group.minimum, group.maximum, len(nodes), group.desired,
            )  # fmt: skip
            self.last_target = target
        if target > group.desired:
            self.group.set_desired(target)
            log.info("scaling up: desired capacity %d -> %d", group.desired, target)
            self.low_since_rounds = 0
        elif target < len(nodes):
            self.low_since_rounds += 1
            if self.low_since_rounds * self.interval >= self.scale_down_after:
                self.low_since_rounds = 0
                await self.remove(len(nodes) - target, nodes, group)
        else:
            self.low_since_rounds = 0

    async def remove(self, count: int, nodes: dict[str, list[str]], group: GroupState) -> None:
        chosen = [i for i in await self.dask.nodes_to_close(group.hosts) if i in nodes][:count]
        if not chosen:
            log.info("no idle node to remove yet (%d wanted gone)", count)
            return
        addresses = [a for i in chosen for a in nodes[i]]
        retired = await self.dask.retire(addresses)
        active = len(group.instances)
        for instance in chosen:
            if not set(nodes[instance]) <= retired:
                log.warning("node %s kept: Dask could not retire all of its workers", instance)
                continue
            # A group already above its size (a lowered max_workers) loses the node without shrinking.
            decrement = active <= group.desired
            self.group.terminate(instance, decrement)
            active -= 1
            if decrement:
                group.desired -= 1
            log.info("scaling down: node %s retired and terminated; desired capacity %d", instance, group.desired)

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await self.step()
                if failing:
                    log.info("recovered: the scheduler and the group answer again")
                failing = False
            except Exception as error:
                if not failing:
                    log.warning("this round failed, retrying every %g s: %s: %s", self.interval,
                                type(error).__name__, error)  # fmt: skip
                failing = True
            await asyncio.sleep(self.interval)


async def serve(args: argparse.Namespace) -> None:
    import boto3
    from botocore.config import Config

    security = tls.security(args.tls_dir, "scheduler")
    # Short timeouts: a call that hangs would freeze every decision for botocore's default minute;
    # a failed round is simply tried again at the next.
    config = Config(connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 2})
    group = AutoScalingGroup(
        args.group,
        boto3.client("autoscaling", region_name=args.region, config=config),
        boto3.client("ec2", region_name=args.region, config=config),
        min_workers_tag=args.min_workers_tag,
    )
    async with tls.scheduler_rpc(args.scheduler, security) as scheduler:
        autoscaler = Autoscaler(
            group, DaskScheduler(scheduler), interval=args.interval, scale_down_after=args.scale_down_after
        )
        await autoscaler.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scheduler", required=True, help="the scheduler's address, tls://...")
    parser.add_argument("--group", required=True, help="the worker Auto Scaling group's name")
    parser.add_argument("--min-workers-tag", required=True, help="the group's tag that holds the fewest nodes to keep")
    parser.add_argument("--region", required=True)
    parser.add_argument("--tls-dir", required=True, help="the node's TLS folder")
    parser.add_argument("--interval", type=float, default=INTERVAL_SECONDS, help="seconds between rounds")
    parser.add_argument(
        "--scale-down-after", type=float, default=SCALE_DOWN_AFTER_SECONDS,
        help="seconds the work must want fewer nodes before nodes are removed",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for flag, value in (("--interval", args.interval), ("--scale-down-after", args.scale_down_after)):
        if not value > 0:
            parser.error(f"{flag}: must be a positive number of seconds, got {value:g}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker-autoscaler: %(message)s", stream=sys.stdout)
    log.info("following the work every %g s (scale down after %g s); group %s", args.interval,
             args.scale_down_after, args.group)  # fmt: skip
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
