"""The laptop's side of the dollar cap (experiments/spotsearch/cluster/spend.py): what a search
says and does from the scheduler's spend events (image/dask_node/cost_cap.py logs them on a
node; here a client logs them, as the scheduler role may). A cluster ended at its cap before
a search starts: tests/test_cluster_waiting.py; the whole of it: test_emulated_cost_cap.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import warnings

import pytest
from distributed import Client, LocalCluster
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

from spotsearch import fit_on_cluster
from spotsearch.cluster import spend
from spotsearch.cluster.messages import ClusterError

from .restartable_cluster import CountedSaves, RestartableCluster

ENDED = {"spent_usd": 20.0113, "cap_usd": 20.0, "metered_at": 2.0, "warning": False, "ended": True}
RAISE = "raise max_cost_usd (in cdktf.json, or `cdktf deploy --var max_cost_usd=...`) and redeploy"


@pytest.fixture
def client():
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
        yield client


def logged(client, message: dict) -> None:
    before = len(client.get_events(spend.TOPIC))
    client.log_event(spend.TOPIC, message)
    deadline = time.monotonic() + 30
    while len(client.get_events(spend.TOPIC)) == before:
        assert time.monotonic() < deadline, "the event was not logged"
        time.sleep(0.01)


def subscribed(client) -> None:
    """Subscribing goes over the client's stream, an event over a call of its own: a task sent
    on the stream after it, once done, shows the scheduler has read the subscription."""
    assert client.submit(int, 1, pure=False).result(timeout=30) == 1


def test_a_search_starts_with_the_spend_so_far_and_says_nothing_where_nothing_meters(client, capsys):
    spend.say_at_start(client)
    assert capsys.readouterr().err == ""  # a local or plain Dask cluster has no cap
    logged(client, {**ENDED, "spent_usd": 1.234, "ended": False})
    spend.say_at_start(client)
    assert capsys.readouterr().err == "the cluster has spent $1.23 of its $20.00 cap so far; it ends at the cap\n"


def test_a_cluster_at_its_cap_is_refused_before_any_work(client):
    logged(client, ENDED)
    search = GridSearchCV(SVC(), {"C": [1, 10]}, cv=2)
    with pytest.raises(ClusterError) as refused:
        fit_on_cluster(search, *load_digits(return_X_y=True), client=client, progress=False)
    assert (
        str(refused.value)
        == f"the cluster has reached its cost cap and ended ($20.01 of its $20.00 cap spent); {RAISE}"
    )
    assert not hasattr(search, "cv_results_")


def test_the_warning_is_said_once_while_a_search_runs(client, capsys):
    with spend.CapWatch(client) as watch:
        subscribed(client)
        logged(client, {**ENDED, "spent_usd": 16.5, "warning": True, "ended": False})
        logged(client, {**ENDED, "spent_usd": 17.0, "warning": False, "ended": False})
        deadline = time.monotonic() + 30
        while "warning" not in capsys.readouterr().err:
            assert time.monotonic() < deadline, "no warning"
            time.sleep(0.05)
        assert watch.ended is None
    time.sleep(0.5)
    assert "warning" not in capsys.readouterr().err, "said once"


def test_any_client_shows_the_schedulers_warning_and_a_search_says_it_in_one_line_instead(client, capsys):
    """dask_node.cost_cap logs a plain `warn` event too: every Client (a notebook's) shows it."""
    text = f"{spend.CLIENT_WARNING}the cluster has spent 80% of its cost cap ($16.00 of $20.00); it ends at the cap"

    def warned_with(expected: str) -> list[str]:
        with warnings.catch_warnings(record=True) as shown:  # the filters as they are (a new text: shown once)
            logged(client, {**ENDED, "ended": False})  # the control, on the topic: no warning
            client.log_event("warn", expected)
            deadline = time.monotonic() + 5
            while not shown and time.monotonic() < deadline:
                time.sleep(0.05)
            return [str(w.message) for w in shown]

    assert warned_with(text) == [text]
    with spend.CapWatch(client):
        assert warned_with(text.replace("80%", "81%")) == []  # left out while a search runs: it says it itself
    assert warned_with(text.replace("80%", "82%")) == [text.replace("80%", "82%")]


def test_a_search_whose_cluster_reaches_its_cap_stops_at_once_in_one_line_with_its_saved_fits(tmp_path):
    """The scheduler says the cap ended the cluster, then goes, for good: the search does not wait
    for it to come back (as it would for a lost spot scheduler), and keeps its finished fits."""
    cluster = RestartableCluster(tmp_path)
    saved = CountedSaves(tmp_path / "fits")
    X, y = load_digits(return_X_y=True)
    search = GridSearchCV(SVC(), {"C": [0.1, 1, 10, 100], "gamma": [1e-4, 1e-3, 1e-2]}, cv=5)
    cluster.start()
    gone = []

    def the_cap_ends_the_cluster(meter: Client) -> None:
        while len(saved) < 5:
            time.sleep(0.02)
        logged(meter, ENDED)
        time.sleep(0.5)
        gone.append(time.monotonic())
        cluster.kill_scheduler()

    try:
        with Client(cluster.address, timeout="60s") as client, Client(cluster.address, timeout="60s") as meter:
            client.wait_for_workers(2, timeout=120)
            threading.Thread(target=the_cap_ends_the_cluster, args=(meter,), daemon=True).start()
            with pytest.raises(ClusterError) as stopped:
                fit_on_cluster(search, X, y, client=client, saved_fits=saved, wait_for_workers=300, progress=False)
            ended = time.monotonic()
    finally:
        cluster.stop()
    assert str(stopped.value) == (
        f"the cluster has reached its cost cap and ended ($20.01 of its $20.00 cap spent); {RAISE}; "
        f"{len(saved)} finished fits are saved in {tmp_path / 'fits'}, from where the same search resumes"
    )
    assert 5 <= len(saved) < 60 and ended - gone[0] < 120, "stopped, not waited for a scheduler for 300 s"


def test_a_script_whose_cluster_reaches_its_cap_ends_in_one_line_without_waiting_for_a_scheduler(tmp_path):
    """The shipped script on a TLS cluster like a deployed one: what it does after the search
    (Dask's performance report, the node count's last look, closing) asks no gone scheduler."""
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits

    from .conftest import ROOT
    from .loopback_cluster import start

    X, y = load_digits(return_X_y=True)  # six times over, blurred: fits of a second or so
    noise = np.random.default_rng(0).normal(0, 0.5, (6 * len(X), X.shape[1]))
    np.savez(tmp_path / "digits6.npz", X=np.tile(X, (6, 1)) + noise, y=np.tile(y, 6))
    cluster = start(tmp_path / "cluster", workers=("127.0.0.2",))
    try:
        outputs = cluster.outputs_file(tmp_path / "outputs.json", workers=1)
        script = subprocess.Popen(
            [sys.executable, str(ROOT / "experiments" / "svc_digits.py"), "--stack", "loopback", "--outputs",
             str(outputs), "--results", str(tmp_path / "r"), "--data", str(tmp_path / "digits6.npz")],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while len(list((tmp_path / "r").glob("*/fits/*.fit"))) < 3:
            assert time.monotonic() < deadline and script.poll() is None, script.stderr.read()
            time.sleep(0.05)
        with cluster.client() as meter:
            logged(meter, ENDED)
        time.sleep(0.5)
        # As at the cap: the scheduler closes, then its node powers off and its address answers
        # nothing. Here a listener that never speaks holds the port: connections to it hang.
        scheduler = cluster.processes["scheduler"]
        os.killpg(scheduler.pid, signal.SIGTERM)
        scheduler.wait(timeout=60)
        silent = socket.create_server(("127.0.0.1", cluster.port), backlog=64)
        gone = time.monotonic()
        _, errors = script.communicate(timeout=300)
        ended = time.monotonic()
    finally:
        cluster.stop()
        if "silent" in locals():
            silent.close()
    (run,) = (tmp_path / "r").iterdir()
    saved = len(list((run / "fits").glob("*.fit")))
    assert script.returncode == 2, errors
    assert errors.strip().splitlines()[-1] == (
        f"error: the cluster has reached its cost cap and ended ($20.01 of its $20.00 cap spent); {RAISE}; "
        f"{saved} finished fits are saved in {run / 'fits'}, from where the same search resumes"
    )
    assert ended - gone < 60, "ended at once, not after the client's timeout"
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
