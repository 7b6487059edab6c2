"""Any search on the cluster (experiments/spotsearch/search.py): a lost worker node, a cluster without workers,
how scikit-learn's fits are submitted and sent."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from spotsearch.cluster.messages import ClusterError
from spotsearch.cluster.waiting import worker_nodes
from spotsearch.search import fit_on_cluster
from spotsearch.upstream import JOBLIB_BATCH

from . import loopback_cluster
from .experiment_runs import USER_MODULE, tiny_svc_search
from .search_cases import assert_clean


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
            undisturbed = fit_on_cluster(grid_search(engine), X_train, y_train, client=client)
            done = []
            killed = threading.Event()

            def progress(n: int) -> None:
                done.append(n)
                if sum(done) >= 10 and not killed.is_set():
                    cluster.kill("worker-127.0.0.3")
                    killed.set()

            disturbed = fit_on_cluster(grid_search(engine), X_train, y_train, on_fits=progress, client=client)
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
            fit_on_cluster(search, X, y, wait_for_workers=1, client=client)
        assert 1 <= time.monotonic() - started < 10
    assert str(error.value) == (
        "no worker node joined within 1 s; check the worker group in the AWS console, or pass --timeout"
    )


def test_scikit_learn_searches_submit_every_fit_of_a_round_at_once_and_get_their_settings_back(monkeypatch):
    """So that an adaptive cluster sees the whole round, not two fits per thread it had at the start;
    afterwards the search has the user's own settings again."""
    from distributed import Client, LocalCluster

    from spotsearch.joblib_backend import ClusterBackend

    search, X, y = tiny_svc_search()
    while_submitting = []
    submit = ClusterBackend.submit

    def recording_submit(self, func, callback=None):
        while_submitting.append((search.pre_dispatch, search.n_jobs))
        return submit(self, func, callback)

    monkeypatch.setattr(ClusterBackend, "submit", recording_submit)
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        fit_on_cluster(search, X, y, client=client)
    assert while_submitting and set(while_submitting) == {("all", -1)}
    assert (search.pre_dispatch, search.n_jobs) == ("2*n_jobs", None)
    assert len(search.cv_results_["params"]) == 2


def test_scikit_learn_fits_travel_as_plain_pickles_and_the_callers_warning_filters_come_back(monkeypatch):
    """Python's default warning filter for `__main__`, sent with every fit, would make distributed
    pickle every task twice, the second time with cloudpickle (slow, in the client and the scheduler)."""
    import warnings

    import cloudpickle
    from distributed import Client, LocalCluster

    from spotsearch import fit_calls

    by_value = []
    pickle_by_value = cloudpickle.dumps
    monkeypatch.setattr(cloudpickle, "dumps", lambda x, *a, **k: by_value.append(x) or pickle_by_value(x, *a, **k))
    # The project's own pickling of each fit and of what fits share (fit_calls.pickled).
    dump_by_value = fit_calls._ByValue.dump
    monkeypatch.setattr(fit_calls._ByValue, "dump", lambda self, x: by_value.append(x) or dump_by_value(self, x))
    search, X, y = tiny_svc_search()
    with (
        warnings.catch_warnings(),
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")  # as Python starts
        warnings.filterwarnings("ignore", message="a user's own filter")
        filters = list(warnings.filters)
        fit_on_cluster(search, X, y, client=client)
        assert [type(x).__name__ for x in by_value] == []
        assert warnings.filters == filters
    assert len(search.cv_results_["params"]) == 2


def in_event_loop() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


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
            # The data is scattered from the search's thread; what the fits share, from the
            # client's event loop once fits are on their way.
            if not in_event_loop():
                busy_while_scattering.append(sum(map(len, client.processing().values())))
            return scatter(*args, **kwargs)

        monkeypatch.setattr(client, "scatter", scatter_and_look)
        fit_on_cluster(search, X, y, client=client)
        monkeypatch.undo()
        assert len(busy_while_scattering) == 1 and busy_while_scattering[0] >= 1
        deadline = time.monotonic() + 10
        while any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(client.processing().values())  # released once the data is out
        assert_clean(client)  # the held tasks gone too, not only ended


def test_the_held_workers_tasks_leave_nothing_on_the_scheduler_even_once_finished(process_cluster, monkeypatch):
    """A data send slower than the held tasks: they have finished, unreplaced, when it ends."""
    from spotsearch import search
    from spotsearch.cluster.polling import Poller

    class Slow(Poller):
        def __init__(self, look, interval, name):
            super().__init__(look, 60.0, name)  # the held tasks are not replaced in the block

    monkeypatch.setattr(search, "Poller", Slow)
    monkeypatch.setattr(search, "HOLD_SECONDS", 0.05)
    with search.worker_held(process_cluster, timeout=60):
        deadline = time.monotonic() + 30
        while not all(future.done() for future in process_cluster.futures.values()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        held = list(process_cluster.futures)
        assert held, "the tasks the block held"
    assert_clean(process_cluster, within=10)


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
        searching = threading.Thread(target=lambda: outcome.append(fit_on_cluster(search, X, y, client=client)))
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


# ---- never hangs, never leaks, never loses: on worker processes, where every fit is pickled ----


def digits_search(engine: str, candidates: int = 4, **options):
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    if engine == "dask-ml":
        from dask_ml.model_selection import GridSearchCV
    else:
        from sklearn.model_selection import GridSearchCV
    X, y = load_digits(return_X_y=True)
    grid = {"C": list(np.logspace(-2, 2, candidates))}
    return GridSearchCV(SVC(gamma=0.001), grid, cv=3, **options), X, y


def test_a_search_whose_fits_cannot_be_sent_fails_at_once_in_one_line():
    """scikit-learn sends the search itself with every fit: a cv that is a generator cannot go.

    On a cluster of its own, and only the scheduler's side checked: the failed batches' futures
    can live on in this test's own references to the exception for a while (seen under load)."""
    from distributed import Client, LocalCluster
    from sklearn.model_selection import KFold

    from spotsearch.fit_calls import FitNotSendable

    search, X, y = digits_search("scikit-learn")
    search.set_params(cv=KFold(3).split(X))
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        started = time.monotonic()
        with pytest.raises(FitNotSendable) as error:
            fit_on_cluster(search, X, y, client=client)
        assert time.monotonic() - started < 60, "it fails, it does not wait"
        deadline = time.monotonic() + 30
        while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
            assert time.monotonic() < deadline, client.run_on_scheduler(
                lambda dask_scheduler: [(str(k), str(t.who_wants)) for k, t in dask_scheduler.tasks.items()][:5]
            )
            time.sleep(0.1)
    assert str(error.value).startswith("a fit of this search cannot be sent to the cluster: cannot pickle 'generator'")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("engine", ["dask-ml", "scikit-learn"])
def test_a_search_that_raises_leaves_nothing_on_the_cluster(process_cluster, engine):
    search, X, y = digits_search(engine, candidates=12, error_score="raise")
    search.set_params(param_grid={"C": [*search.param_grid["C"], -1.0]})  # SVC refuses C < 0
    with pytest.raises(ValueError, match="C"):
        fit_on_cluster(search, X, y, client=process_cluster)
    assert_clean(process_cluster)


@pytest.mark.parametrize("engine", ["dask-ml", "scikit-learn"])
def test_ctrl_c_mid_search_leaves_nothing_running_and_the_next_search_starts_clean(process_cluster, engine):
    import signal
    import threading

    search, X, y = digits_search(engine, candidates=40)
    done = []

    def interrupt_after_a_few(fits: int) -> None:
        done.append(fits)
        if sum(done) >= 4 and len(done) == len([n for n in done if n]):
            done.append(0)
            # What Ctrl-C does: a real SIGINT, which wakes the main thread from its wait at once
            # (_thread.interrupt_main only acts when that wait ends by itself, up to 10 s later).
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def interrupted() -> bool:
        # As a user's script ends (or a notebook cell moves on): the exception and its frames go.
        try:
            fit_on_cluster(search, X, y, on_fits=interrupt_after_a_few, client=process_cluster)
        except KeyboardInterrupt:
            return True
        return False

    assert interrupted()
    assert sum(done) < 120, "interrupted mid-search"
    assert_clean(process_cluster)
    small, X, y = digits_search(engine, candidates=2)
    fit_on_cluster(small, X, y, client=process_cluster)
    assert len(small.cv_results_["params"]) == 2
    assert_clean(process_cluster)


def test_a_cluster_with_one_thread_runs_the_fits_there():
    """joblib takes one job for "run here, in this process": the fits must still go to the cluster."""
    from distributed import Client, LocalCluster

    search, X, y = tiny_svc_search()
    counted = []
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        fit_on_cluster(search, X, y, on_fits=counted.append, client=client)
    assert sum(counted) == 4, "every fit ran as a task of the cluster"


def test_an_estimators_own_joblib_use_stays_inside_its_fit(process_cluster):
    """A forest's trees (n_jobs=None: one at a time, in scikit-learn) are not tasks of their own,
    neither from the fits nor from the refit in the client."""
    from distributed import get_task_stream
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GridSearchCV

    X, y = np.random.default_rng(0).normal(size=(120, 4)), np.arange(120) % 2
    search = GridSearchCV(RandomForestClassifier(n_estimators=6, random_state=0), {"max_depth": [2, 4]}, cv=2)
    with get_task_stream(client=process_cluster) as stream:
        fit_on_cluster(search, X, y, client=process_cluster)
    names = {str(record["key"]) for record in stream.data}
    fits = {name for name in names if JOBLIB_BATCH.search(name)}
    assert fits and not [name for name in names - fits if "build_trees" in name or "batch_of" in name], names


@pytest.mark.parametrize("engine", ["dask-ml", "scikit-learn"])
def test_a_fitted_search_is_an_ordinary_fitted_estimator(process_cluster, engine):
    import pickle

    from sklearn.base import clone

    search, X, y = digits_search(engine, candidates=2)
    before = search.get_params()
    fit_on_cluster(search, X, y, client=process_cluster)
    assert search.get_params().keys() == before.keys()
    assert all(search.get_params()[k] is before[k] or search.get_params()[k] == before[k] for k in before)
    restored = pickle.loads(pickle.dumps(search))  # noqa: S301 (our own object)
    np.testing.assert_array_equal(restored.predict(X[:20]), search.predict(X[:20]))
    assert clone(search).get_params()["param_grid"] == before["param_grid"]


@pytest.mark.parametrize("name", ["HyperbandSearchCV", "IncrementalSearchCV", "SuccessiveHalvingSearchCV",
                                  "InverseDecaySearchCV"])  # fmt: skip
def test_dask_mls_incremental_searches_are_refused_before_any_work(process_cluster, name):
    import dask_ml.model_selection
    from sklearn.linear_model import SGDClassifier

    search = getattr(dask_ml.model_selection, name)(SGDClassifier(), {"alpha": [1e-4, 1e-3]})
    with pytest.raises(ClusterError) as error:
        fit_on_cluster(search, np.zeros((10, 2)), np.arange(10) % 2, client=process_cluster)
    assert str(error.value).startswith(f"dask-ml's {name} is broken upstream since dask 2025.3 (dask/dask-ml#1016")
    assert "spotsearch.AdaptiveSearchCV" in str(error.value) and "HalvingRandomSearchCV" in str(error.value)
    assert_clean(process_cluster)


@pytest.fixture
def users_own_module(tmp_path, monkeypatch):
    """A module of the user's, beside their script: importable here, not on the workers."""
    import importlib
    import sys
    import uuid

    name = f"mytools_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


@pytest.mark.parametrize("engine", ["dask-ml", "scikit-learn"])
def test_the_users_own_module_reaches_the_workers(process_cluster, users_own_module, engine):
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import SVC

    search, X, y = digits_search(engine, candidates=2)
    search.set_params(
        estimator=make_pipeline(users_own_module.Doubler(), SVC(gamma=0.001)), param_grid={"svc__C": [1.0, 2.0]}
    )
    name = users_own_module.__name__
    assert not any(process_cluster.run(lambda: name in __import__("sys").modules).values())
    fit_on_cluster(search, X, y, client=process_cluster)
    assert len(search.cv_results_["params"]) == 2
    assert all(process_cluster.run(lambda: name in __import__("sys").modules).values()), "it ran there"
    assert_clean(process_cluster)


@pytest.fixture
def users_own_package(tmp_path, monkeypatch):
    """A package of the user's, with what must never leave the laptop beside its modules: a
    module the search does not import, a hidden folder, a virtual environment, a link to a
    credentials file."""
    import importlib
    import sys
    import uuid

    name = f"mypkg_{uuid.uuid4().hex[:8]}"
    package = tmp_path / "project" / name
    for folder in (package / "models", package / ".hidden", package / "env" / "lib", package / ".venv"):
        folder.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / "__init__.py").write_text("")
    (package / "models" / "tools.py").write_text(USER_MODULE)
    (package / "unused.py").write_text("SECRET = 'not imported'\n")
    (package / ".hidden" / "notes.py").write_text("")
    (package / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (package / "env" / "lib" / "site.py").write_text("")
    (package / ".venv" / "pyvenv.cfg").write_text("")
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_secret_access_key = not-to-be-sent\n")
    (package / "creds.py").symlink_to(credentials)
    monkeypatch.syspath_prepend(str(tmp_path / "project"))
    tools = importlib.import_module(f"{name}.models.tools")
    yield tools
    for module in [module for module in sys.modules if module.startswith(name)]:
        sys.modules.pop(module)


def test_a_package_of_the_users_sends_the_modules_the_search_uses_and_nothing_else(
    process_cluster, users_own_package, capsys
):
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import SVC

    from spotsearch.user_code import own_source, package_files

    name = users_own_package.__name__.partition(".")[0]
    assert package_files(name, own_source(name)) == [
        Path("__init__.py"), Path("models/__init__.py"), Path("models/tools.py")
    ]  # fmt: skip
    search, X, y = digits_search("scikit-learn", candidates=2)
    search.set_params(
        estimator=make_pipeline(users_own_package.Doubler(), SVC(gamma=0.001)), param_grid={"svc__C": [1.0, 2.0]}
    )
    fit_on_cluster(search, X, y, client=process_cluster)
    assert len(search.cv_results_["params"]) == 2, "the workers imported it from what was sent"
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sent your own code")]
    assert said == [
        f"sent your own code to the cluster: {name}/__init__.py, {name}/models/__init__.py, {name}/models/tools.py"
    ]
    assert_clean(process_cluster)


def test_a_module_the_nodes_cannot_get_is_named_in_one_line_before_the_search(process_cluster, users_own_module,
                                                                              monkeypatch):  # fmt: skip
    """As an installed package of the laptop's that the image lacks: it cannot be sent."""
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import SVC

    from spotsearch import user_code

    monkeypatch.setattr(user_code, "own_source", lambda name: None)
    search, X, y = digits_search("scikit-learn", candidates=2)
    search.set_params(estimator=make_pipeline(users_own_module.Doubler(), SVC()), param_grid={"svc__C": [1.0]})
    with pytest.raises(ClusterError) as error:
        fit_on_cluster(search, X, y, client=process_cluster)
    name = users_own_module.__name__
    assert str(error.value).startswith(f"the nodes cannot import `{name}` (worker tcp://")
    assert str(error.value).endswith("add its package to image/requirements.txt (and requirements.txt) and redeploy")
    assert_clean(process_cluster)


def test_the_progress_total_never_touches_the_users_cv():
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import GridSearchCV, GroupKFold, HalvingGridSearchCV, KFold, LeaveOneGroupOut
    from sklearn.svm import SVC

    from spotsearch.progress import expected_fits

    X, y = np.zeros((30, 2)), np.arange(30) % 2
    grid = {"C": [1, 2, 3]}
    splits = KFold(3).split(X)
    assert expected_fits(GridSearchCV(SVC(), grid, cv=splits), X, y) is None
    assert len(list(splits)) == 3, "the user's generator is still whole"
    assert expected_fits(GridSearchCV(SVC(), grid), X, y) == 15
    assert expected_fits(GridSearchCV(SVC(), grid, cv=4), X, y) == 12
    assert expected_fits(GridSearchCV(SVC(), grid, cv=GroupKFold(2)), X, y, {"groups": np.arange(30) % 3}) == 6
    assert expected_fits(GridSearchCV(SVC(), grid, cv=LeaveOneGroupOut()), X, y) is None, "needs the groups"
    assert expected_fits(HalvingGridSearchCV(SVC(), grid, cv=3), X, y) is None, "rounds follow the scores"


def test_dask_mls_fits_are_not_waited_for_once_the_client_has_another_scheduler(tmp_path, monkeypatch):
    """A client that reconnected to a new scheduler (a replaced one, at the same address) has
    moved on: a fit of the old one that never ends is a lost scheduler (CommClosedError, which
    fit_on_cluster waits out), not a search that hangs."""
    import threading

    from distributed import Client, LocalCluster
    from distributed.comm import CommClosedError

    from spotsearch.dask_ml_engine import dask_ml_scheduler
    from spotsearch.saved_fits import SavedFits

    released = tmp_path / "released"
    graph = {("svc-fit-score-abc", 0, 0): (_until_exists, str(released))}
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
    with cluster, Client(cluster) as client:
        get = dask_ml_scheduler(client, SavedFits(tmp_path / "fits"))
        old = client.scheduler_info
        reconnected = threading.Timer(1.0, lambda: monkeypatch.setattr(
            client, "scheduler_info", lambda **kw: {**old(**kw), "id": "Scheduler-another"}
        ))  # fmt: skip
        reconnected.start()
        started = time.monotonic()
        try:
            with pytest.raises(CommClosedError, match="is gone"):
                get(graph, [("svc-fit-score-abc", 0, 0)])
        finally:
            released.touch()
        assert time.monotonic() - started < 30


def _until_exists(path: str) -> str:
    """A fit that runs until the test lets it end."""
    while not Path(path).exists():
        time.sleep(0.05)
    return path
