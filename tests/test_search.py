"""Any search on the cluster (experiments/search.py): a lost worker node, a cluster without workers,
how scikit-learn's fits are submitted and sent."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from experiments.cluster.messages import ClusterError
from experiments.cluster.waiting import worker_nodes
from experiments.search import fit_on_cluster

from . import loopback_cluster
from .experiment_runs import (
    tiny_svc_search,
)


@pytest.mark.parametrize("engine", ["dask-ml", "scikit-learn"])
def test_search_survives_a_lost_worker_node(tmp_path, engine):
    """A node dies (nanny and worker killed) a few fits into the search: the same answer, from
    either engine."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from experiments.svc_digits import grid_search

    X, y = load_digits(return_X_y=True)
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    cluster = loopback_cluster.start(tmp_path)
    try:
        with cluster.client(wait_for_nodes=2) as client:
            undisturbed = fit_on_cluster(client, grid_search(engine), X_train, y_train)
            done = []
            killed = threading.Event()

            def progress(n: int) -> None:
                done.append(n)
                if sum(done) >= 10 and not killed.is_set():
                    cluster.kill("worker-127.0.0.3")
                    killed.set()

            disturbed = fit_on_cluster(client, grid_search(engine), X_train, y_train, on_fits=progress)
            assert killed.is_set() and sum(done) == 54, "every fit counted once, retried ones included"
            # The scheduler's view settles asynchronously (slowly on a loaded machine).
            deadline = time.monotonic() + 120
            while worker_nodes(client) != 1 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert worker_nodes(client) == 1, "the killed node must really be gone"
    finally:
        cluster.stop()
    assert disturbed.best_params_ == undisturbed.best_params_
    assert disturbed.best_score_ == undisturbed.best_score_
    np.testing.assert_array_equal(disturbed.cv_results_["mean_test_score"], undisturbed.cv_results_["mean_test_score"])


def test_a_scikit_learn_search_on_a_cluster_without_workers_waits_then_says_so():
    from distributed import Client, LocalCluster

    search, X, y = tiny_svc_search()
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty, Client(empty) as client:
        started = time.monotonic()
        with pytest.raises(ClusterError) as error:
            fit_on_cluster(client, search, X, y, wait_for_workers=1)
        assert 1 <= time.monotonic() - started < 10
    assert str(error.value) == (
        "no worker node joined within 1 s; check the worker group in the AWS console, or pass --timeout"
    )


def test_scikit_learn_searches_submit_every_fit_of_a_round_at_once():
    """So that an adaptive cluster sees the whole round, not two fits per thread it had at the start."""
    from distributed import Client, LocalCluster

    search, X, y = tiny_svc_search()
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        fit_on_cluster(client, search, X, y)
    assert search.pre_dispatch == "all" and len(search.cv_results_["params"]) == 2


def test_scikit_learn_fits_travel_as_plain_pickles_and_the_callers_warning_filters_come_back(monkeypatch):
    """Python's default warning filter for `__main__`, sent with every fit, would make distributed
    pickle every task twice, the second time with cloudpickle (slow, in the client and the scheduler)."""
    import warnings

    import cloudpickle
    from distributed import Client, LocalCluster

    by_value = []
    pickle_by_value = cloudpickle.dumps
    monkeypatch.setattr(cloudpickle, "dumps", lambda x, *a, **k: by_value.append(x) or pickle_by_value(x, *a, **k))
    search, X, y = tiny_svc_search()
    with (
        warnings.catch_warnings(),
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")  # as Python starts
        warnings.filterwarnings("ignore", message="a user's own filter")
        filters = list(warnings.filters)
        fit_on_cluster(client, search, X, y)
        assert [type(x).__name__ for x in by_value] == []
        assert warnings.filters == filters
    assert len(search.cv_results_["params"]) == 2


def test_a_scikit_learn_search_keeps_a_worker_busy_while_its_data_goes_out(monkeypatch):
    """An adaptive cluster retires idle nodes only: a busy one is there for the data."""
    from distributed import Client, LocalCluster

    search, X, y = tiny_svc_search()
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        busy_while_scattering = []
        scatter = client.scatter

        def scatter_and_look(*args, **kwargs):
            busy_while_scattering.append(sum(map(len, client.processing().values())))
            return scatter(*args, **kwargs)

        monkeypatch.setattr(client, "scatter", scatter_and_look)
        fit_on_cluster(client, search, X, y)
        monkeypatch.undo()
        assert busy_while_scattering == [1]
        deadline = time.monotonic() + 10
        while any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(client.processing().values())  # released once the data is out
        assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.extensions["events"]._events) == {}


@pytest.mark.parametrize("start", ["no worker", "its only worker leaving"])
def test_a_scikit_learn_search_without_a_worker_for_it_asks_for_one_and_goes_on_when_it_joins(start):
    """A leaving worker is in the state the autoscaler's retirement puts a worker in: still listed, given no
    more work. Data sent then would wait for a worker that nothing asks for."""
    from distributed import Client, LocalCluster

    search, X, y = tiny_svc_search()
    leaving = start == "its only worker leaving"
    with (
        LocalCluster(n_workers=int(leaving), processes=False, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        if leaving:
            client.run_on_scheduler(
                lambda dask_scheduler: [
                    dask_scheduler.handle_worker_status_change("closing_gracefully", address, "test-leaving")
                    for address in list(dask_scheduler.workers)
                ]
            )
        outcome = []
        searching = threading.Thread(target=lambda: outcome.append(fit_on_cluster(client, search, X, y)))
        searching.start()
        if leaving:
            time.sleep(1)
            assert not any(client.processing().values()), "nothing runs on a leaving worker"
            local.scale(0)  # the retirement ends: the worker is gone
            deadline = time.monotonic() + 10
            while client.scheduler_info(n_workers=-1)["workers"]:
                assert time.monotonic() < deadline, "the leaving worker did not go"
                time.sleep(0.1)
        deadline = time.monotonic() + 10
        while not client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.adaptive_target()):
            assert time.monotonic() < deadline, "an adaptive cluster would not add a node"
            time.sleep(0.1)
        local.scale(1)
        searching.join(timeout=60)
    assert outcome == [search] and len(search.cv_results_["params"]) == 2
