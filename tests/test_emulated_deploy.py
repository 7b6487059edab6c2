"""The whole deploy, emulated (tests/emulated/harness.py): the stack's own user-data boots a
scheduler and two worker nodes, each in its own network namespace, against moto and a fake
instance metadata service; a "laptop" namespace runs the experiments with an outputs file.

The tests run in order on one cluster: boot, a search, a spot interruption mid-search, idling
to the end. Root and `ip netns` are required: without them these tests fail, they do not skip.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import ROOT
from .emulated.harness import SCHEDULER_ADDRESS, EmulatedDeploy
from .emulated.laptop import STACK, Laptop, finish, local_run, run_on_laptop, summary
from .experiment_runs import USER_MODULE

pytestmark = pytest.mark.slow
CONTAINER_UID = 10001


@pytest.fixture(scope="module")
def cluster(emulated_stack, tmp_path_factory):
    settings, document = emulated_stack
    folder = tmp_path_factory.mktemp("emulated")
    with EmulatedDeploy(settings, document, folder) as deploy:
        scheduler = deploy.boot("scheduler")
        scheduler.wait_until(lambda: "scheduler up" in scheduler.log(), 300, "scheduler up")
        deploy.start_group()  # a fixed size: the group launches its two nodes at once
        scheduler.wait_until(lambda: len(deploy.workers) == 2, 120, "two worker nodes launched")
        for worker in list(deploy.workers.values()):
            worker.wait_until(lambda w=worker: "worker up" in w.log(), 300, "worker up")
        deploy.outputs_file = deploy.write_outputs(folder / "outputs.json", STACK)
        # A client connected between the tests keeps the cluster in use (its idle time is a minute
        # here), however slowly the machine runs them; the idle test lets go of it.
        with Laptop(deploy) as deploy.keeper:
            yield deploy


def secrets_of(cluster: EmulatedDeploy) -> dict[str, str]:
    """Strings that must never appear in user-data, logs, command lines or stand-in calls."""
    found = {}
    for name, text in cluster.tls.items():
        if name.endswith(".key"):
            body = "".join(line for line in text.splitlines() if not line.startswith("-----"))
            found[f"TLS key {name}"] = body[:40]
    for node in cluster.nodes:
        found[f"{node.name} role secret key"] = node.metadata.credentials["SecretAccessKey"]
        found[f"{node.name} role session token"] = node.metadata.credentials["Token"][:40]
    token = cluster.aws("ecr", "get_authorization_token")["authorizationData"][0]["authorizationToken"]
    found["ECR password"] = base64.b64decode(token).decode().partition(":")[2]
    return found


def command_lines() -> list[str]:
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # the process ended meanwhile
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return lines


def test_boot_brings_up_scheduler_and_workers_with_private_keys(cluster):
    scheduler = cluster.nodes[0]
    for node in cluster.nodes:
        tls = node.file("/etc/dask/tls")
        assert tls.stat().st_mode & 0o777 == 0o700 and tls.stat().st_uid == CONTAINER_UID, node.name
        files = {path.name: path.stat() for path in tls.iterdir()}
        assert sorted(files) == sorted(["ca.pem", f"{node.role}.pem", f"{node.role}.key"]), node.name
        for name, stat in files.items():
            assert stat.st_mode & 0o777 == 0o400 and stat.st_uid == CONTAINER_UID, f"{node.name}: {name}"
        # Docker came from the package manager, as on Amazon Linux 2023.
        calls = node.calls()
        install = calls.index(["dnf", "install", "-y", "-q", "docker"])
        assert calls[install + 1] == ["systemctl", "enable", "--now", "docker"]
        assert all(authorized for _, authorized in node.metadata.reads), "IMDSv2 tokens on every read"
        assert any("iam/security-credentials/" in path for path, _ in node.metadata.reads), "role credentials"
    # The scheduler took over its interface, and recorded the cluster's start for the lifetime cap.
    assert cluster.interface_holder is scheduler
    assert f"scheduler up: tls://{SCHEDULER_ADDRESS}:8786" in scheduler.log()
    started = cluster.aws("ssm", "get_parameter", Name=cluster.settings.state_parameter, WithDecryption=True)
    start, image = started["Parameter"]["Value"].split(" ")
    assert start.isdigit() and image == cluster.image_uri and "the cluster started at" in scheduler.log()
    services = ("dask-scheduler", "dask-tls-gateway", "dask-autoscaler", "dask-spot-watcher")
    assert {n: scheduler.container(n)["status"] for n in services} == dict.fromkeys(services, "running")
    for instance, worker in list(cluster.workers.items()):
        assert worker.container("dask-worker")["status"] == "running"
        assert f"worker up: registered with tls://{SCHEDULER_ADDRESS}:8786" in worker.log()
        assert f"--name {instance}" in " ".join(worker.container_command("dask-worker")), "named after its instance"
    # A fixed size: the autoscaler keeps the group at 2, protected, and removes nothing.
    group = cluster.group()
    assert group["DesiredCapacity"] == group["MaxSize"] == 2
    assert all(i["ProtectedFromScaleIn"] for i in group["Instances"])

    # No secret anywhere it could leak from.
    leaks = {
        "user-data": "".join(cluster.user_data.values()),
        "node logs": "".join(node.log() for node in cluster.nodes),
        "container output": "".join(node.container_output(c) for node in cluster.nodes
                                    for c in ("dask-scheduler", "dask-worker", "dask-tls-gateway", "dask-autoscaler",
                                              "dask-spot-watcher")),
        "stand-in calls": "".join(json.dumps(node.calls()) for node in cluster.nodes),
        "command lines": "\n".join(command_lines()),
    }  # fmt: skip
    for what, secret in secrets_of(cluster).items():
        for where, text in leaks.items():
            assert secret not in text, f"{what} found in {where}"


def test_search_from_the_laptop_matches_the_local_run(cluster, tmp_path):
    expected = local_run("svc_digits.py", tmp_path / "local")
    output = finish(run_on_laptop(cluster, "svc_digits.py", tmp_path / "remote"))
    remote = summary(tmp_path / "remote")
    assert remote["where"]["kind"] == "remote" and remote["where"]["worker_nodes"] == 2, output
    assert remote["where"]["scheduler"] == f"tls://{SCHEDULER_ADDRESS}:8786"
    assert remote["best_params"] == expected["best_params"]
    assert remote["best_cv_score"] == expected["best_cv_score"]
    assert remote["tied_for_best"] == expected["tied_for_best"]


USER_SCRIPT = """
import argparse
import sys

sys.path.insert(0, sys.argv.pop(1))  # the project's checkout
from experiments import experiment, report
from experiments.cluster import cli


def main():
    parser = argparse.ArgumentParser()
    experiment.add_arguments(parser)
    args = parser.parse_args()
    plotter = report.Plotter()
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import SVC

    import mytools

    X, y = load_digits(return_X_y=True)
    search = GridSearchCV(make_pipeline(mytools.Doubler(), SVC(gamma=0.001)), {"svc__C": [0.1, 1.0]}, cv=3)
    data = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    return experiment.run_search(args, plotter, "mine", search, data)


if __name__ == "__main__":
    cli.run(main)
"""


def test_a_search_with_the_users_own_module_runs_on_nodes_without_it(cluster, tmp_path):
    """mytools.py sits beside the user's script; the image has no such module: it is sent."""
    (tmp_path / "mytools.py").write_text(USER_MODULE)
    (tmp_path / "my_search.py").write_text(USER_SCRIPT)
    scheduler = cluster.nodes[0]
    assert not (cluster.image_root / "opt" / "dask" / "mytools.py").exists()
    local = subprocess.run([sys.executable, "my_search.py", str(ROOT), "--results", "local"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert local.returncode == 0, local.stdout + local.stderr
    output = finish(cluster.on_laptop(
        sys.executable, "my_search.py", str(ROOT), "--stack", STACK, "--outputs", str(cluster.outputs_file),
        "--results", "remote", cwd=tmp_path,
    ))  # fmt: skip
    remote = summary(tmp_path / "remote")
    assert remote["where"]["kind"] == "remote", output
    assert remote["best_params"] == summary(tmp_path / "local")["best_params"]
    assert remote["best_cv_score"] == summary(tmp_path / "local")["best_cv_score"]
    assert scheduler.process.poll() is None


def test_spot_notice_mid_search_drains_one_worker_node(cluster, tmp_path):
    args = ("--samples", "8000")
    expected = local_run("pipeline_search.py", tmp_path / "local", *args)
    doomed = cluster.nodes[2]
    search = run_on_laptop(cluster, "pipeline_search.py", tmp_path / "remote", *args)
    shown = []
    reader = threading.Thread(target=lambda: shown.extend(iter(lambda: search.stdout.read(1), "")), daemon=True)
    reader.start()
    # Mid-search: the progress bar shows fits done, the search is not over.
    deadline = time.monotonic() + 300
    while not (fits := [int(n) for n in re.findall(r"fits: (\d+)fit", "".join(shown))]) or fits[-1] < 20:
        assert time.monotonic() < deadline and search.poll() is None, "".join(shown)
        time.sleep(0.1)
    doomed.metadata.notice = {"action": "terminate", "time": "2026-11-27T12:00:00Z"}
    reader.join(480)
    assert search.wait(60) == 0, "".join(shown)
    output = "".join(shown)
    assert "Best parameters" in output and fits[-1] < int(re.findall(r"fits: (\d+)fit", output)[-1])
    remote = summary(tmp_path / "remote")
    assert remote["best_params"] == expected["best_params"], output
    assert remote["best_cv_score"] == expected["best_cv_score"]

    doomed.wait_powered_off(180)
    assert re.search(r"retired 1 Dask worker\(s\) of 10\.213\.0\.\d+", doomed.container_output("dask-spot-watcher"))
    assert "stopping this node: spot interruption; workers retired" in doomed.log()
    assert ["systemctl", "poweroff"] in doomed.calls()
    # The AWS CLI is real, not a recorded stand-in: stop_node logs any attempt to scale the group.
    assert "worker group" not in doomed.log(), "a spot-interrupted node must leave the group's size alone"
    assert cluster.desired_capacity() == 2, "the group replaces the node: its size is unchanged"
    assert not cluster.nodes[1].powered_off and not cluster.nodes[0].powered_off
    cluster.nodes[0].wait_until(lambda: len(cluster.workers) == 3, 120, "a replacement launched")
    cluster.check_group()


def test_idle_cluster_scales_to_zero_and_every_node_powers_off(cluster):
    scheduler, survivor = cluster.nodes[0], cluster.nodes[1]
    assert scheduler.process.poll() is None, "the cluster ended while a client was connected"
    cluster.keeper.close()  # the last client goes: the idle minute starts
    scheduler.wait_powered_off(300)
    for node in cluster.nodes[1:]:
        node.wait_powered_off(180)
    assert cluster.desired_capacity() == 0
    assert all(node.powered_off for node in cluster.nodes)
    assert re.search(
        r"stopping this node: Dask scheduler ended \(exited, exit code 0; cluster idle for \d+ s\)", scheduler.log()
    )
    assert f"worker group {cluster.group_name} set to 0 nodes" in scheduler.log()
    assert "the scheduler has ended (Dask worker exited 0" in survivor.log()
    for node in cluster.nodes:
        assert sum(c == ["systemctl", "poweroff"] for c in node.calls()) == 1, node.name
