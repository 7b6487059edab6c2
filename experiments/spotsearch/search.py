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
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext, suppress

from spotsearch.cluster.messages import ClusterError, console
from spotsearch.cluster.polling import Poller
from spotsearch.cluster.waiting import Heartbeat
from spotsearch.saved_fits import SavedFits

# Keys of the tasks that fit and score one candidate on one split: joblib's batches (named
# after the function and the number of calls in them) and dask-ml's fit-and-score tasks.
JOBLIB_BATCH = re.compile(r"batch_of__fit_and_score_(\d+)_calls")
DASK_ML_FIT = re.compile(r"-fit-score-")


def is_dask_ml(search) -> bool:
    return type(search).__module__.startswith("dask_ml.")


def expected_fits(search, X, y, fit_params: dict | None = None) -> int | None:
    """How many (candidate, split) fits the search will run, or None when that is not known
    beforehand. Never touches the search's cv beyond asking it: an iterable of splits (a
    generator, say) would be used up by counting it."""
    from numbers import Integral

    from sklearn.model_selection import ParameterGrid, ParameterSampler

    if hasattr(search, "factor"):  # successive halving: rounds and candidates follow the scores
        return None
    if hasattr(search, "param_grid"):
        candidates = len(ParameterGrid(search.param_grid))
    elif hasattr(search, "n_iter") and hasattr(search, "param_distributions"):
        candidates = len(ParameterSampler(search.param_distributions, search.n_iter, random_state=0))
    else:
        return None
    cv = search.cv
    if cv is None:
        return candidates * 5  # scikit-learn's and dask-ml's default
    if isinstance(cv, Integral):
        return candidates * int(cv)
    if not hasattr(cv, "get_n_splits"):
        return None
    try:
        return candidates * cv.get_n_splits(X, y, (fit_params or {}).get("groups"))
    except (TypeError, ValueError):  # a splitter that needs what it was not given
        return None


class FitCounter:
    """Counts finished fits from the scheduler's task stream, looked at every `interval` seconds,
    and the saved fits a search takes instead of running them."""

    def __init__(self, client, on_fits: Callable[[int], object], saved: SavedFits, interval: float = 0.25) -> None:
        self._client, self._on_fits, self._saved = client, on_fits, saved
        self._poller = Poller(self._poll, interval, "fit-counter")
        self._closed = False
        self._seen: set[str] = set()  # a task recomputed after a lost worker counts once
        self._taken = len(saved.taken)

    def _poll(self) -> None:
        taken = len(self._saved.taken)
        fits, self._taken = taken - self._taken, taken
        try:
            records = self._client.sync(self._client.scheduler.get_task_stream, start_index=self._start)
        except (OSError, TimeoutError):  # no scheduler just now: the search says so
            records = []
        self._start += len(records)  # the next look asks only for what is new
        for record in records:
            key = str(record["key"])
            if key in self._seen or key in self._saved.taken or record.get("status") == "error":
                continue
            self._seen.add(key)
            if batch := JOBLIB_BATCH.search(key):
                fits += int(batch.group(1))
            elif DASK_ML_FIT.search(key):
                fits += 1
        if fits and not self._closed:  # a look left behind by a lost scheduler reports nothing late
            self._on_fits(fits)

    def __enter__(self) -> FitCounter:
        self.restart()
        self._poller.start()
        return self

    def restart(self) -> None:
        """Count from now on this scheduler (a new one, after a lost connection, starts at zero).
        Asking for the cursor also starts the recording, if nothing had asked before."""
        self._start = self._client.sync(self._client.scheduler.get_task_stream_index)

    def __exit__(self, *exc_info) -> None:
        # The last fits, finished since the last look, unless the search failed.
        self._poller.stop(last_look=exc_info[0] is None)
        self._closed = True


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


def refuse_unsupported(search) -> None:
    """dask-ml's incremental searches (Hyperband and the like) fail inside dask-ml with the pinned
    dask and distributed: their fit calls `dask.persist` from the client's event loop, which
    distributed refuses ("an asynchronous Client in a synchronous context"). Refused before any work."""
    if not is_dask_ml(search):
        return
    from dask_ml.model_selection._incremental import BaseIncrementalSearchCV

    if isinstance(search, BaseIncrementalSearchCV):
        raise ClusterError(
            f"dask-ml's {type(search).__name__} does not run with this project's dask and distributed (dask-ml "
            "calls dask.persist inside the client's event loop, which distributed refuses); use scikit-learn's "
            "HalvingRandomSearchCV or HalvingGridSearchCV for successive halving, or dask-ml's GridSearchCV "
            "or RandomizedSearchCV"
        )


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


# How often dask-ml's fits are looked at when none has finished: what a finished fit may wait
# before it is saved, and a lost scheduler before it is noticed.
COLLECT_SECONDS = 0.05


def _check_same_scheduler(client, scheduler_id: str | None) -> None:
    """CommClosedError (a lost scheduler, to fit_on_cluster) when the client is no longer
    connected to the scheduler the fits were sent to. A client that reconnects to a new one (a
    replaced scheduler, at the same address) cancels its futures; yet on the emulated deploy a
    search once went on waiting for a fit of the old one after that, for ever (the cause, in
    distributed, is not known). Its fits are not waited for past the scheduler that had them."""
    from distributed.comm import CommClosedError

    if client.status != "running" or client.scheduler_info().get("id") != scheduler_id:
        raise CommClosedError(f"the scheduler the search was sent to ({scheduler_id}) is gone")


def dask_ml_scheduler(client, saved: SavedFits) -> Callable:
    """What dask-ml's searches get as their scheduler: `client.get`, as a plain function, that
    keeps every finished fit in `saved` as it arrives and does not run the fits already there.

    Handed the Client itself, dask-ml retries a fit that raised, for ever: a search with
    error_score="raise" whose fit fails never ends (and keeps its nodes busy). Handed a function,
    it calls it as it would dask's own: the first error ends the search, and the futures
    released end its other fits. A lost worker's fits are still computed again by the scheduler,
    as for any task. dask-ml's task keys hash the estimator, the candidate, the split and the data,
    so they serve as the fits' keys."""
    from dask._task_spec import DataNode
    from distributed import as_completed
    from distributed.utils_comm import pack_data

    def get(graph, keys, **options):
        options.pop("num_workers", None)  # dask's local schedulers' option
        graph = dict(graph)
        fits = [key for key in graph if DASK_ML_FIT.search(str(key))]
        todo = [key for key in fits if str(key) not in saved]
        for key in fits:
            if str(key) in saved:
                # Still a task, returning the saved result at once (the fit counter counts it once).
                graph[key] = DataNode(key, saved.take(str(key)))
        wanted = list(dict.fromkeys([*_flat(keys), *todo]))
        scheduler = client.scheduler_info().get("id")
        sent = client.get(graph, wanted, sync=False, allow_other_workers=True, **options)
        futures = dict(zip(wanted, sent, strict=True))
        # Results are gathered here, not by as_completed (with_results): its tracking task, failing
        # on a lost connection, kept a future in its traceback until Python's cycle collector ran,
        # and that future's task on the new scheduler.
        completed = as_completed([futures[key] for key in todo])
        while not completed.is_empty():
            batch = completed.next_batch(block=False)
            # Not cancelled (a lost scheduler) nor failed: the last gather raises for those.
            if finished := [future for future in batch if future.status == "finished"]:
                for future, value in zip(finished, client.gather(finished), strict=True):
                    saved.save(str(future.key), value)
            if not batch:
                _check_same_scheduler(client, scheduler)
                time.sleep(COLLECT_SECONDS)
        return pack_data(keys, client.gather({key: futures[key] for key in _flat(keys)}))

    return get


def _flat(keys) -> list:
    """The task keys in dask's nested list of keys (a key itself may be a tuple)."""
    return [key for part in keys for key in _flat(part)] if isinstance(keys, list) else [keys]


def scheduler_lost(client, error: BaseException, scheduler_id: str | None) -> bool:
    """Whether `error` ended the search because the client lost its scheduler (its process, its
    node or the network), rather than a problem of the search's own: never for an error a fit
    raised (an OSError of the user's, say) while the scheduler it ran on is still there."""
    from distributed.client import FutureCancelledError
    from distributed.comm import CommClosedError

    if isinstance(error, (KeyboardInterrupt, SystemExit, ClusterError)) or client.status in ("closing", "closed"):
        return False
    if client.status != "running":  # reconnecting
        return True
    if isinstance(error, FutureCancelledError):
        return "connection-lost" in str(error)
    if isinstance(error, CommClosedError):
        return True
    return isinstance(error, OSError) and _identity(client).get("id") != scheduler_id  # a new one, or none


def _identity(client) -> dict:
    """What the scheduler the client reaches now says of itself (a new scheduler has a new id);
    empty when there is none to ask."""
    with suppress(OSError, TimeoutError):
        return client.sync(client.scheduler.identity)
    return {}


def reconnected(client, timeout: float) -> None:
    """Wait, saying so, for the client to be connected again to a scheduler with a worker;
    ClusterError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    console(f"lost the connection to the scheduler at {client.scheduler.address}; waiting up to {timeout:g} s for it")
    waiting = Heartbeat("waiting for the scheduler and a worker", deadline)
    while not (client.status == "running" and _identity(client).get("workers")):
        if client.status in ("closing", "closed") or time.monotonic() > deadline:
            raise ClusterError(f"the scheduler at {client.scheduler.address} did not come back within {timeout:g} s")
        waiting.beat()
        time.sleep(0.5)
    console("reconnected: the search goes on with the fits not yet finished")


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
    the nodes still cannot import is named in one line (ClusterError), before any work. If the
    search raises (its own error, Ctrl-C), what it submitted is cancelled and its data released
    before the exception reaches the caller. On a cluster with no worker yet (adaptive, from
    none), scikit-learn's searches wait up to `wait_for_workers` seconds for the first (see
    `worker_held`); dask-ml's graph waits in the scheduler's queue (its tasks are what asks for
    nodes). The search's parameters are left as they were.
    """
    if client is None:
        client = current_client()
    if progress is None:
        progress = on_fits is None and ("ipykernel" in sys.modules or sys.stderr.isatty())
    refuse_unsupported(search)
    saved = saved_fits if isinstance(saved_fits, SavedFits) else SavedFits(saved_fits)
    saved.open_for(search, X, y, fit_params)
    shown = progress_bar(expected_fits(search, X, y, fit_params), on_fits) if progress else nullcontext(on_fits)
    with ExitStack() as searching:
        on_fits = searching.enter_context(shown)
        counting = searching.enter_context(FitCounter(client, on_fits, saved)) if on_fits else None
        # A search that draws its candidates at random draws the same ones when it runs again.
        searching.enter_context(params_set(search, **saved.fixed_random_state(search)))
        while True:
            scheduler_id = _identity(client).get("id")
            try:
                return _fit_once(client, search, X, y, saved, wait_for_workers, fit_params)
            except BaseException as error:
                if not scheduler_lost(client, error, scheduler_id):
                    raise
                # The lost attempt's frames hold its futures: gone with them, the new scheduler
                # is not asked to keep their keys.
                traceback.clear_frames(error.__traceback__)
            reconnected(client, wait_for_workers)
            if counting is not None:
                counting.restart()


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


@contextmanager
def progress_bar(total: int | None, also: Callable[[int], object] | None) -> Iterator[Callable[[int], object]]:
    """A bar of the fits (tqdm's widget in a notebook, text in a terminal), and what counts on it."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="fits", unit="fit") as bar:

        def counted(fits: int) -> None:
            bar.update(fits)
            if also is not None:
                also(fits)

        yield counted


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

    from spotsearch.joblib_backend import ClusterBackend

    backend = None
    # n_jobs=-1: as many fits at once as the cluster has threads (the search's own joblib calls
    # only; the fits' inner ones keep their n_jobs). pre_dispatch="all": every fit of a round
    # submitted at once, not two per thread of the nodes there are when it starts: the scheduler
    # sees the whole round, an adaptive cluster adds the nodes it needs, nodes that join take
    # their share.
    with params_set(search, n_jobs=-1, pre_dispatch="all"), ExitStack() as search_context:
        try:
            # X and y go to every worker once, now, and the fits refer to those copies.
            with worker_held(client, wait_for_workers):
                data = [part for part in (X, y) if part is not None]
                backend = ClusterBackend(
                    client=client, scatter=data, wait_for_workers_timeout=wait_for_workers, saved=saved
                )
            search_context.enter_context(parallel_config(backend=backend))
            search_context.enter_context(warning_filters_without_main())
            return search.fit(X, y, **fit_params)
        finally:
            if backend is not None:
                with suppress(OSError, TimeoutError):  # a lost scheduler: it holds nothing of ours any more
                    backend.release()
