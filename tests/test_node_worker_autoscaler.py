"""The worker autoscaler (image/dask_node/worker_autoscaler.py): its decisions on stand-ins, its Dask side
on a real scheduler, its AWS side on moto. The whole loop runs in the emulated deploy
(test_emulated_adaptive.py)."""

from __future__ import annotations

import asyncio

import boto3
import pytest
from moto import mock_aws

from dask_node import worker_autoscaler
from stacks.config import MIN_WORKERS_TAG

GroupState = worker_autoscaler.GroupState

A, B, C, D = (f"i-0000000000000000{c}" for c in "abcd")


class FakeGroup:
    def __init__(self, events: list, *, desired: int, minimum: int, maximum: int, instances: list[str]) -> None:
        self.events = events
        self.state = GroupState(desired, minimum, maximum, dict.fromkeys(instances, True))

    def read(self) -> GroupState:
        s = self.state
        return GroupState(s.desired, s.minimum, s.maximum, dict(s.instances), dict(s.hosts))

    def set_desired(self, nodes: int) -> None:
        assert nodes <= self.state.maximum, "AWS refuses a desired capacity above MaxSize"
        self.events.append(("set_desired", nodes))
        self.state.desired = nodes

    def protect(self, instances: list[str]) -> None:
        self.events.append(("protect", *instances))
        for instance in instances:
            self.state.instances[instance] = True

    def terminate(self, instance: str, decrement: bool) -> None:
        self.events.append(("terminate", instance, decrement))
        del self.state.instances[instance]
        self.state.desired -= decrement


class FakeDask:
    def __init__(self, events: list, *, nodes: dict[str, int], wanted: int, idle: list[str] | None = None) -> None:
        self.events, self.wanted = events, wanted
        self.workers = {i: [f"tls://{i}:{n}" for n in range(count)] for i, count in nodes.items()}
        self.idle = list(self.workers) if idle is None else idle
        self.refuse: set[str] = set()  # addresses whose data cannot move

    async def target_workers(self) -> int:
        return self.wanted

    async def nodes(self, hosts: dict[str, str]) -> dict[str, list[str]]:
        return {i: list(a) for i, a in self.workers.items()}

    async def nodes_to_close(self, hosts: dict[str, str]) -> list[str]:
        return list(self.idle)

    async def retire(self, addresses: list[str]) -> set[str]:
        self.events.append(("retire", *addresses))
        retired = set(addresses) - self.refuse
        for instance in list(self.workers):
            self.workers[instance] = [a for a in self.workers[instance] if a not in retired]
            if not self.workers[instance]:
                del self.workers[instance]
        return retired


def autoscaler(group, dask, scale_down_after: float = 15.0):
    return worker_autoscaler.Autoscaler(group, dask, interval=5.0, scale_down_after=scale_down_after)


def rounds(scaler, n: int = 1) -> None:
    for _ in range(n):
        asyncio.run(scaler.step())


def test_from_no_nodes_the_group_grows_at_once_to_what_the_work_asks_within_max():
    events = []
    group = FakeGroup(events, desired=0, minimum=0, maximum=4, instances=[])
    rounds(autoscaler(group, FakeDask(events, nodes={}, wanted=3)))
    assert events == [("set_desired", 3)]
    rounds(autoscaler(group, FakeDask(events, nodes={}, wanted=40)))
    assert events[-1] == ("set_desired", 4) and group.state.desired == 4, "never beyond max_workers"


def test_workers_are_counted_in_nodes():
    """Two workers per node: 5 workers wanted are 3 nodes."""
    events = []
    group = FakeGroup(events, desired=1, minimum=0, maximum=8, instances=[A])
    rounds(autoscaler(group, FakeDask(events, nodes={A: 2}, wanted=5)))
    assert events == [("set_desired", 3)]


def test_the_minimum_is_kept_without_work():
    events = []
    group = FakeGroup(events, desired=0, minimum=2, maximum=4, instances=[])
    scaler = autoscaler(group, FakeDask(events, nodes={}, wanted=0))
    rounds(scaler, 10)
    assert events == [("set_desired", 2)]


def test_scale_down_waits_then_retires_before_terminating_exactly_the_chosen_idle_nodes():
    events = []
    group = FakeGroup(events, desired=3, minimum=1, maximum=4, instances=[A, B, C])
    dask = FakeDask(events, nodes={A: 1, B: 1, C: 1}, wanted=0, idle=[C, A])  # B is busy: Dask never lists it
    scaler = autoscaler(group, dask, scale_down_after=15.0)
    rounds(scaler, 2)
    assert events == [], "scale-down is damped: 15 s of rounds 5 s apart"
    rounds(scaler)
    assert events == [
        ("retire", f"tls://{C}:0", f"tls://{A}:0"),
        ("terminate", C, True),
        ("terminate", A, True),
    ]
    assert group.state.desired == 1 and set(group.state.instances) == {B}, "the busy node stays, the minimum holds"


def test_a_round_with_more_work_restarts_the_wait():
    events = []
    group = FakeGroup(events, desired=2, minimum=0, maximum=4, instances=[A, B])
    dask = FakeDask(events, nodes={A: 1, B: 1}, wanted=0)
    scaler = autoscaler(group, dask, scale_down_after=15.0)
    rounds(scaler, 2)
    dask.wanted = 2
    rounds(scaler)
    dask.wanted = 0
    rounds(scaler, 2)
    assert events == []
    rounds(scaler)
    assert [e[0] for e in events] == ["retire", "terminate", "terminate"]


def test_only_whole_nodes_that_dask_retired_are_terminated():
    events = []
    group = FakeGroup(events, desired=2, minimum=0, maximum=4, instances=[A, B])
    dask = FakeDask(events, nodes={A: 2, B: 1}, wanted=0)
    dask.refuse = {f"tls://{A}:1"}
    rounds(autoscaler(group, dask, scale_down_after=5.0))
    assert ("terminate", B, True) in events
    assert not any(e[0] == "terminate" and e[1] == A for e in events), "A still holds a worker"


def test_a_group_above_its_size_loses_nodes_without_shrinking_further():
    """max_workers lowered by a redeploy: AWS set desired to the new max, the nodes stay protected."""
    events = []
    group = FakeGroup(events, desired=2, minimum=0, maximum=2, instances=[A, B, C, D])
    dask = FakeDask(events, nodes={A: 1, B: 1, C: 1, D: 1}, wanted=0, idle=[D, C, B, A])
    rounds(autoscaler(group, dask, scale_down_after=5.0))
    terminations = [e for e in events if e[0] == "terminate"]
    assert terminations == [("terminate", D, False), ("terminate", C, False), ("terminate", B, True),
                            ("terminate", A, True)]  # fmt: skip
    assert group.state.desired == 0


def test_unprotected_instances_are_protected():
    events = []
    group = FakeGroup(events, desired=2, minimum=2, maximum=2, instances=[A, B])
    group.state.instances[B] = False
    rounds(autoscaler(group, FakeDask(events, nodes={A: 1, B: 1}, wanted=2)))
    assert events == [("protect", B)]


def test_a_restarted_autoscaler_reads_its_bounds_from_the_group():
    """Nothing is remembered between processes: a new one never exceeds MaxSize nor drops below the tag."""
    events = []
    group = FakeGroup(events, desired=4, minimum=1, maximum=4, instances=[A, B, C, D])
    dask = FakeDask(events, nodes={A: 1, B: 1, C: 1, D: 1}, wanted=9)
    rounds(autoscaler(group, dask))
    assert events == []
    dask.wanted, dask.idle = 0, [A, B, C, D]
    rounds(autoscaler(group, dask, scale_down_after=5.0))
    assert group.state.desired == 1 and len(group.state.instances) == 1


def test_a_failing_round_is_retried(caplog):
    events = []
    group = FakeGroup(events, desired=0, minimum=0, maximum=2, instances=[])
    dask = FakeDask(events, nodes={}, wanted=1)
    calls = []

    def flaky_read():
        calls.append(1)
        if len(calls) == 1:
            raise OSError("throttled")
        return FakeGroup.read(group)

    group.read = flaky_read
    scaler = worker_autoscaler.Autoscaler(group, dask, interval=0.01, scale_down_after=1.0)

    async def two_rounds():
        task = asyncio.create_task(scaler.run())
        while len(calls) < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(two_rounds())
    assert ("set_desired", 1) in events
    assert "this round failed, retrying every 0.01 s: OSError: throttled" in caplog.text


# ---- the Dask side, on a real scheduler ----


def test_dask_side_on_a_real_scheduler():
    """Workers map to nodes by address, whatever they call themselves; Dask offers the idle node,
    never the busy one; retiring closes them.

    The busy node's worker runs a long task. An impostor on the idle node calls itself after the
    busy node (as a worker named `i-<other node>-7` once got that node terminated): it is counted
    with the node it runs on, and only that node is offered and retired."""
    from distributed import Client, Event, Scheduler, Worker
    from distributed.core import rpc

    def hold(name: str) -> None:  # a task that runs until the test releases it
        Event(name).wait()

    async def scenario():
        async with Scheduler(host="127.0.0.1", port=0, dashboard_address=":0") as scheduler:  # noqa: SIM117
            async with (
                Worker(scheduler.address, name=f"{A}-0", nthreads=1, host="127.0.0.2"),
                Worker(scheduler.address, name=f"{B}-7", nthreads=1, host="127.0.0.2"),
                Worker(scheduler.address, name=B, nthreads=1, host="127.0.0.3") as busy,
                Client(scheduler.address, asynchronous=True) as client,
            ):
                release = Event("release", client=client)
                future = client.submit(hold, "release", workers=[busy.address], pure=False)
                while not scheduler.workers[busy.address].processing:
                    await asyncio.sleep(0.05)
                async with rpc(scheduler.address) as remote:
                    dask = worker_autoscaler.DaskScheduler(remote)
                    hosts = {"127.0.0.2": A, "127.0.0.3": B, "127.0.0.4": C}
                    nodes = await dask.nodes(hosts)
                    assert {i: len(a) for i, a in nodes.items()} == {A: 2, B: 1}
                    assert await dask.target_workers() >= 1
                    assert await dask.nodes_to_close(hosts) == [A], "the busy node is never offered"
                    retired = await dask.retire(nodes[A])
                    assert retired == set(nodes[A])
                    assert set(scheduler.workers) == {busy.address}
                await release.set()
                await future

    asyncio.run(scenario())


# ---- the AWS side, on moto ----


@mock_aws
def test_aws_side_on_moto():
    client = boto3.client("autoscaling", region_name="us-east-1")
    boto3.client("ec2", region_name="us-east-1").create_launch_template(
        LaunchTemplateName="workers", LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "c6i.xlarge"}
    )
    client.create_auto_scaling_group(
        AutoScalingGroupName="dask-dask-workers", LaunchTemplate={"LaunchTemplateName": "workers"},
        MinSize=0, MaxSize=3, DesiredCapacity=2, AvailabilityZones=["us-east-1a"],
        Tags=[{"Key": MIN_WORKERS_TAG, "Value": "1", "PropagateAtLaunch": False}],
    )  # fmt: skip
    ec2 = boto3.client("ec2", region_name="us-east-1")
    missing = worker_autoscaler.AutoScalingGroup("dask-other-workers", client, ec2, min_workers_tag=MIN_WORKERS_TAG)
    with pytest.raises(LookupError, match=r"^worker group dask-other-workers not found \(yet\)$"):
        missing.read()
    group = worker_autoscaler.AutoScalingGroup("dask-dask-workers", client, ec2, min_workers_tag=MIN_WORKERS_TAG)
    state = group.read()
    assert (state.desired, state.minimum, state.maximum, len(state.instances)) == (2, 1, 3, 2)
    reservations = ec2.describe_instances(InstanceIds=sorted(state.instances))["Reservations"]
    addresses = {i["PrivateIpAddress"]: i["InstanceId"] for r in reservations for i in r["Instances"]}
    assert state.hosts == addresses and sorted(addresses.values()) == sorted(state.instances)
    first, second = sorted(state.instances)
    assert not any(state.instances.values())
    group.protect([first, second])
    assert all(group.read().instances.values())
    group.set_desired(3)
    assert group.read().desired == 3 and len(group.read().instances) == 3
    group.terminate(first, decrement=True)
    state = group.read()
    assert state.desired == 2 and first not in state.instances and second in state.instances


class RecordingDask(FakeDask):
    """FakeDask that also records the instances' addresses it is given to match workers with."""

    async def nodes(self, hosts: dict[str, str]) -> dict[str, list[str]]:
        self.events.append(("hosts", dict(hosts)))
        return await super().nodes(hosts)

    async def nodes_to_close(self, hosts: dict[str, str]) -> list[str]:
        self.events.append(("hosts to close", dict(hosts)))
        return await super().nodes_to_close(hosts)


def test_the_log_says_each_decision_and_the_wait_restarts_after_each_change(caplog):
    """What the scheduler node's log says, round by round: the operator's record of why the
    group has the size it has. Scale-down waits scale_down_after (15 s: 3 rounds 5 s apart)
    again after a removal and after a scale-up."""
    caplog.set_level("INFO", logger="worker-autoscaler")
    events = []
    group = FakeGroup(events, desired=1, minimum=0, maximum=4, instances=[A])
    group.state.hosts = {"10.0.0.1": A}
    dask = RecordingDask(events, nodes={A: 1}, wanted=3)
    scaler = autoscaler(group, dask, scale_down_after=15.0)
    rounds(scaler)  # up at once: 3 nodes
    assert ("hosts", {"10.0.0.1": A}) in events, "workers are matched to instances by the group's addresses"
    dask.workers = {A: [f"tls://{A}:0"], B: [f"tls://{B}:0"], C: [f"tls://{C}:0"]}
    group.state.instances.update({B: True, C: True})
    dask.wanted, dask.idle = 1, [C]
    rounds(scaler, 2)
    assert [e for e in events if e[0] in ("retire", "terminate")] == [], "two rounds of less work: not yet"
    rounds(scaler)  # the third: C, the only idle one, goes
    assert [e for e in events if e[0] in ("retire", "terminate")] == [
        ("retire", f"tls://{C}:0"),
        ("terminate", C, True),
    ]
    assert ("hosts to close", {"10.0.0.1": A}) in events
    dask.idle = [B]
    rounds(scaler, 2)
    assert events[-1][0] != "terminate", "the wait starts again after a removal"
    dask.wanted = 3  # more work: up again, which restarts the wait too
    rounds(scaler)
    dask.wanted = 1
    rounds(scaler, 2)
    assert not any(e == ("terminate", B, True) for e in events)
    dask.idle = []
    rounds(scaler)  # the wait is over, but Dask has no idle node to give
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "the work asks for 3 worker(s): 3 node(s) within [0, 4]; 1 joined, desired 1",
        "scaling up: desired capacity 1 -> 3",
        "the work asks for 1 worker(s): 1 node(s) within [0, 4]; 3 joined, desired 3",
        f"scaling down: node {C} retired and terminated; desired capacity 2",
        "the work asks for 3 worker(s): 3 node(s) within [0, 4]; 2 joined, desired 2",
        "scaling up: desired capacity 2 -> 3",
        "the work asks for 1 worker(s): 1 node(s) within [0, 4]; 2 joined, desired 3",
        "no idle node to remove yet (1 wanted gone)",
    ]


def test_a_node_whose_workers_dask_cannot_all_retire_is_kept_and_said_so(caplog):
    caplog.set_level("INFO", logger="worker-autoscaler")
    events = []
    group = FakeGroup(events, desired=2, minimum=0, maximum=2, instances=[A, B])
    dask = FakeDask(events, nodes={A: 1, B: 1}, wanted=0, idle=[A, B])
    dask.refuse = {f"tls://{B}:0"}
    rounds(autoscaler(group, dask, scale_down_after=5.0))
    assert [e for e in events if e[0] == "terminate"] == [("terminate", A, True)], "A's one worker is all it had"
    assert f"node {B} kept: Dask could not retire all of its workers" in caplog.text


def test_unprotected_instances_are_protected_and_said_so(caplog):
    caplog.set_level("INFO", logger="worker-autoscaler")
    events = []
    group = FakeGroup(events, desired=3, minimum=3, maximum=3, instances=[A, B, C])
    group.state.instances[C] = group.state.instances[B] = False
    rounds(autoscaler(group, FakeDask(events, nodes={A: 1, B: 1, C: 1}, wanted=3)))
    assert f"protected 2 node(s) from the group's own scale-in: {B}, {C}" in caplog.text
