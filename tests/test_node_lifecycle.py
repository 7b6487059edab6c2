"""Lifecycle for real: the spot watcher against a local server playing the instance metadata
service, and the idle timeout on a real `dask scheduler` started with the node's command line."""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
import time

from . import loopback_cluster
from .emulated.imds import FakeMetadata


def watcher(*args: str) -> subprocess.Popen:
    """The spot watcher as the node starts it (`python -m dask_node.spot_watcher`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "dask_node.spot_watcher", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=loopback_cluster.node_environment(),
    )  # fmt: skip


def test_worker_watcher_retires_its_node_gracefully_on_a_notice(tmp_path):
    cluster = loopback_cluster.start(tmp_path)
    metadata = FakeMetadata(local_ipv4="127.0.0.3")
    try:
        with cluster.client(wait_for_nodes=2) as client:
            doomed = next(w for w in client.scheduler_info(n_workers=-1)["workers"] if "127.0.0.3" in w)
            result = client.submit(lambda: list(range(1000)), workers=[doomed], pure=False)
            assert result.result() == list(range(1000))

            process = watcher("--role", "worker", "--scheduler", cluster.address, "--tls-dir", str(cluster.tls_dir),
                              "--metadata-url", metadata.url, "--interval", "0.2")  # fmt: skip
            # Five looks without a notice, however long the watcher takes to start on a busy machine.
            deadline = time.monotonic() + 120
            while sum(path.endswith("spot/instance-action") for path, _ in list(metadata.reads)) < 5:
                assert process.poll() is None, "the watcher must keep polling while there is no notice"
                assert time.monotonic() < deadline, "the watcher does not poll"
                time.sleep(0.1)
            metadata.notice = {"action": "terminate", "time": "2026-11-26T12:00:00Z"}
            noticed = time.monotonic()
            output, _ = process.communicate(timeout=180)
            drained_in = time.monotonic() - noticed

            assert process.returncode == 0, output
            assert drained_in < 110, f"draining took {drained_in:.0f} s of the two minutes"
            assert "spot interruption notice: terminate at 2026-11-26T12:00:00Z" in output
            assert f"retired 1 Dask worker(s) of 127.0.0.3 before the interruption: {doomed}" in output
            workers = client.scheduler_info(n_workers=-1)["workers"]
            assert doomed not in workers and len(workers) == 1, "only this node's worker retires"
            # Its result moved to the other node instead of being lost with the instance.
            assert result.result() == list(range(1000))
            assert all("127.0.0.2" in w for w in client.who_has(result)[result.key])
        cluster.processes["worker-127.0.0.3"].wait(timeout=60)  # the nanny closes, it does not restart
    finally:
        cluster.stop()
        metadata.shutdown()
    polls = [path for path, _ in metadata.reads if path.endswith("spot/instance-action")]
    assert len(polls) >= 5, "polls repeatedly"
    assert all(authorized for _, authorized in metadata.reads), "every metadata read must use an IMDSv2 token"


def watcher_with_aws(endpoint: str, *args: str) -> subprocess.Popen:
    """The scheduler's spot watcher, with AWS's endpoints at `endpoint` (moto, on loopback)."""
    environment = {**loopback_cluster.node_environment(), "AWS_ENDPOINT_URL": endpoint,
                   "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "dask_node.spot_watcher", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
    )  # fmt: skip


def test_scheduler_watcher_hands_over_to_a_new_scheduler_at_a_notice():
    """It leaves the scheduler's group of one without lowering its size: the group launches
    the next scheduler at once, while this one serves out its two minutes."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = loopback_cluster.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    metadata = FakeMetadata(local_ipv4="127.0.0.1")
    try:
        endpoint = f"http://127.0.0.1:{port}"
        aws = {"region_name": "eu-west-1", "endpoint_url": endpoint, "aws_access_key_id": "test",
               "aws_secret_access_key": "test"}  # fmt: skip
        ec2, autoscaling = boto3.client("ec2", **aws), boto3.client("autoscaling", **aws)
        ec2.create_launch_template(LaunchTemplateName="scheduler", LaunchTemplateData={"ImageId": "ami-12c6146b"})
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName="dask-x-scheduler", LaunchTemplate={"LaunchTemplateName": "scheduler"},
            MinSize=0, MaxSize=1, DesiredCapacity=1, AvailabilityZones=["eu-west-1a"],
        )  # fmt: skip
        group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["dask-x-scheduler"])
        (this,) = [i["InstanceId"] for i in group["AutoScalingGroups"][0]["Instances"]]
        metadata.instance_id = this
        process = watcher_with_aws(endpoint, "--role", "scheduler", "--group", "dask-x-scheduler",
                                   "--region", "eu-west-1", "--metadata-url", metadata.url, "--interval", "0.2")  # fmt: skip
        deadline = time.monotonic() + 120  # three looks without a notice, however slowly it starts
        while sum(path.endswith("spot/instance-action") for path, _ in list(metadata.reads)) < 3:
            assert process.poll() is None, "no notice yet: it must keep watching"
            assert time.monotonic() < deadline, "the watcher does not poll"
            time.sleep(0.1)
        metadata.notice = {"action": "terminate", "time": "2026-11-26T12:00:00Z"}
        output, _ = process.communicate(timeout=120)
        group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["dask-x-scheduler"])[
            "AutoScalingGroups"
        ][0]
    finally:
        metadata.shutdown()
        server.stop()
    assert process.returncode == 0, output
    instances = [i["InstanceId"] for i in group["Instances"]]
    assert group["DesiredCapacity"] == 1 and len(instances) == 1 and this not in instances, (
        "a replacement, not this one"
    )
    assert f"this scheduler ({this}) left group dask-x-scheduler, which launches its replacement now" in output
    assert "at 2026-11-26T12:00:00Z" in output


def test_the_scheduler_watcher_needs_its_group_and_region():
    output = subprocess.run([sys.executable, "-m", "dask_node.spot_watcher", "--role", "scheduler"],
                            capture_output=True, text=True, env=loopback_cluster.node_environment(), timeout=120)  # fmt: skip
    assert output.returncode == 2
    assert output.stderr.strip().splitlines()[-1].endswith("--group and --region are required for the scheduler")


def test_watcher_keeps_watching_through_metadata_outages(tmp_path):
    """No metadata service at all: the watcher logs and keeps polling rather than dying."""
    process = watcher(
        "--role", "scheduler", "--group", "dask-x-scheduler", "--region", "eu-west-1",
        "--metadata-url", f"http://127.0.0.1:{loopback_cluster.free_port()}", "--interval", "0.2",
    )  # fmt: skip
    try:
        first = process.stdout.readline()  # it has started (imports take long on a busy machine)
        time.sleep(2)
        assert process.poll() is None
    finally:
        process.kill()
        output, _ = process.communicate(timeout=30)
    assert "instance metadata not reachable" in first + output


def logged_at(log: str, pattern: str, *, last: bool = False) -> datetime.datetime:
    """When the first (or last) line of a Dask log that matches `pattern` was written (Dask's own stamp)."""
    lines = [line for line in log.splitlines() if re.search(pattern, line)]
    line = lines[-1] if last else lines[0]
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def test_scheduler_closes_when_idle_but_not_while_a_client_is_connected(tmp_path):
    """The node's own `dask scheduler` command (dask_node.idle_shutdown), with a 4 s idle time.
    Conditions, not the machine's speed: the scheduler reports no task for twice the idle time
    while the client is connected and is still up; it closes only once the client has gone,
    and says it was idle for at least the idle time."""
    cluster = loopback_cluster.start(tmp_path, workers=("127.0.0.2",), idle_seconds=4)
    try:
        with cluster.client(wait_for_nodes=1) as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
            deadline = time.monotonic() + 120
            while (
                client.run_on_scheduler(lambda dask_scheduler: time.time() - (dask_scheduler.idle_since or time.time()))
                < 8
            ):
                assert time.monotonic() < deadline, "the scheduler never had no task"
                time.sleep(0.2)
            assert cluster.processes["scheduler"].poll() is None, "closed under a connected client"
        code = cluster.processes["scheduler"].wait(timeout=120)
    finally:
        cluster.stop()
    assert code == 0
    log = (tmp_path / "scheduler.log").read_text()
    idle = int(re.search(r"cluster idle for (\d+) s: closing the scheduler", log).group(1))
    assert idle >= 4, "closed before the idle time was over"
    left = logged_at(log, r"Remove client Client-", last=True)
    assert (logged_at(log, r"cluster idle for \d+ s: closing") - left).total_seconds() >= 4 - 1, (
        "the idle time counts from the client's departure"
    )


def test_scheduler_waits_for_its_first_worker_only_within_the_boot_grace(tmp_path):
    """No worker ever comes: the cluster still ends, after the boot grace and the idle time
    (from the scheduler's own log: when it started, when it declared itself idle, when it closed)."""
    cluster = loopback_cluster.start(tmp_path, workers=(), idle_seconds=2, boot_grace_seconds=8)
    try:
        code = cluster.processes["scheduler"].wait(timeout=120)
    finally:
        cluster.stop()
    assert code == 0
    log = (tmp_path / "scheduler.log").read_text()
    started = logged_at(log, r"Scheduler at:")
    announced = logged_at(log, r"cluster idle \(no tasks")
    closing = logged_at(log, r"cluster idle for \d+ s: closing the scheduler")
    assert (announced - started).total_seconds() >= 8 - 1, "idle before the boot grace was over"
    idle = int(re.search(r"cluster idle for (\d+) s: closing the scheduler", log).group(1))
    assert idle >= 2, "closed before the idle time was over"
    # Announced at the first idle check, closed at the next one (checks a second apart): each
    # line is logged a moment after its check read the clock, so their gap is a second give or
    # take those moments (0.998 s was seen on a loaded machine).
    assert (closing - announced).total_seconds() >= 2 - 1 - 0.1, "closed before the idle time was over"
