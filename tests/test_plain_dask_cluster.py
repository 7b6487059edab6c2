"""A search on a plain Dask cluster that has never seen this project: `dask scheduler` and
`dask worker` processes with the pinned runtime packages alone. What the nodes run of spotsearch
(experiments/spotsearch/on_nodes.py, as node_code.py names it) travels with the search; no
image or install holds it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig

import pytest

from .loopback_cluster import free_port
from .search_cases import assert_clean

pytestmark = pytest.mark.slow


def without_this_project() -> dict[str, str]:
    """The environment of `python -S`: the venv's packages on PYTHONPATH, no .pth file read, so
    none of the editable install of spotsearch (nor the checkout's folders on sys.path)."""
    return {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"], "PYTHONNOUSERSITE": "1"}


@pytest.fixture(scope="module")
def plain_cluster(tmp_path_factory):
    from distributed import Client

    folder = tmp_path_factory.mktemp("plain-dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    plain = [sys.executable, "-S", "-m"]
    scheduler = [*plain, "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                 "--no-dashboard"]  # fmt: skip
    worker = [*plain, "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-dashboard",
              "--host", "127.0.0.1", "--no-nanny"]  # fmt: skip
    processes = [subprocess.Popen(scheduler, cwd=folder, env=without_this_project())]
    try:
        processes += [subprocess.Popen(worker, cwd=folder, env=without_this_project()) for _ in range(2)]
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            yield client
    finally:
        # Workers first: a worker whose scheduler went first retries it for a while.
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_plain_cluster_does_not_have_this_project(plain_cluster):
    """The control: neither the scheduler nor the workers can import spotsearch before a search."""
    assert importlib.util.find_spec("spotsearch") is not None, "this process has it"
    assert plain_cluster.run_on_scheduler(importlib.util.find_spec, "spotsearch") is None
    assert set(plain_cluster.run(importlib.util.find_spec, "spotsearch").values()) == {None}


@pytest.mark.parametrize("engine", ["scikit-learn", "dask-ml"])
def test_fit_on_cluster_runs_unchanged_on_a_plain_dask_cluster(plain_cluster, engine):
    from sklearn.base import clone

    from spotsearch import fit_on_cluster

    from .experiment_runs import tiny_svc_search

    search, X, y = tiny_svc_search()
    if engine == "dask-ml":
        from dask_ml.model_selection import GridSearchCV

        search = GridSearchCV(search.estimator, search.param_grid, cv=search.cv)
    expected = clone(search).fit(X, y)
    fitted = fit_on_cluster(search, X, y, client=plain_cluster, progress=False)
    assert list(fitted.cv_results_["params"]) == list(expected.cv_results_["params"])
    for column in ("mean_test_score", "rank_test_score"):
        assert list(fitted.cv_results_[column]) == list(expected.cv_results_[column]), column
    assert fitted.best_params_ == expected.best_params_
    assert_clean(plain_cluster)


def test_what_the_nodes_got_is_the_node_code_alone(plain_cluster):
    from spotsearch import fit_on_cluster

    from .experiment_runs import tiny_svc_search

    search, X, y = tiny_svc_search()
    fit_on_cluster(search, X, y, client=plain_cluster, progress=False)

    from spotsearch import node_code

    def spotsearch_here() -> list[str]:
        return sorted(name for name in sys.modules if name.startswith("spotsearch"))

    assert set(map(tuple, plain_cluster.run(spotsearch_here).values())) == {(node_code.NAME,)}
    assert plain_cluster.run_on_scheduler(spotsearch_here) == [node_code.NAME]
