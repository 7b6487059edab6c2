"""A cluster with a dollar cap (max_cost_usd: USD 1), emulated end to end (tests/emulated/): its
scheduler node meters the spend from moto's instances and spot prices every second (60 s on
AWS), a replacement scheduler carries it on, and at the cap the cluster ends mid-search.

moto quotes USD 0.00001 an hour for every spot instance: at that price the cap is days away.
The search's test sets a price (`EmulatedDeploy.spot_price`) that reaches it in seconds.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from spotsearch.saved_fits import SUFFIX

from .emulated.harness import EmulatedDeploy
from .emulated.laptop import STACK, Laptop, run_on_laptop

pytestmark = pytest.mark.slow
CAP = "$1.00"


@pytest.fixture(scope="module")
def cluster(emulated_cost_cap_stack, tmp_path_factory):
    settings, document = emulated_cost_cap_stack
    folder = tmp_path_factory.mktemp("cost-cap")
    with EmulatedDeploy(settings, document, folder) as deploy:
        scheduler = deploy.boot("scheduler")
        scheduler.wait_until(lambda: "scheduler up" in scheduler.log(), 300, "scheduler up")
        deploy.start_group()
        scheduler.wait_until(lambda: len(deploy.workers) == 1, 120, "the worker node launched")
        (worker,) = deploy.workers.values()
        worker.wait_until(lambda: "worker up" in worker.log(), 300, "worker up")
        deploy.outputs_file = deploy.write_outputs(folder / "outputs.json", STACK)
        with Laptop(deploy) as deploy.keeper:  # in use between the tests: the idle end waits
            yield deploy


def spend(cluster: EmulatedDeploy) -> dict:
    value = cluster.aws("ssm", "get_parameter", Name=cluster.settings.spend_parameter, WithDecryption=True)
    return json.loads(value["Parameter"]["Value"]) if value["Parameter"]["Value"] != "new" else {}


def state(cluster: EmulatedDeploy) -> str:
    return cluster.aws("ssm", "get_parameter", Name=cluster.settings.state_parameter, WithDecryption=True)["Parameter"][
        "Value"
    ]


def test_the_scheduler_node_meters_the_spend_and_a_replacement_carries_it_on(cluster):
    old = cluster.interface_holder
    old.wait_until(lambda: spend(cluster).get("spent_usd", 0) > 0, 60, "a first round of the meter")
    assert "the cluster ends once it has spent $1.00 (metered every 1 s)" in old.container_output("dask-scheduler")
    before = spend(cluster)
    assert before["started"] == int(state(cluster).split()[0]) and before["cap_usd"] == 1.0
    assert not before["ended"] and not before["warned"]
    cluster.kill(old)
    killed = time.time()
    old.wait_until(lambda: cluster.interface_holder not in (None, old), 120, "a new scheduler at the address")
    new = cluster.interface_holder
    new.wait_until(lambda: spend(cluster)["metered_at"] > killed + 1, 120, "a round of the new scheduler's meter")
    after = spend(cluster)
    # The same cluster's spend, carried on: never reset, and the time without a scheduler counted
    # (the worker node ran on: at least the root volume's price over that time).
    assert after["started"] == before["started"]
    gap_hours = (after["metered_at"] - before["metered_at"]) / 3600
    assert after["spent_usd"] >= before["spent_usd"] + gap_hours * 30 * 0.08 / 730 * 0.99
    assert "the cluster has spent $0.0" in new.container_output("dask-scheduler")


def test_at_the_cap_a_search_stops_in_one_line_and_the_cluster_ends(cluster, tmp_path):
    scheduler = cluster.interface_holder
    results = tmp_path / "remote"
    # The digits six times over, a little blurred: fits of a second or so, a search of many
    # seconds, that the cap ends mid-way (the plain digits' whole search takes a few seconds).
    X, y = load_digits(return_X_y=True)
    noise = np.random.default_rng(0).normal(0, 0.5, (6 * len(X), X.shape[1]))
    np.savez(tmp_path / "digits6.npz", X=np.tile(X, (6, 1)) + noise, y=np.tile(y, 6))
    search = run_on_laptop(cluster, "svc_digits.py", results, "--data", str(tmp_path / "digits6.npz"))
    shown: list[str] = []
    reader = threading.Thread(target=lambda: shown.extend(iter(lambda: search.stdout.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while len(list(results.glob(f"*/fits/*{SUFFIX}"))) < 3:
        assert time.monotonic() < deadline and search.poll() is None, "".join(shown)
        time.sleep(0.05)
    cluster.spot_price = "3600"  # USD 1 a second for each node: the next round or two reach the cap
    try:
        search.wait(120)
    except subprocess.TimeoutExpired:
        search.kill()
    assert search.wait(10) == 2, "".join(shown)
    reader.join(60)
    output = "".join(shown)
    saved = len(list(results.glob(f"*/fits/*{SUFFIX}")))
    (run,) = results.iterdir()
    assert re.search(r"the cluster has spent \$0\.\d\d of its \$1\.00 cap so far", output), output
    last = output.strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: the cluster has reached its cost cap and ended \(\$\d+\.\d\d of its \$1\.00 cap spent\); raise "
        r"max_cost_usd \(in cdktf\.json, or `cdktf deploy --var max_cost_usd=\.\.\.`\) and redeploy; "
        rf"{saved} finished fits are saved in {re.escape(str(run / 'fits'))}, from where the same search resumes",
        last,
    ), output
    assert 3 <= saved < 54, "stopped mid-search"
    # The cluster ended as an idle one does: state, both groups at 0, every node off, nothing launched.
    scheduler.wait_powered_off(120)
    for node in cluster.nodes:
        node.wait_powered_off(180)
    assert re.search(r"cost cap of \$1\.00 reached \(\$\d+\.\d{4} spent\): closing the scheduler",
                     scheduler.container_output("dask-scheduler"))  # fmt: skip
    assert "stopping this node: Dask scheduler ended (exited, exit code 0; cost cap of $1.00 reached)" in (
        scheduler.log()
    )
    assert state(cluster) == "ended" and spend(cluster)["ended"] is True
    assert cluster.desired_capacity() == 0 and cluster.group(cluster.scheduler_group_name)["DesiredCapacity"] == 0
    rounds = len(cluster.group_history)
    scheduler.wait_until(lambda: len(cluster.group_history) >= rounds + 3, 60, "three rounds of the groups")
    assert not cluster.in_service(cluster.scheduler_group_name) and not cluster.in_service(cluster.group_name)
    assert len(cluster.schedulers) == 2, "no scheduler after the cap's end"
    cluster.check_group()


def test_a_cluster_ended_at_its_cap_is_refused_in_one_line(cluster, tmp_path):
    results = tmp_path / "again"
    search = run_on_laptop(cluster, "svc_digits.py", results, "--timeout", "600", aws=True)
    output, _ = search.communicate(timeout=300)
    assert search.returncode == 2, output
    assert re.fullmatch(
        rf"error: cluster {STACK} has reached its cost cap and ended \(\$\d+\.\d\d of its \$1\.00 cap spent\); "
        r"raise max_cost_usd \(in cdktf\.json, or `cdktf deploy --var max_cost_usd=\.\.\.`\) and run "
        rf"`cdktf deploy {STACK}`",
        output.strip().splitlines()[-1],
    ), output
    assert not any(Path(results).glob("*/fits/*"))
