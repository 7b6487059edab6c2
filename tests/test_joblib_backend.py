"""How scikit-learn's fits go to the cluster (experiments/spotsearch/joblib_backend.py): what they share
travels once, each fit as a few bytes the scheduler does not unpickle."""

from __future__ import annotations

import numpy as np
import pytest

from spotsearch import fit_calls, joblib_backend, on_nodes
from spotsearch.search import fit_on_cluster

from .search_cases import assert_clean


def wide_search(candidates: int):
    """A search whose own pickle is large (a long grid): it travels with every fit's call."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    return GridSearchCV(SVC(), {"C": list(np.logspace(-2, 2, candidates))}, cv=3)


@pytest.fixture
def sent(monkeypatch):
    """Every scatter of a shared value, and every fit's payload and shared names, as sent."""
    from distributed import Client

    record = {"scattered": [], "payloads": [], "names": []}
    scatter, map_ = Client.scatter, Client.map

    def scatter_and_record(self, data, *args, **kwargs):
        if isinstance(data, bytes):
            record["scattered"].append(len(data))
        return scatter(self, data, *args, **kwargs)

    def map_and_record(self, func, payloads, shared, **kwargs):
        if func is joblib_backend.run_fits:
            record["payloads"] += [len(payload) for payload in payloads]
            record["names"] += [sorted(names) for names in shared]
        return map_(self, func, payloads, shared, **kwargs)

    monkeypatch.setattr(Client, "scatter", scatter_and_record)
    monkeypatch.setattr(Client, "map", map_and_record)
    return record


def test_what_every_fit_shares_travels_once_and_each_fit_as_a_few_bytes(sent):
    import pickle

    from distributed import Client, LocalCluster
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    local_search = wide_search(60)
    local_search.fit(X, y)
    search = wide_search(60)
    assert len(pickle.dumps(search)) > 1500, "the search must be larger than a fit's call may be"
    with (
        LocalCluster(n_workers=2, threads_per_worker=2, processes=False, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        fit_on_cluster(search, X, y, client=client)
        assert_clean(client)
    fits = 60 * 3
    assert len(sent["payloads"]) == fits, "each fit a task of its own (joblib's batches of one, here)"
    assert max(sent["payloads"]) < len(pickle.dumps(search)) / 2, (
        "a fit's own part: its candidate, its progress, small flags"
    )
    # The search, scikit-learn's settings, the three splits' rows (train and test) at most: not
    # one per fit, however many fits there are.
    assert 1 <= len(sent["scattered"]) <= 8
    assert all(names == sent["names"][0] for names in sent["names"][:3]), "every fit refers to the same"
    np.testing.assert_array_equal(search.cv_results_["mean_test_score"], local_search.cv_results_["mean_test_score"])
    assert search.best_params_ == local_search.best_params_


class _Context:
    def __init__(self, callbacks: list) -> None:
        self._callbacks = callbacks


def test_a_callback_context_travels_only_where_a_callback_is_set():
    """Each fit's context links to the whole search's tree of contexts: pickled, every fit would
    carry every other's. Without callbacks its hooks do nothing, and it stays home."""
    from sklearn.svm import SVC

    def call(context, estimator):
        return (len, (estimator,), {"callback_ctx": context, "train": [1]})

    idle = call(_Context([]), SVC())
    assert fit_calls.without_idle_callback_context(idle)[2] == {"callback_ctx": None, "train": [1]}
    used = call(_Context(["a callback"]), SVC())
    assert fit_calls.without_idle_callback_context(used) is used
    estimator = SVC()
    estimator._skl_callbacks = ["the estimator's own"]
    on_the_estimator = call(_Context([]), estimator)
    assert fit_calls.without_idle_callback_context(on_the_estimator) is on_the_estimator
    no_context = call(None, SVC())
    assert fit_calls.without_idle_callback_context(no_context) is no_context


def test_a_value_of_the_script_travels_by_value_and_the_rest_by_reference(monkeypatch):
    import io
    import pickle

    class OfTheScript:  # a local class, as one of `__main__`: only cloudpickle takes it
        pass

    value = OfTheScript()
    shared = np.arange(300)
    refs = {id(shared): ("data-x", id(shared))}
    payload = fit_calls.pickled([value, shared, shared], refs)
    loaded = on_nodes.CallsLoader(io.BytesIO(payload), {"data-x": shared}).load()
    assert type(loaded[0]).__name__ == "OfTheScript"
    assert loaded[1] is shared and loaded[2] is shared, "data is the worker's copy, not a new one"
    assert len(payload) < len(pickle.dumps(shared)), "the array is not in the payload"
    # Only what pickle refuses, or what names `__main__`, goes to cloudpickle (slower, by value).
    by_value = []
    dump = fit_calls._ByValue.dump
    monkeypatch.setattr(fit_calls._ByValue, "dump", lambda self, obj: by_value.append(obj) or dump(self, obj))
    plain = fit_calls.pickled({"C": 1.0})
    assert pickle.loads(plain) == {"C": 1.0} and by_value == []  # noqa: S301 (our own bytes)
    fit_calls.pickled([value])
    assert by_value == [[value]], "the control: a value of the script does go by value"
    with pytest.raises(fit_calls.FitNotSendable, match=r"cannot be sent to the cluster: .*generator"):
        fit_calls.pickled([(i for i in range(3))])


def test_each_object_a_shared_value_stood_for_is_a_copy_of_its_own():
    """Two estimators that pickle alike share one value; on the worker each is its own object
    (a fit changes its estimator), while one object referred to twice stays one."""
    import io
    import pickle

    from sklearn.svm import SVC

    first, second = SVC(), SVC()
    blob = pickle.dumps(first)
    name = on_nodes.BLOB + "svc"
    refs = {id(first): (name, id(first)), id(second): (name, id(second))}
    payload = fit_calls.pickled([first, second, first], refs)
    a, b, c = on_nodes.CallsLoader(io.BytesIO(payload), {name: blob}).load()
    assert a is not b and a is c
    assert isinstance(b, SVC) and b.get_params() == SVC().get_params()


def _cannot_load():
    raise RuntimeError("this object cannot be loaded on a worker")


class LoadsNowhereElse:
    """Pickles here; unpickling it, as a worker does to run a fit, raises."""

    def __reduce__(self):
        return (_cannot_load, ())

    def __deepcopy__(self, memo):  # scikit-learn's clone copies parameters
        return self


def test_a_fit_whose_call_cannot_be_loaded_on_a_worker_fails_the_search_at_once(process_cluster):
    """A task that fails outside its fits (here its calls cannot be unpickled; data in S3 that
    changed is another) raises in the search; joblib's own collector left it waiting for ever."""
    import time

    from sklearn.dummy import DummyClassifier
    from sklearn.model_selection import GridSearchCV

    X, y = np.arange(40.0).reshape(20, 2), np.arange(20) % 2
    search = GridSearchCV(DummyClassifier(), {"constant": [LoadsNowhereElse()]}, cv=2)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="this object cannot be loaded on a worker"):
        fit_on_cluster(search, X, y, client=process_cluster, progress=False)
    assert time.monotonic() - started < 60
    assert_clean(process_cluster)
