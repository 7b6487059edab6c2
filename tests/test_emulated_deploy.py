"""The whole deploy, emulated (tests/emulated/harness.py): the stack's own user-data boots a
scheduler and two worker nodes, each in its own network namespace, against moto and a fake
instance metadata service; a "laptop" namespace runs the experiments with an outputs file.

The tests run in order on one cluster: boot, a search, a spot interruption of a worker node
mid-search, then the scheduler's own loss twice (a spot notice, then its node killed), each
mid-search, and idling to the end.

A lost scheduler comes back by itself: its group of one boots a new scheduler node from the
same user-data, which takes over the scheduler's interface (the same address); the worker
nodes rejoin it; `svc_digits.py --stack` reconnects, keeps its saved fits, runs the others,
and ends with the local run's results. What each loss cost is printed (run with -s to see
it): the finished fits lost (run again, as are those running at the loss) and the seconds
from the loss to the next finished fit. EC2 gives a spot instance two minutes after its
notice, longer than the whole search takes here: the notice comes before the search, the
scheduler hands over (its group launches the replacement, which boots and waits for the
address, as it would during those two minutes), and EC2 takes the instance as the search
gets under way (its orderly shutdown takes a second or two; the search, a few). Root and `ip netns` are required: without them these tests fail, they do not skip.
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

from spotsearch.saved_fits import SUFFIX

from .conftest import EMULATED_REPLACEMENT_WAIT_SECONDS, ROOT
from .emulated.harness import SCHEDULER_ADDRESS, EmulatedDeploy, Node
from .emulated.laptop import STACK, Laptop, finish, local_run, run_on_laptop, summary
from .experiment_runs import USER_MODULE

pytestmark = pytest.mark.slow
CONTAINER_UID = 10001
SVC_DIGITS_FITS = 18 * 3  # candidates x folds
# A killed scheduler goes at once, once this many fits are saved on the laptop; EC2 takes a spot
# instance as the search gets under way, for its shutdown takes a second or two, and the whole
# search here only a few.
SAVED_BEFORE_KILL = 3


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
        deploy.started = state(deploy)
        # A client connected between the tests keeps the cluster in use (its idle time is a minute
        # here), however slowly the machine runs them; the idle test lets go of it.
        with Laptop(deploy) as deploy.keeper:
            yield deploy


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    """svc_digits.py's local run, which every remote run must match."""
    return local_run("svc_digits.py", tmp_path_factory.mktemp("local") / "local")


def state(cluster: EmulatedDeploy) -> str:
    parameter = cluster.aws("ssm", "get_parameter", Name=cluster.settings.state_parameter, WithDecryption=True)
    return parameter["Parameter"]["Value"]


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
    # Each node logs its boot as a timeline: each step's seconds and when it ended, from the
    # start of its user-data (tls beside ecr-login and pull).
    for node in cluster.nodes:
        steps = re.findall(r"timeline: ([\w-]+) (\d+) s, at (\d+) s$", node.log(), re.M)
        names = [name for name, _, _ in steps]
        first, last = (["state"], ["address", "dask"]) if node.role == "scheduler" else ([], ["scheduler", "dask"])
        assert names[: len(first) + 2] == [*first, "metadata", "docker"] and names[-2:] == last, names
        assert sorted(names[len(first) + 2 : -2]) == ["ecr-login", "pull", "tls"], names
        assert "timeline: user-data started" in node.log()
        print(f"\n{node.name} boot timeline: " + ", ".join(f"{n} {s} s (at {a} s)" for n, s, a in steps))
    # The scheduler took over its interface, and recorded the cluster's start for the lifetime cap.
    assert cluster.interface_holder is scheduler
    assert f"scheduler up: tls://{SCHEDULER_ADDRESS}:8786" in scheduler.log()
    start, image = state(cluster).split(" ")
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


def test_search_from_the_laptop_matches_the_local_run(cluster, expected, tmp_path):
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
from spotsearch import experiment, plots, report

from spotsearch.cluster import cli


def main():
    parser = argparse.ArgumentParser()
    experiment.add_arguments(parser)
    args = parser.parse_args()
    plotter = plots.Plotter()
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
    assert "sent your own code to the cluster: mytools.py\n" in output, "what was sent, in one line"
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


def saved_fits(results: Path) -> list[Path]:
    return sorted(results.glob(f"*/fits/*{SUFFIX}"))


def search_losing_its_scheduler(
    cluster: EmulatedDeploy, results: Path, old: Node, lose, saved_before_loss: int
) -> tuple[str, dict]:
    """svc_digits.py on the laptop; `lose()` once its fits are under way and `saved_before_loss`
    of them are saved. Returns its
    output and what losing the scheduler cost, counted from the moment its node was gone: the
    fits saved by then (kept), the finished fits the scheduler had counted but the laptop had not
    saved (lost with it: they run again, as do the fits running at the loss, at most one per
    slot), and the seconds until the next fit was saved."""
    search = run_on_laptop(cluster, "svc_digits.py", results)
    shown: list[str] = []
    reader = threading.Thread(target=lambda: shown.extend(iter(lambda: search.stdout.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while "fits:" not in "".join(shown) or len(saved_fits(results)) < saved_before_loss:
        assert time.monotonic() < deadline and search.poll() is None, "".join(shown)
        time.sleep(0.02)
    lose()
    old.wait_until(lambda: old.gone, 60, "its instance gone")
    gone_at = time.time()
    kept = {path: path.stat().st_mtime for path in saved_fits(results)}
    assert len(kept) < SVC_DIGITS_FITS, "the search ended before its scheduler was lost: nothing was tested"
    reader.join(600)
    assert search.wait(60) == 0, "".join(shown)
    output = "".join(shown)
    before_loss = output.split("lost the connection to the scheduler")[0]
    counted = [int(n) for n in re.findall(rf"fits:[^\r\n]*?(\d+)/{SVC_DIGITS_FITS}", before_loss)]
    fits = saved_fits(results)
    after = sorted(m for path in fits if (m := path.stat().st_mtime) > gone_at)
    cost = {
        "fits_saved_at_loss": len(kept),
        "finished_fits_lost": max(0, max(counted, default=0) - len(kept)),
        "seconds_to_next_fit": round(after[0] - gone_at, 1),
    }
    assert len(fits) == SVC_DIGITS_FITS, "every fit saved, once"
    assert all(path.stat().st_mtime == mtime for path, mtime in kept.items()), "a saved fit was run again"
    return output, cost


def live_workers(cluster: EmulatedDeploy) -> dict[str, Node]:
    return {instance: node for instance, node in cluster.workers.items() if not node.gone}


def assert_taken_over(
    cluster: EmulatedDeploy, old: Node, output: str, results: Path, expected: dict, workers: dict[str, Node]
) -> Node:
    """The search's results, the new scheduler at the same address, the same worker nodes."""
    assert f"lost the connection to the scheduler at tls://{SCHEDULER_ADDRESS}:8786" in output
    assert "reconnected: the search goes on with the fits not yet finished" in output
    remote = summary(results)
    assert remote["where"]["scheduler"] == f"tls://{SCHEDULER_ADDRESS}:8786"
    assert remote["best_params"] == expected["best_params"], output
    assert remote["best_cv_score"] == expected["best_cv_score"]
    assert remote["tied_for_best"] == expected["tied_for_best"]

    new = cluster.interface_holder
    assert new is not None and new is not old and new.role == "scheduler"
    assert f"scheduler up: tls://{SCHEDULER_ADDRESS}:8786" in new.log()
    # The lifetime cap counts from the cluster's start, not the new scheduler's.
    assert state(cluster) == cluster.started
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(cluster.started.split()[0])))
    assert f"the cluster started at {started}" in new.log()
    assert "cluster state set to" not in old.log() + new.log(), "nothing ended the cluster"
    # The same two worker nodes, rejoined; nothing was replaced or scaled.
    assert live_workers(cluster) == workers
    for worker in workers.values():
        # A search of seconds may end on the first node back, before the other has rejoined.
        worker.wait_until(lambda w=worker: "worker up: rejoined the new scheduler" in w.log(), 120, "a rejoin")
    assert cluster.desired_capacity() == 2
    assert cluster.group(cluster.scheduler_group_name)["DesiredCapacity"] == 1
    cluster.check_group()
    return new


def test_a_spot_notice_hands_over_to_a_new_scheduler_at_the_same_address(cluster, expected, tmp_path):
    old, workers = cluster.interface_holder, live_workers(cluster)
    before = set(cluster.schedulers)
    old.metadata.notice = {"action": "terminate", "time": "2026-11-29T12:00:00Z"}
    # The watcher takes the instance out of the group, which launches the next one at once.
    old.wait_until(lambda: len(cluster.schedulers) > len(before), 120, "a replacement launched at the notice")
    (new,) = [cluster.schedulers[i] for i in set(cluster.schedulers) - before]
    assert old.container_output("dask-spot-watcher").count("launches its replacement now") == 1

    results = tmp_path / "remote"
    output, cost = search_losing_its_scheduler(cluster, results, old, old.terminate, 0)  # EC2 takes it
    print(f"\nspot notice, then the instance taken mid-search: {json.dumps(cost)}")
    assert assert_taken_over(cluster, old, output, results, expected, workers) is new
    old.wait_powered_off(60)


def test_a_killed_scheduler_node_is_replaced_and_the_search_goes_on(cluster, expected, tmp_path):
    old, workers = cluster.interface_holder, live_workers(cluster)
    results = tmp_path / "remote"
    output, cost = search_losing_its_scheduler(cluster, results, old, lambda: cluster.kill(old), SAVED_BEFORE_KILL)
    print(f"\nscheduler node killed mid-search: {json.dumps(cost)}")
    new = assert_taken_over(cluster, old, output, results, expected, workers)
    assert new.log().count("the scheduler's network interface is not free yet") == 0, "the interface was free"
    assert cost["seconds_to_next_fit"] < EMULATED_REPLACEMENT_WAIT_SECONDS, cost


def test_idle_cluster_scales_to_zero_and_every_node_powers_off(cluster):
    """Still one cluster after its replacements: its last scheduler ends it, and every node stops."""
    scheduler = cluster.interface_holder
    survivor = next(iter(live_workers(cluster).values()))
    assert not scheduler.gone, "the cluster ended while a client was connected"
    cluster.keeper.close()  # the last client goes: the idle minute starts
    scheduler.wait_powered_off(300)
    for node in cluster.nodes:
        node.wait_powered_off(180)
    assert re.search(
        r"stopping this node: Dask scheduler ended \(exited, exit code 0; cluster idle for \d+ s\)", scheduler.log()
    )
    assert state(cluster) == "ended"
    assert f"scheduler group {cluster.scheduler_group_name} set to 0 nodes" in scheduler.log()
    assert f"worker group {cluster.group_name} set to 0 nodes" in scheduler.log()
    assert "the scheduler has ended (Dask worker exited 0" in survivor.log()
    assert cluster.desired_capacity() == 0 and cluster.group(cluster.scheduler_group_name)["DesiredCapacity"] == 0
    rounds = len(cluster.group_history)  # three more rounds of the emulated groups: nothing new is launched
    scheduler.wait_until(lambda: len(cluster.group_history) >= rounds + 3, 60, "three rounds of the groups")
    assert not cluster.in_service(cluster.scheduler_group_name) and not cluster.in_service(cluster.group_name)
    assert len(cluster.schedulers) == 3, "one scheduler per loss, no more"
    for node in cluster.nodes:  # once each, but for the nodes taken from outside (spot, killed)
        assert sum(c == ["systemctl", "poweroff"] for c in node.calls()) == (0 if node.terminated else 1), node.name
    cluster.check_group()
