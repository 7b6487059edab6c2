"""Each private name of joblib, scikit-learn, distributed, dask and dask-ml that spotsearch relies
on (experiments/spotsearch/upstream.py) still means what the package takes it to mean: an
upgrade that renames or changes one fails here, by name, and not somewhere in a search."""

from __future__ import annotations

import ast
import importlib
import inspect

import numpy as np
import pytest
from distributed import Client, LocalCluster

from spotsearch import upstream

from .conftest import ROOT

LIBRARY = ROOT / "experiments" / "spotsearch"
UPSTREAM_PACKAGES = ("joblib", "sklearn", "dask", "distributed", "dask_ml")


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.mark.parametrize("name", upstream.DASK_BACKEND_INTERNALS)
def test_joblibs_dask_backend_has_what_cluster_backend_uses(client, name):
    backend = upstream.dask_backend()(client=client)
    backend.start_call()  # sets the collector's flag
    try:
        assert hasattr(backend, name), f"joblib's DaskDistributedBackend has no {name} any more"
    finally:
        backend.stop_call()
    assert inspect.iscoroutinefunction(upstream.dask_backend()._collect), "_collect is a coroutine no more"


def test_joblibs_batch_task_names_carry_the_function_and_the_number_of_calls():
    from joblib._dask import Batch
    from sklearn.model_selection._validation import _fit_and_score
    from sklearn.utils.parallel import delayed

    call = delayed(_fit_and_score)(None, None, None)
    batch = repr(Batch([call] * 3))
    assert (match := upstream.JOBLIB_BATCH.search(batch)), batch
    assert match.group(1) == "3"
    assert upstream.wrapped_function(call[0]) is _fit_and_score
    assert _fit_and_score.__name__ == upstream.FIT_AND_SCORE
    assert not upstream.JOBLIB_BATCH.search(repr(Batch([delayed(len)([])]))), "the control: another function"


def test_fit_and_score_takes_every_keyword_spotsearch_reads():
    from sklearn.model_selection._validation import _fit_and_score

    parameters = inspect.signature(_fit_and_score).parameters
    assert [name for name in upstream.FIT_AND_SCORE_KEYWORDS if name not in parameters] == []


def test_dask_mls_fit_tasks_are_named_as_the_fit_counter_reads_them():
    import dask
    from dask_ml.model_selection import GridSearchCV
    from sklearn.linear_model import LogisticRegression

    keys = []

    def scheduler(graph, wanted, **options):
        keys.extend(str(key) for key in dict(graph))
        return dask.get(graph, wanted)

    X, y = np.random.default_rng(0).normal(size=(40, 3)), np.arange(40) % 2
    GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=3, scheduler=scheduler).fit(X, y)
    assert sum(bool(upstream.DASK_ML_FIT.search(key)) for key in keys) == 2 * 3


def test_clone_keeps_the_estimator_config_a_fits_key_includes():
    import sklearn
    from sklearn.base import clone
    from sklearn.preprocessing import StandardScaler

    with sklearn.config_context(enable_metadata_routing=True):
        scaler = StandardScaler().set_output(transform="pandas").set_fit_request(sample_weight=True)
        copy = clone(scaler)
    for name in upstream.ESTIMATOR_CONFIG:
        assert hasattr(copy, name), f"clone keeps no {name} any more"


def test_callback_contexts_and_estimators_keep_their_callbacks_where_fit_calls_looks():
    from sklearn.callback import CallbackSupportMixin  # noqa: F401 (the experimental API is there)
    from sklearn.callback._callback_context import CallbackContext

    source = inspect.getsource(CallbackContext)
    assert f"{upstream.CONTEXT_CALLBACKS} =" in source
    assert f'"{upstream.ESTIMATOR_CALLBACKS}"' in source


def test_a_futures_outcome_is_its_result_or_its_exception(client):
    good, bad = client.submit(int, "3", pure=False), client.submit(int, "x", pure=False)
    assert client.sync(upstream.outcome, good) == 3
    with pytest.raises(ValueError):
        bad.result()
    kind, error, _ = client.sync(upstream.outcome, bad)  # what joblib's collector takes for an error
    assert kind is ValueError and isinstance(error, ValueError)


def test_data_node_and_incremental_search_base():
    import dask

    assert dask.get({"a": upstream.data_node("a", [1, 2])}, "a") == [1, 2]
    from dask_ml.model_selection import HyperbandSearchCV

    assert issubclass(HyperbandSearchCV, upstream.incremental_search_base())


@pytest.mark.parametrize("dotted", upstream.NODE_NAMES)
def test_the_node_codes_own_joblib_names_exist(dotted):
    module, _, name = dotted.rpartition(".")
    assert hasattr(importlib.import_module(module), name), dotted


def private_imports(path) -> set[str]:
    """The private names of the upstream packages a file imports ("module.name")."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in UPSTREAM_PACKAGES:
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                if any(part.startswith("_") for part in dotted.split(".")):
                    found.add(dotted)
    return found


def test_private_names_are_imported_only_in_upstream_py():
    found = {path.name: private_imports(path) for path in LIBRARY.rglob("*.py")}
    assert found["upstream.py"], "the control: the scan sees upstream.py's own"
    assert found.pop("on_nodes.py") == set(upstream.NODE_NAMES)
    found.pop("upstream.py")
    assert {name: names for name, names in found.items() if names} == {}


def test_fit_inputs_give_each_fit_the_key_of_the_call_evaluate_candidates_makes(monkeypatch):
    """AdaptiveSearchCV sends its fits itself, then evaluate_candidates takes them from the saved
    fits by key: the keys must be the same, so the keywords must be."""
    import sklearn.model_selection._search as search_module
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC
    from sklearn.utils.parallel import delayed

    from spotsearch.fit_keys import FitKeys

    made, ours = [], []
    real = search_module._fit_and_score

    def recorded(*args, **kwargs):
        made.append((FitKeys().key(args, kwargs), sorted(kwargs)))  # keyed before the fit changes the estimator
        return real(*args, **kwargs)

    class Recording(GridSearchCV):
        def _run_search(self, evaluate_candidates):
            base, X, y, splits, metric, keywords = upstream.fit_inputs(self, X_all, y_all, {"sample_weight": weights})
            for train, test in splits:
                _, args, kwargs = delayed(upstream.fit_and_score())(
                    clone(base), X, y, train=train, test=test, parameters={"C": 2.0}, **keywords
                )  # a clone for each, as evaluate_candidates makes them
                ours.append((FitKeys().key(args, kwargs), sorted(kwargs)))
            assert metric == "f1_macro"
            evaluate_candidates([{"C": 2.0}])

    monkeypatch.setattr(search_module, "_fit_and_score", recorded)
    X_all, y_all = np.random.default_rng(0).normal(size=(60, 3)), np.arange(60) % 3
    weights = np.linspace(1, 2, 60)
    search = Recording(SVC(), {"C": [2.0]}, cv=3, scoring=["accuracy", "f1_macro"], refit="f1_macro")
    search.fit(X_all, y_all, sample_weight=weights)
    assert len(made) == len(ours) == 3
    assert [key for key, _ in ours] == [key for key, _ in made]
    assert [names for _, names in ours] == [sorted(set(names) - {"split_progress", "candidate_progress"})
                                            for _, names in made]  # fmt: skip


def test_the_base_search_and_the_config_a_delayed_call_carries():
    import warnings

    from sklearn.model_selection import GridSearchCV
    from sklearn.utils.parallel import delayed

    assert issubclass(GridSearchCV, upstream.base_search())
    assert "self._checked_cv_orig = " in inspect.getsource(upstream.base_search().fit)
    func, args, kwargs = upstream.configured(delayed(len)([1, 2]), {"assume_finite": True}, warnings.filters)
    assert (func.config, func.warning_filters, func(*args, **kwargs)) == ({"assume_finite": True}, warnings.filters, 2)


def test_best_index_and_the_estimators_fit_params_are_those_fit_uses():
    """A search on data in S3 refits on the cluster (s3_data.py): its best candidate and the
    estimator's fit parameters must be the ones `BaseSearchCV.fit` would use."""
    from sklearn.datasets import load_iris
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, HalvingGridSearchCV

    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.001, 0.1, 10.0]}
    several = GridSearchCV(LogisticRegression(max_iter=300), grid, scoring=["accuracy", "f1_macro"],
                           refit="f1_macro").fit(X, y)  # fmt: skip
    assert upstream.best_index(several, "f1_macro", "f1_macro", several.cv_results_) == several.best_index_
    halving = HalvingGridSearchCV(LogisticRegression(max_iter=300), grid, factor=2, random_state=0).fit(X, y)
    last_round = np.flatnonzero(halving.cv_results_["iter"] == halving.cv_results_["iter"].max())
    assert upstream.best_index(halving, True, "score", halving.cv_results_) == halving.best_index_
    assert halving.best_index_ in last_round  # the halving search's own choice, not the best rank overall
    weights, groups = np.ones(len(y)), np.arange(len(y)) % 3
    params = upstream.estimator_fit_params(several, {"sample_weight": weights, "groups": groups})
    assert list(params) == ["sample_weight"] and params["sample_weight"] is weights
