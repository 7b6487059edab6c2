"""Any scikit-learn or dask-ml hyperparameter search, fitted on the connected Dask cluster.

scikit-learn's searches (GridSearchCV, RandomizedSearchCV, the successive-halving ones, with
any Pipeline and scoring) run through joblib's Dask backend: each batch of (candidate, split)
fits becomes a Dask task, and the training data is sent to every worker once, ahead of the
fits, so that losing a node loses no data. dask-ml's searches build their own task graph and
run it on the client. Either way the search object is the user's own, fitted in place, with
the usual cv_results_, best_params_, best_score_ and best_estimator_.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext, suppress

from spotsearch.cluster.messages import ClusterError
from spotsearch.cluster.polling import Poller
from spotsearch.cluster.spend import CapWatch, say_at_start
from spotsearch.dask_ml_engine import dask_ml_scheduler, is_dask_ml, refuse_unsupported
from spotsearch.progress import FitCounter, expected_fits, progress_bar
from spotsearch.reconnect import identity, reconnected, scheduler_lost
from spotsearch.s3_data import S3Data
from spotsearch.saved_fits import SavedFits


@contextmanager
def warning_filters_without_main() -> Iterator[None]:
    """scikit-learn sends the caller's warning filters with every fit. Python's defaults include
    one for the module `__main__`, and distributed takes any pickle that mentions `__main__` for
    code defined in a script: it pickles the task again, by value, with cloudpickle, several times
    slower, in the client and again in the scheduler (measured: a third of the scheduler's time
    per fit). On a worker, `__main__` is Dask's own command, so those filters match nothing there;
    they are left out for the duration of the search and restored after it."""
    with warnings.catch_warnings():
        warnings.filters[:] = [
            rule for rule in warnings.filters if "__main__" not in str(getattr(rule[3], "pattern", rule[3]))
        ]
        yield


# The held worker's task: short, so that little is left running once the block ends.
HOLD_SECONDS = 0.5


@contextmanager
def worker_held(client, timeout: float) -> Iterator[None]:
    """A worker kept busy while the block runs, for the data scikit-learn's searches send to
    every worker before the fits. An adaptive cluster retires idle nodes only, so the data has a
    worker to go to (sent to a cluster whose last node is leaving, it would wait for a worker
    without asking for one). On a cluster with none yet, or whose last node is leaving, these
    tasks are what asks for a node. No worker within `timeout` seconds: ClusterError.

    The tasks are short sleeps, two in flight, a new one as each ends: `time.sleep` needs nothing
    of this project on a worker, and no client of its own there (a worker's certificate may not
    open one: image/dask_node/trust.py), and the queued one takes the slot as the running one
    ends, so the worker never looks idle. At the end they are released, not cancelled (a
    cancel was once seen to cancel the search's first fits, "already forgotten"): one still
    running ends on its worker in under HOLD_SECONDS, and nothing of them stays on the
    scheduler. (`fire_and_forget` would keep one that had already finished in the scheduler's
    memory for ever: it waits for a completion that has happened.)"""
    held = [client.submit(time.sleep, HOLD_SECONDS, pure=False) for _ in range(2)]
    deadline = time.monotonic() + timeout
    while not any(future.key in keys for keys in client.processing().values() for future in held):
        if time.monotonic() > deadline:
            client.cancel(held)  # they must not ask for a node later
            raise ClusterError(
                f"no worker node joined within {timeout:g} s; check the worker group in the AWS console, "
                "or pass --timeout"
            )
        time.sleep(0.05)

    def hold_on() -> None:
        held[:] = [future for future in held if not future.done()]
        while len(held) < 2:
            held.append(client.submit(time.sleep, HOLD_SECONDS, pure=False))

    poller = Poller(hold_on, HOLD_SECONDS / 5, "worker-held").start()
    try:
        yield
    finally:
        poller.stop(last_look=False)
        for future in held:
            future.release()
        held.clear()


@contextmanager
def params_set(search, **values) -> Iterator[None]:
    """The search's parameters among `values` set for the block, then put back as they were: the
    fitted search is the user's object, with the user's settings (it pickles, clones, refits)."""
    own = search.get_params(deep=False)
    before = {name: own[name] for name in values if name in own}
    search.set_params(**{name: values[name] for name in before})
    try:
        yield
    finally:
        search.set_params(**before)


@contextmanager
def cancelled_on_failure(client) -> Iterator[None]:
    """Whatever the block left on the cluster through `client` is cancelled if it raises (its
    own error, a lost scheduler, Ctrl-C): no fit keeps running, and billing, for nobody."""
    from distributed import Future

    before = set(client.futures)
    try:
        yield
    except BaseException:
        left = [Future(key, client) for key in set(client.futures) - before]
        with suppress(Exception):  # a lost scheduler: nothing to cancel there any more
            client.cancel(left)
        raise


def fit_on_cluster(
    search, X, y=None, *, client=None, on_fits: Callable[[int], object] | None = None, progress: bool | None = None,
    wait_for_workers: float = 600.0, saved_fits: str | os.PathLike | SavedFits | None = None, **fit_params,
):  # fmt: skip
    """Fit `search` (a scikit-learn or dask-ml search object) with a Dask cluster's workers, and
    return it, fitted, as `search.fit(X, y, **fit_params)` would.

    Parameters
    ----------
    search : a search object: scikit-learn's GridSearchCV, RandomizedSearchCV, the halving
        searches, or dask-ml's GridSearchCV and RandomizedSearchCV, of any estimator or pipeline.
    X, y : the training data (y may be None, for a density estimator, say).
    client : the `distributed.Client` to run on; by default the current one (the last made).
    on_fits : called with the number of fits that just finished, as they finish.
    progress : a progress bar of the fits (a widget in a notebook); by default, shown in a
        notebook or a terminal unless `on_fits` is given.
    wait_for_workers : seconds to wait for a first worker, and for a lost scheduler to come back.
    saved_fits : a folder (or a SavedFits) that keeps every finished fit; a folder that already
        holds fits of this search on this data resumes it: only the other fits run.
    **fit_params : passed to `search.fit` (groups, sample_weight, routed metadata).

    Example
    -------
    >>> from distributed import Client
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.model_selection import GridSearchCV
    >>> from sklearn.svm import SVC
    >>> from spotsearch import Cluster, fit_on_cluster
    >>> X, y = load_digits(return_X_y=True)
    >>> with Cluster() as cluster, Client(cluster):  # Cluster(stack="dask"): the deployed one
    ...     search = fit_on_cluster(GridSearchCV(SVC(), {"C": [1, 10]}), X, y, progress=False)
    >>> sorted(search.best_params_)
    ['C']

    Every finished fit is kept as it arrives, in `saved_fits` if given, else in memory. If the
    client loses its scheduler mid-search, the search waits (up to `wait_for_workers` seconds)
    for one at the same address, sends its data again and goes on with the fits not yet
    finished. The user's own modules the search uses, and this project's node code
    (experiments/spotsearch/on_nodes.py), are sent to the nodes first (user_code.ship); a module
    the nodes still cannot import is named in one line (ClusterError), before any work. On a
    deployed cluster, the spend so far against its dollar cap is said first; a cluster at its cap
    is refused, and one that reaches it mid-search ends the search in one line (ClusterError)
    with the number of fits saved. If the search raises (its own error, Ctrl-C), what it
    submitted is cancelled and its data released before the exception reaches the caller. On a
    cluster with no worker yet (adaptive, from none), scikit-learn's searches wait up to
    `wait_for_workers` seconds for the first (see `worker_held`); dask-ml's graph waits in the
    scheduler's queue (its tasks are what asks for nodes). The search's parameters are left as they were.
    """
    if client is None:
        client = current_client()
    if progress is None:
        progress = on_fits is None and ("ipykernel" in sys.modules or sys.stderr.isatty())
    refuse_unsupported(search)
    say_at_start(client)
    saved = saved_fits if isinstance(saved_fits, SavedFits) else SavedFits(saved_fits)
    if not isinstance(X, S3Data):  # the user's own data is what its saved fits are of, uploaded or not
        saved.open_for(search, X, y, fit_params)
    X, y = data_on_cluster(client, search, X, y, fit_params, wait_for_workers)
    saved.open_for(search, X, y, fit_params)  # data in S3: known once a worker has read it
    shown = progress_bar(expected_fits(search, X, y, fit_params), on_fits) if progress else nullcontext(on_fits)
    with ExitStack() as searching:
        on_fits = searching.enter_context(shown)
        cap = searching.enter_context(CapWatch(client))
        counting = searching.enter_context(FitCounter(client, on_fits, saved)) if on_fits else None
        # A search that draws its candidates at random draws the same ones when it runs again.
        searching.enter_context(params_set(search, **saved.fixed_random_state(search)))
        while True:
            scheduler_id = identity(client).get("id")
            try:
                return _fit_once(client, search, X, y, saved, wait_for_workers, fit_params)
            except BaseException as error:
                if not scheduler_lost(client, error, scheduler_id):
                    raise
                if cap.ended:  # the cluster ended at its dollar cap: no scheduler comes back
                    raise ClusterError(cap.stopped_line(saved)) from None
                # The lost attempt's frames hold its futures: gone with them, the new scheduler
                # is not asked to keep their keys.
                traceback.clear_frames(error.__traceback__)
            reconnected(client, wait_for_workers)
            if counting is not None:
                counting.restart()


def data_on_cluster(client, search, X, y, fit_params: dict, timeout: float) -> tuple:
    """(X, y) as the search gets them: an S3Data's, read on the cluster (s3_data.py), large data
    for a deployed stack uploaded once and read on the cluster too (uploads.py), else as given."""
    from spotsearch.s3_data import S3Data, TableOnCluster, opened
    from spotsearch.uploads import uploaded
    from spotsearch.user_code import ship

    if isinstance(X, TableOnCluster):  # read on the cluster already (experiment.py)
        return X, y
    if not isinstance(X, S3Data):
        if is_dask_ml(search) or (data := uploaded(client, X, y)) is None:
            return X, y
        X, y = data, None
    if y is not None:
        raise ClusterError("fit_on_cluster: S3Data holds y too (its target); give no y")
    if is_dask_ml(search):
        raise ClusterError(
            f"fit_on_cluster: dask-ml's {type(search).__name__} needs X in this process; data in S3 (S3Data, "
            "--data s3://...) works with scikit-learn's searches (--engine scikit-learn) and AdaptiveSearchCV"
        )
    ship(client, search, fit_params)  # the node code, which reads it
    return opened(X, client, timeout)


def current_client():
    """The current Dask client (the last made); ClusterError when there is none."""
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        raise ClusterError(
            "fit_on_cluster: no Dask client - make one first (`Client(Cluster())`, or `Client(Cluster(stack=NAME))` "
            "for a deployed stack), or pass client="
        ) from None


def _fit_once(client, search, X, y, saved: SavedFits, wait_for_workers: float, fit_params: dict):
    from spotsearch.user_code import ship

    ship(client, search, fit_params)
    with cancelled_on_failure(client):
        if is_dask_ml(search):
            with params_set(search, scheduler=dask_ml_scheduler(client, saved)):
                return search.fit(X, y, **fit_params)
        return _fit_with_joblib(client, search, X, y, saved, wait_for_workers, fit_params)


def _fit_with_joblib(client, search, X, y, saved: SavedFits, wait_for_workers: float, fit_params: dict):
    """scikit-learn's search through the project's joblib backend (experiments/spotsearch/joblib_backend.py)."""
    from joblib import parallel_config

    from spotsearch.joblib_backend import ACTIVE, ClusterBackend
    from spotsearch.s3_data import forget, problems_in_one_line, refit_kept, refit_on_cluster, shared_names

    backend, tables = None, shared_names(X, y)
    # n_jobs=-1: as many fits at once as the cluster has threads (the search's own joblib calls
    # only; the fits' inner ones keep their n_jobs). pre_dispatch="all": every fit of a round
    # submitted at once, not two per thread of the nodes there are when it starts: the scheduler
    # sees the whole round, an adaptive cluster adds the nodes it needs, nodes that join take
    # their share.
    with params_set(search, n_jobs=-1, pre_dispatch="all"), ExitStack() as search_context:
        try:
            # X and y go to every worker once, now, and the fits refer to those copies (data in
            # S3: each worker reads it itself).
            with worker_held(client, wait_for_workers):
                data = [part for part in (X, y) if part is not None and id(part) not in tables]
                backend = ClusterBackend(
                    client=client, scatter=data, wait_for_workers_timeout=wait_for_workers, saved=saved, tables=tables
                )
            search_context.enter_context(parallel_config(backend=backend))
            search_context.enter_context(warning_filters_without_main())
            search_context.enter_context(problems_in_one_line(X))
            active = ACTIVE.set(backend)
            try:
                with ExitStack() as refit_later:
                    if tables:  # data in S3: this process has no X to refit on
                        refit_later.enter_context(refit_kept(search.refit))
                        refit_later.enter_context(params_set(search, refit=False))
                    search.fit(X, y, **fit_params)
                refit_on_cluster(search, X, y, fit_params)
                return search
            finally:
                ACTIVE.reset(active)
        finally:
            if backend is not None:
                with suppress(OSError, TimeoutError):  # a lost scheduler: it holds nothing of ours any more
                    backend.release()
            forget(client, X)
