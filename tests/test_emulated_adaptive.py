"""An adaptive cluster (none to three worker nodes), emulated end to end: the worker group
launches nodes when the scheduler's autoscaler raises its desired capacity, and shuts down
exactly the nodes the autoscaler terminates (tests/emulated/harness.py, `start_group`).

In order, on one cluster: nothing runs without work; a search grows the group to its maximum
and no further, through a restart of the autoscaler; busy nodes are never the ones removed, and
data held on the cluster survives the nodes that go; the group shrinks to its minimum; idle,
everything ends. The autoscaler's pace is shortened (conftest.EMULATED_PACE).
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from .conftest import EMULATED_PACE
from .emulated.harness import EmulatedDeploy
from .emulated.laptop import STACK, Laptop, finish, local_run, run_on_laptop, summary

pytestmark = pytest.mark.slow
SCALE_DOWN = EMULATED_PACE["SCALE_DOWN_AFTER_SECONDS"]


@pytest.fixture(scope="module")
def cluster(emulated_adaptive_stack, tmp_path_factory):
    settings, document = emulated_adaptive_stack
    folder = tmp_path_factory.mktemp("adaptive")
    with EmulatedDeploy(settings, document, folder) as deploy:
        scheduler = deploy.boot("scheduler")
        scheduler.wait_until(lambda: "scheduler up" in scheduler.log(), 300, "scheduler up")
        deploy.start_group()
        deploy.outputs_file = deploy.write_outputs(folder / "outputs.json", STACK)
        # A client connected between the tests keeps the cluster in use (its idle time is a minute
        # here), however slowly the machine runs them; the idle test lets go of it. It submits
        # nothing, so the autoscaler sees no work from it.
        with Laptop(deploy) as deploy.keeper:
            yield deploy


def autoscaler_log(cluster: EmulatedDeploy) -> str:
    return cluster.nodes[0].container_output("dask-autoscaler")


def wait_for(cluster: EmulatedDeploy, condition, timeout: float, what: str, laptop: Laptop | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        cluster.check_group()
        assert time.monotonic() < deadline, (
            f"{what} not within {timeout:g} s\n--- autoscaler ---\n{autoscaler_log(cluster)}"
            + (f"--- laptop ---\n{''.join(laptop.output)}" if laptop else "")
        )
        time.sleep(0.25)


def running(cluster: EmulatedDeploy) -> dict:
    """Worker nodes up and neither terminated nor powered off, by instance id."""
    return {
        i: n for i, n in list(cluster.workers.items()) if not (n.terminated or n.powered_off) and "worker up" in n.log()
    }


def test_without_work_no_worker_node_runs(cluster):
    time.sleep(3 * EMULATED_PACE["AUTOSCALER_INTERVAL_SECONDS"])
    assert cluster.workers == {} and cluster.desired_capacity() == 0
    assert "following the work every 1 s (scale down after 8 s)" in autoscaler_log(cluster)


def test_a_search_from_no_node_gets_nodes_and_the_local_results(cluster, tmp_path):
    expected = local_run("svc_digits.py", tmp_path / "local")
    output = finish(run_on_laptop(cluster, "svc_digits.py", tmp_path / "remote"))
    remote = summary(tmp_path / "remote")
    assert remote["best_params"] == expected["best_params"] and remote["best_cv_score"] == expected["best_cv_score"]
    assert "an adaptive cluster of 0 to 3 worker nodes" in output
    assert re.search(r"worker nodes: 0 -> [123]", output), output
    assert remote["where"]["adaptive"] == [0, 3] and remote["where"]["worker_nodes"] == 0
    assert remote["worker_nodes"]["peak"] >= 1 and remote["worker_nodes"]["worker_node_hours"] > 0


def test_a_long_search_grows_the_group_to_its_maximum_and_no_further_across_an_autoscaler_restart(cluster):
    """scikit-learn's GridSearchCV through joblib (fit_on_cluster), 45 candidates x 3 splits of
    fits that take a second: far more than one node's two threads get through quickly."""
    # The search before this one left idle nodes: let them go first, so that the group grows
    # from none for this search alone.
    wait_for(cluster, lambda: not running(cluster) and cluster.desired_capacity() == 0, 300, "no node")
    with Laptop(cluster) as laptop:
        laptop.process.stdin.write("search 45 1\n")
        laptop.process.stdin.flush()
        wait_for(cluster, lambda: cluster.desired_capacity() == 3, 300, "a scale-up to the maximum", laptop)
        # Mid-search, the autoscaler process dies; its container restarts it; the bounds hold.
        scheduler = cluster.nodes[0]
        os.kill(scheduler.host_pid(scheduler.container("dask-autoscaler")["pid"]), signal.SIGKILL)
        assert laptop.read(300) == 0, "the search finished with its best candidate"
    wait_for(cluster, lambda: scheduler.container("dask-autoscaler")["restarts"] == 1, 120, "a restart")
    assert autoscaler_log(cluster).count("following the work") == 2
    assert max(instances for _, instances, _ in cluster.group_history) == 3, "never more nodes than max_workers"
    assert max(desired for _, _, desired in cluster.group_history) == 3
    assert sum("worker up" in n.log() for n in list(cluster.workers.values())) >= 3, "the nodes joined"


def test_busy_nodes_stay_idle_ones_go_and_held_data_survives(cluster):
    with Laptop(cluster) as laptop:
        assert laptop.ask("spin 240 0.5") == 240  # work enough for every node, for a while
        wait_for(cluster, lambda: len(running(cluster)) == 3, 300, "three nodes up")
        on = laptop.ask("hold")  # then a task that stays, on every node
        assert laptop.ask("settle", 300) == "settled"
        assert sorted(on) == sorted(running(cluster))
        first, *others = sorted(on)
        assert laptop.ask(f"keep {first}")

        time.sleep(SCALE_DOWN + 4)  # longer than the damping: busy nodes are work, Dask keeps them
        assert sorted(running(cluster)) == sorted(on), "no busy node removed"

        assert laptop.ask(f"release {first}") == on[first], "the held task ran where it was put, once"
        wait_for(cluster, lambda: cluster.workers[first].terminated, SCALE_DOWN + 90, "the idle node removed")
        assert sorted(running(cluster)) == sorted(others), "busy nodes are never the ones removed"
        assert laptop.ask("check") is True, "the data on the removed node moved before it went"
        assert f"scaling down: node {first} retired and terminated" in autoscaler_log(cluster)
        assert cluster.desired_capacity() == 2

        for instance in others:
            assert laptop.ask(f"release {instance}") == on[instance]
        # The kept data needs a node: Dask keeps one until it is dropped, then none is left.
        wait_for(cluster, lambda: len(running(cluster)) == 1, SCALE_DOWN + 90, "one node left")
        time.sleep(SCALE_DOWN + 2)
        assert len(running(cluster)) == 1 and laptop.ask("check") is True
        laptop.ask("drop")
        wait_for(cluster, lambda: not running(cluster), SCALE_DOWN + 90, "the group at its minimum")
        assert cluster.desired_capacity() == 0


def test_an_interrupted_search_lets_the_group_shrink_while_its_client_stays(cluster):
    """Ctrl-C mid-search, in a client that stays connected (a notebook): the fits it submitted
    are cancelled, so the work is gone and the nodes go after the usual scale-down delay."""
    with Laptop(cluster) as laptop:
        laptop.process.stdin.write("search 200 5\n")  # 600 fits of 5 s: far more than the test waits
        laptop.process.stdin.flush()
        wait_for(cluster, lambda: len(running(cluster)) == 3, 300, "three nodes up for the search", laptop)
        os.kill(laptop.process.pid, signal.SIGINT)
        assert laptop.read(120) == "interrupted"
        wait_for(cluster, lambda: not running(cluster), SCALE_DOWN + 120, "the group back at its minimum", laptop)
        assert cluster.desired_capacity() == 0
        assert laptop.process.poll() is None, "the client stayed connected all along"


def test_idle_the_cluster_ends_and_every_node_powers_off(cluster):
    scheduler = cluster.nodes[0]
    assert scheduler.process.poll() is None, "the cluster ended while a client was connected"
    cluster.keeper.close()  # the last client goes: the idle minute starts
    scheduler.wait_powered_off(300)
    for node in cluster.nodes[1:]:
        node.wait_powered_off(180)
    assert cluster.desired_capacity() == 0
    for node in cluster.nodes[1:]:
        assert node.terminated or "stopping this node" in node.log(), node.name
    cluster.check_group()
