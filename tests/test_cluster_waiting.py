"""Reaching the scheduler and waiting for nodes (experiments/spotsearch/cluster/waiting.py): visible, bounded,
stopped by Ctrl-C; the node meter."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from spotsearch.cluster import waiting
from spotsearch.cluster.messages import ClusterError
from spotsearch.cluster.waiting import NodeMeter, wait_for_nodes

from . import loopback_cluster
from .experiment_runs import (
    SCRIPT,
    assert_one_line_error,
    run_experiment,
)


def test_scheduler_unreachable_within_the_timeout(loopback, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    document = json.loads(outputs.read_text())
    address = f"tls://127.0.0.1:{loopback_cluster.free_port()}"
    document["loopback"]["scheduler_address"] = address
    outputs.write_text(json.dumps(document))
    run = run_experiment("--stack", "loopback", "--outputs", str(outputs), "--timeout", "2", cwd=tmp_path)
    assert_one_line_error(
        run, f"{address}: scheduler not reachable within 2 s; is the cluster up, and is your address in allowed_cidrs?"
    )


def test_a_scheduler_that_does_not_answer_gets_the_ended_cluster_hint_within_seconds(loopback, tmp_path):
    """A cluster that ended idle looks like one still booting: the user hears both, early."""
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    document = json.loads(outputs.read_text())
    address = f"tls://127.0.0.1:{loopback_cluster.free_port()}"
    document["loopback"]["scheduler_address"] = address
    outputs.write_text(json.dumps(document))
    search = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--stack", "loopback", "--outputs", str(outputs), "--timeout", "600"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = []
        while not any("no answer from" in line for line in lines):
            line = search.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        hint = next(line for line in lines if "no answer from" in line).strip()
        assert hint == (
            f"no answer from {address} yet: a cluster that is starting takes a few minutes; one that was idle "
            "for its idle timeout or reached its lifetime or cost cap has ended, and `cdktf deploy loopback` starts it again"
        )
        assert search.poll() is None, "it still waits, up to its timeout"
    finally:
        search.terminate()  # as a user's SIGTERM: the script ends what it started (its plotting helper)
        search.communicate(timeout=60)
    assert search.returncode == 128 + 15


def test_a_cluster_that_ended_at_its_cost_cap_is_refused_in_one_line_and_a_redeployed_one_is_waited_for(
    loopback, aws_on_loopback, tmp_path
):
    """What its scheduler kept in SSM says the cap ended it, and its scheduler group is at 0: the
    user hears it within seconds, with what to do. Redeployed (the group back at 1), the same
    state is a cluster starting again: waited for, as any."""
    import boto3

    group = "dask-loopback-scheduler"
    aws = boto3.session.Session(region_name="us-east-1")  # not boto3's default one: it keeps credentials
    aws.client("ssm").put_parameter(
        Name="/dask-loopback/cluster/spend", Type="SecureString", Overwrite=True,
        Value=json.dumps({"started": 1, "spent_usd": 20.0113, "metered_at": 2.0, "cap_usd": 20.0, "warned": True,
                          "ended": True}),
    )  # fmt: skip
    scaling = aws.client("autoscaling")
    aws.client("ec2").create_launch_template(
        LaunchTemplateName="scheduler", LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "m6i.large"}
    )
    scaling.create_auto_scaling_group(
        AutoScalingGroupName=group, LaunchTemplate={"LaunchTemplateName": "scheduler"}, MinSize=0, MaxSize=1,
        DesiredCapacity=0, AvailabilityZones=["us-east-1a"],
    )  # fmt: skip
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    document = json.loads(outputs.read_text())
    address = f"tls://127.0.0.1:{loopback_cluster.free_port()}"
    document["loopback"].update(
        scheduler_address=address, cluster_spend_parameter="/dask-loopback/cluster/spend", scheduler_group_name=group
    )
    outputs.write_text(json.dumps(document))
    started = time.monotonic()
    run = run_experiment("--stack", "loopback", "--outputs", str(outputs), "--timeout", "600", cwd=tmp_path)
    assert_one_line_error(
        run,
        "cluster loopback has reached its cost cap and ended ($20.01 of its $20.00 cap spent); raise max_cost_usd "
        "(in cdktf.json, or `cdktf deploy --var max_cost_usd=...`) and run `cdktf deploy loopback`",
    )
    assert time.monotonic() - started < 300, "refused at the hint, not after the timeout"
    scaling.set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=1)
    run = run_experiment("--stack", "loopback", "--outputs", str(outputs), "--timeout", "8", cwd=tmp_path)
    assert run.returncode == 2 and "cost cap" not in run.stderr.replace("lifetime or cost cap", ""), run.stderr
    assert run.stderr.splitlines()[-1] == (
        f"error: {address}: scheduler not reachable within 8 s; is the cluster up, and is your address in allowed_cidrs?"
    )


def test_tls_rejected(loopback, tmp_path):
    strangers = loopback_cluster.make_tls(tmp_path / "other-ca")
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    document = json.loads(outputs.read_text())
    document["loopback"].update(
        tls_ca_pem=strangers["ca.pem"],
        tls_client_cert_pem=strangers["client.pem"],
        tls_client_key_pem=strangers["client.key"],
    )
    outputs.write_text(json.dumps(document))
    run = run_experiment("--stack", "loopback", "--outputs", str(outputs), "--timeout", "10", cwd=tmp_path)
    assert_one_line_error(run, f"{loopback.address}: TLS rejected (")


def test_a_client_certificate_from_another_ca_is_one_line(loopback, tmp_path):
    """The cluster's CA, a stranger's certificate: TLS 1.3 refuses it after the handshake."""
    strangers = loopback_cluster.make_tls(tmp_path / "other-ca")
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    document = json.loads(outputs.read_text())
    document["loopback"].update(tls_client_cert_pem=strangers["client.pem"], tls_client_key_pem=strangers["client.key"])
    outputs.write_text(json.dumps(document))
    run = run_experiment("--stack", "loopback", "--outputs", str(outputs), "--timeout", "10", cwd=tmp_path)
    assert_one_line_error(run, f"{loopback.address}: TLS rejected (")
    assert "use the certificates of this cluster's deployment" in run.stderr


def test_too_few_workers_within_the_timeout(loopback, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json", workers=3)
    run = run_experiment("--stack", "loopback", "--outputs", str(outputs), "--timeout", "3", cwd=tmp_path)
    assert run.returncode == 2
    assert "worker nodes: 2/3" in run.stderr, "the user sees how many arrived"
    assert run.stderr.strip().splitlines()[-1] == (
        "error: only 2 of 3 worker nodes joined within 3 s; check the worker group in the AWS console, or pass --workers/--timeout"
    )


@pytest.fixture
def clients_view(monkeypatch):
    """The fakes below are a client's view of the scheduler (`scheduler_info`): what the
    scheduler's plain-data `identity` gives a real client (tests/test_node_trust.py reads it)."""
    monkeypatch.setattr(waiting, "scheduler_identity", lambda client: client.scheduler_info(n_workers=-1))


def test_waiting_for_nodes_says_how_many_joined_and_the_time_left(monkeypatch, capsys, clients_view):
    """The client waiting for worker nodes says so at every interval (shortened here)."""

    class TwoNodes:
        def scheduler_info(self, n_workers):
            return {"workers": {"tls://10.0.0.1:4000": {}, "tls://10.0.0.2:4000": {}}}

    monkeypatch.setattr(waiting, "HEARTBEAT_SECONDS", 0.3)
    reports = []
    with pytest.raises(ClusterError, match=r"^only 2 of 3 worker nodes joined within 2 s"):
        wait_for_nodes(TwoNodes(), 3, 2.0, lambda n, of: reports.append((n, of)))
    assert reports == [(2, 3)], "a change of count is reported once"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 2, lines  # the loop looks once a second
    assert all(
        re.fullmatch(r"  still waiting for 3 worker node\(s\), 2 joined: \d s left \(Ctrl-C to stop\)", line)
        for line in lines
    ), lines


def test_waiting_is_visible_and_ctrl_c_ends_it_in_one_line(loopback, tmp_path):
    """A scheduler that never answers: the client says so every 10 s, and Ctrl-C (SIGINT to the
    whole process group, as a terminal sends it, plotting helper included) ends it cleanly."""
    import os
    import signal
    import socket

    # A port held but never listened on: nothing else can take it while the client waits.
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    address = f"tls://127.0.0.1:{held.getsockname()[1]}"
    tls = loopback.tls_dir
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--scheduler", address, "--timeout", "60",
         "--tls-ca", str(tls / "ca.pem"), "--tls-cert", str(tls / "client.pem"), "--tls-key", str(tls / "client.key")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    lines = []
    try:
        while not any(line.startswith("  still waiting") for line in lines):
            line = process.stderr.readline()
            assert line, f"stderr closed early: {lines}"
            lines.append(line)
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = "".join(process.stderr), process.wait(timeout=120)
    finally:
        held.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert lines[0].startswith(f"connecting to {address} (for up to 60 s)"), lines
    assert f"still waiting for the scheduler at {address}: " in lines[-1] and " s left" in lines[-1], lines
    # By the client's own clock (its startup, slow on a busy machine, does not count): the first
    # line of waiting comes after 10 s of it.
    (left,) = re.findall(r": (\d+) s left", lines[-1])
    assert 48 <= int(left) <= 50, "a line every 10 s of waiting"
    assert (process.returncode, rest.strip()) == (130, "interrupted")
    assert "Traceback" not in "".join(lines) + rest


def test_the_node_meter_reports_changes_and_adds_up_node_seconds(clients_view):
    class Cluster:  # a client's view: worker addresses, two per node
        def __init__(self) -> None:
            self.hosts = ["10.0.0.1"]

        def scheduler_info(self, n_workers):
            assert n_workers == -1
            return {"workers": {f"tls://{h}:{p}": {} for h in self.hosts for p in (4000, 4001)}}

    client, changes = Cluster(), []
    with NodeMeter(client, lambda was, now: changes.append((was, now)), interval=0.05) as meter:
        started = time.monotonic()
        time.sleep(0.3)
        client.hosts, grown = ["10.0.0.1", "10.0.0.2", "10.0.0.3"], time.monotonic()
        time.sleep(0.3)
        client.hosts, shrunk = ["10.0.0.2"], time.monotonic()
        time.sleep(0.3)
    ended = time.monotonic()
    assert changes == [(1, 3), (3, 1)] and meter.peak == 3
    # Measured, not assumed: on a busy machine the sleeps last longer than asked.
    expected = (grown - started) + 3 * (shrunk - grown) + (ended - shrunk)
    assert meter.node_seconds == pytest.approx(expected, abs=0.25)


def test_the_node_meter_waits_out_a_lost_scheduler_and_goes_on_looking(clients_view):
    """While the search waits for its scheduler to come back, the meter skips its looks, and
    looks again once it is back."""

    class Cluster:
        lost, hosts = False, ["10.0.0.1"]

        def scheduler_info(self, n_workers):
            if self.lost:
                raise OSError("Timed out trying to connect")
            return {"workers": {f"tls://{host}:4000": {} for host in self.hosts}}

    client, changes = Cluster(), []
    with NodeMeter(client, lambda was, now: changes.append((was, now)), interval=0.05) as meter:
        client.lost = True
        time.sleep(0.3)
        client.lost, client.hosts = False, ["10.0.0.1", "10.0.0.2"]
        deadline = time.monotonic() + 10
        while not changes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert changes == [(1, 2)], "still looking after the scheduler came back"
    assert meter.peak == 2
