"""A spot scheduler that comes back by itself, on the emulated deploy (tests/emulated/harness.py).

One cluster, in order: (a) a spot notice on the scheduler node's metadata as a search starts,
then EC2 takes that instance mid-search; (b) the next scheduler node killed outright
mid-search; then the cluster, idle, ends. Each time the scheduler's group of one boots a new scheduler node from the same
user-data, which takes over the scheduler's interface (the same address); the worker nodes
rejoin it; `svc_digits.py --stack` reconnects, keeps its saved fits, runs the others, and ends
with the local run's results. What each replacement cost is printed (run with -s to see it):
finished fits lost (run again, as are those running at the loss) and the seconds from the loss
to the next finished fit.

EC2 gives a spot instance two minutes after its notice. The search here lasts seconds, so EC2
takes the instance as soon as the scheduler has handed over (its group has launched the
replacement) and a few fits are saved: the replacement is still booting then, which on AWS it
would do during those two minutes.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from experiments.saved_fits import SUFFIX

from .conftest import EMULATED_REPLACEMENT_WAIT_SECONDS
from .emulated.harness import SCHEDULER_ADDRESS, EmulatedDeploy, Node
from .emulated.laptop import STACK, Laptop, local_run, run_on_laptop, summary

pytestmark = pytest.mark.slow
SVC_DIGITS_FITS = 18 * 3  # candidates x folds
SAVED_BEFORE_LOSS = 3  # the scheduler goes once this many fits are saved on the laptop


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    return local_run("svc_digits.py", tmp_path_factory.mktemp("local") / "local")


@pytest.fixture(scope="module")
def cluster(emulated_stack, tmp_path_factory):
    settings, document = emulated_stack
    folder = tmp_path_factory.mktemp("replaced")
    with EmulatedDeploy(settings, document, folder) as deploy:
        scheduler = deploy.boot("scheduler")
        scheduler.wait_until(lambda: "scheduler up" in scheduler.log(), 300, "scheduler up")
        deploy.start_group()
        scheduler.wait_until(lambda: len(deploy.workers) == 2, 120, "two worker nodes launched")
        for worker in list(deploy.workers.values()):
            worker.wait_until(lambda w=worker: "worker up" in w.log(), 300, "worker up")
        deploy.outputs_file = deploy.write_outputs(folder / "outputs.json", STACK)
        deploy.started = state(deploy)
        with Laptop(deploy) as deploy.keeper:  # the cluster stays in use between the tests
            yield deploy


def state(cluster: EmulatedDeploy) -> str:
    parameter = cluster.aws("ssm", "get_parameter", Name=cluster.settings.state_parameter, WithDecryption=True)
    return parameter["Parameter"]["Value"]


def saved_fits(results: Path) -> list[Path]:
    return sorted(results.glob(f"*/fits/*{SUFFIX}"))


def search_losing_its_scheduler(
    cluster: EmulatedDeploy, results: Path, old: Node, lose, *, started=lambda: None, ready=lambda: True
) -> tuple[str, dict]:
    """svc_digits.py on the laptop; `started()` once it shows progress, `lose()` once
    SAVED_BEFORE_LOSS fits are saved and `ready()` holds. Returns its
    output and what losing the scheduler cost, counted from the moment its node was gone: the
    fits saved by then (kept), the finished fits the scheduler had counted but the laptop had not
    saved (lost with it: they run again, as do the fits running at the loss, at most one per
    slot), and the seconds until the next fit was saved."""
    search = run_on_laptop(cluster, "svc_digits.py", results)
    shown: list[str] = []
    reader = threading.Thread(target=lambda: shown.extend(iter(lambda: search.stdout.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while "fits:" not in "".join(shown):
        assert time.monotonic() < deadline and search.poll() is None, "".join(shown)
        time.sleep(0.02)
    started()
    while len(saved_fits(results)) < SAVED_BEFORE_LOSS or not ready():
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


def assert_taken_over(cluster: EmulatedDeploy, old: Node, output: str, results: Path, expected: dict) -> Node:
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
    assert len(cluster.workers) == 2 and not any(w.gone for w in cluster.workers.values())
    for worker in cluster.workers.values():
        assert worker.log().count("worker up: rejoined the new scheduler") >= 1, worker.log()
    assert cluster.desired_capacity() == 2
    assert cluster.group(cluster.scheduler_group_name)["DesiredCapacity"] == 1
    cluster.check_group()
    return new


def test_a_spot_notice_hands_over_to_a_new_scheduler_at_the_same_address(cluster, expected, tmp_path):
    old = cluster.interface_holder
    before = set(cluster.schedulers)

    def notice() -> None:
        old.metadata.notice = {"action": "terminate", "time": "2026-11-29T12:00:00Z"}

    def handed_over() -> bool:  # the watcher took the instance out of the group, which launched the next
        return len(cluster.schedulers) > len(before)

    results = tmp_path / "remote"
    output, cost = search_losing_its_scheduler(
        cluster, results, old, old.terminate, started=notice, ready=handed_over
    )  # EC2 takes the instance: an orderly shutdown
    print(f"\nspot notice as the search starts, the instance taken mid-search: {json.dumps(cost)}")
    (new,) = [cluster.schedulers[i] for i in set(cluster.schedulers) - before]
    assert assert_taken_over(cluster, old, output, results, expected) is new, "the replacement launched at the notice"
    assert old.container_output("dask-spot-watcher").count("launches its replacement now") == 1
    old.wait_powered_off(60)


def test_a_killed_scheduler_node_is_replaced_and_the_search_goes_on(cluster, expected, tmp_path):
    old = cluster.interface_holder
    results = tmp_path / "remote"
    output, cost = search_losing_its_scheduler(cluster, results, old, lambda: cluster.kill(old))
    print(f"\nscheduler node killed mid-search: {json.dumps(cost)}")
    new = assert_taken_over(cluster, old, output, results, expected)
    assert new.log().count("the scheduler's network interface is not free yet") == 0, "the interface was free"
    assert cost["seconds_to_next_fit"] < EMULATED_REPLACEMENT_WAIT_SECONDS, cost


def test_the_cluster_ends_when_idle_after_its_replacements(cluster):
    """Still one cluster: its last scheduler ends it, and every node of it stops."""
    scheduler = cluster.interface_holder
    cluster.keeper.close()
    scheduler.wait_powered_off(300)
    for node in cluster.nodes:
        node.wait_powered_off(180)
    assert re.search(r"Dask scheduler ended \(exited, exit code 0; cluster idle for \d+ s\)", scheduler.log())
    assert state(cluster) == "ended"
    assert cluster.group(cluster.scheduler_group_name)["DesiredCapacity"] == 0, "no scheduler comes back"
    assert cluster.desired_capacity() == 0
    time.sleep(3)  # the group thread's rounds: nothing new is launched
    assert not cluster.in_service(cluster.scheduler_group_name) and not cluster.in_service(cluster.group_name)
    assert len(cluster.schedulers) == 3, "one scheduler per replacement, no more"
