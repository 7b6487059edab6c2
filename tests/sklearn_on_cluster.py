"""A pytest plugin: scikit-learn's own search tests, with every search fitted on a cluster.

    python -m pytest -p tests.sklearn_on_cluster --pyargs sklearn.model_selection.tests.test_search

Every `fit` of a scikit-learn search (GridSearchCV, RandomizedSearchCV, the halving ones, and
any subclass a test makes) goes through `fit_on_cluster` on a local cluster of two worker
processes: each fit pickled, sent, run and saved as on a deployed cluster. With
SKLEARN_SEARCH_MODE=n_jobs=2 the searches run plainly with `n_jobs=2` instead (joblib's worker
processes): what tells a difference of the cluster's from one of any parallel run.

The tests that fail through the cluster are listed in DIFFERENCES, each with its reason; each
is also a failure of plain scikit-learn with n_jobs=2 (tests/test_sklearn_own_tests.py runs
both and checks). They are marked xfail(strict): one that starts to pass fails the run too,
so the list stays true.
"""

from __future__ import annotations

import os
import threading

import pytest

MODE = os.environ.get("SKLEARN_SEARCH_MODE", "cluster")

# Test ids (module::name, parameters left out) that fail through the cluster, and why. The
# reason is the same with n_jobs=2: the fits run in other processes.
STATE_IN_THE_FITTING_PROCESS = (
    "counts or records kept by an object in the fitting process, which another process changes"
)
DIFFERENCES: dict[str, str] = {}


def _patched_fits(run):
    """`fit` of scikit-learn's search classes, sent to `run(search, X, y, params)` once per
    search (the search's own inner `fit` calls, from `run`, go to scikit-learn's)."""
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection._search import BaseSearchCV
    from sklearn.model_selection._search_successive_halving import BaseSuccessiveHalving

    inside = threading.local()
    originals = {cls: cls.__dict__["fit"] for cls in (BaseSearchCV, BaseSuccessiveHalving)}

    def wrapped(original):
        def fit(self, X, y=None, **params):
            if getattr(inside, "search", False):
                return original(self, X, y, **params)
            inside.search = True
            try:
                return run(self, X, y, params)
            finally:
                inside.search = False

        fit.__wrapped__ = original
        return fit

    for cls, original in originals.items():
        cls.fit = wrapped(original)
    return originals


class OnCluster:
    def __init__(self) -> None:
        self.cluster = self.client = None
        self.originals: dict = {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session) -> None:
        if MODE == "cluster":
            from distributed import Client, LocalCluster

            self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
            self.client = Client(self.cluster)
            self.originals = _patched_fits(self._on_cluster)
        elif MODE == "n_jobs=2":
            self.originals = _patched_fits(self._with_two_jobs)
        else:
            raise pytest.UsageError(f"SKLEARN_SEARCH_MODE: {MODE!r} is not cluster or n_jobs=2")

    def _on_cluster(self, search, X, y, params):
        from experiments.search import fit_on_cluster

        return fit_on_cluster(self.client, search, X, y, wait_for_workers=120, **params)

    @staticmethod
    def _with_two_jobs(search, X, y, params):
        before = search.n_jobs
        search.n_jobs = 2
        try:
            return search.fit(X, y, **params)
        finally:
            search.n_jobs = before

    def pytest_collection_modifyitems(self, config, items) -> None:
        if os.environ.get("SKLEARN_ONLY_DIFFERENCES"):
            config.hook.pytest_deselected(items=[item for item in items if test_id(item) not in DIFFERENCES])
            items[:] = [item for item in items if test_id(item) in DIFFERENCES]
        for item in items:
            reason = DIFFERENCES.get(test_id(item))
            if reason is not None:
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True))

    def pytest_sessionfinish(self, session) -> None:
        for cls, original in self.originals.items():
            cls.fit = original
        if self.client is not None:
            self.client.close()
            self.cluster.close()


def test_id(item) -> str:
    """`test_search.py::test_name`: a test with all its parameters."""
    return f"{item.path.name}::{item.originalname}"


def pytest_configure(config) -> None:
    config.pluginmanager.register(OnCluster(), "sklearn-on-cluster")
