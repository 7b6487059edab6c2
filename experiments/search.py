"""Any scikit-learn or dask-ml hyperparameter search, fitted on the connected Dask cluster.

scikit-learn's searches (GridSearchCV, RandomizedSearchCV, the successive-halving ones, with
any Pipeline and scoring) run through joblib's Dask backend: each batch of (candidate, split)
fits becomes a Dask task, and the training data is sent to every worker once, ahead of the
fits, so that losing a node loses no data. dask-ml's searches build their own task graph and
run it on the client. Either way the search object is the user's own, fitted in place, with
the usual cv_results_, best_params_, best_score_ and best_estimator_.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext, suppress

from experiments.cluster.messages import ClusterError
from experiments.cluster.polling import Poller

# Keys of the tasks that fit and score one candidate on one split: joblib's batches (named
# after the function and the number of calls in them) and dask-ml's fit-and-score tasks.
JOBLIB_BATCH = re.compile(r"batch_of__fit_and_score_(\d+)_calls")
DASK_ML_FIT = re.compile(r"-fit-score-")


def is_dask_ml(search) -> bool:
    return type(search).__module__.startswith("dask_ml.")


def expected_fits(search, X, y) -> int | None:
    """How many (candidate, split) fits the search will run, when that is known beforehand."""
    from sklearn.base import is_classifier
    from sklearn.model_selection import ParameterGrid, ParameterSampler, check_cv

    if hasattr(search, "param_grid"):
        candidates = len(ParameterGrid(search.param_grid))
    elif hasattr(search, "n_iter") and hasattr(search, "param_distributions"):
        candidates = len(ParameterSampler(search.param_distributions, search.n_iter, random_state=0))
    else:  # successive halving: the number of candidates shrinks as the search learns
        return None
    splits = check_cv(search.cv, y, classifier=is_classifier(search.estimator)).get_n_splits(X, y)
    return candidates * splits


class FitCounter:
    """Counts finished fits from the scheduler's task stream, looked at every `interval` seconds."""

    def __init__(self, client, on_fits: Callable[[int], object], interval: float = 0.25) -> None:
        self._client, self._on_fits = client, on_fits
        self._poller = Poller(self._poll, interval, "fit-counter")
        self._seen: set[str] = set()  # a task recomputed after a lost worker counts once

    def _poll(self) -> None:
        records = self._client.sync(self._client.scheduler.get_task_stream, start_index=self._start)
        self._start += len(records)  # the next look asks only for what is new
        fits = 0
        for record in records:
            key = str(record["key"])
            if key in self._seen or record.get("status") == "error":
                continue
            self._seen.add(key)
            if batch := JOBLIB_BATCH.search(key):
                fits += int(batch.group(1))
            elif DASK_ML_FIT.search(key):
                fits += 1
        if fits:
            self._on_fits(fits)

    def __enter__(self) -> FitCounter:
        # Asking for the cursor also starts the recording, if nothing had asked before.
        self._start = self._client.sync(self._client.scheduler.get_task_stream_index)
        self._poller.start()
        return self

    def __exit__(self, *exc_info) -> None:
        # The last fits, finished since the last look, unless the search failed.
        self._poller.stop(last_look=exc_info[0] is None)


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


@contextmanager
def worker_held(client, timeout: float) -> Iterator[None]:
    """One worker kept busy while the block runs, for the data scikit-learn's searches send to
    every worker before the fits. An adaptive cluster retires idle nodes only, so the data has a
    worker to go to (sent to a cluster whose last node is leaving, it would wait for a worker
    without asking for one). On a cluster with none yet, or whose last node is leaving, this
    task is what asks for a node. No worker within `timeout` seconds: ClusterError."""
    from distributed import Event, wait

    release = Event(client=client)
    # Distributed's own function: nothing of this project's needs to be importable on a worker.
    held = client.submit(release.wait, timeout, pure=False)
    deadline = time.monotonic() + timeout
    while not any(held.key in keys for keys in client.processing().values()):
        if time.monotonic() > deadline:
            client.cancel(held)  # it must not ask for a node later
            raise ClusterError(
                f"no worker node joined within {timeout:g} s; check the worker group in the AWS console, "
                "or pass --timeout"
            )
        time.sleep(0.05)
    try:
        yield
    finally:
        release.set()
        # Cancelling the task instead was seen to cancel the search's first fits ("already
        # forgotten"), so it is left to end. Once it has, the scheduler can forget the event;
        # until then (lost with its node, say) the event stays set, so the task ends wherever
        # it runs next rather than hold a node.
        with suppress(TimeoutError):
            wait(held, timeout=timeout)
        if held.done():
            release.clear()


def fit_on_cluster(
    client, search, X, y, *, on_fits: Callable[[int], object] | None = None, wait_for_workers: float = 600.0,
    **fit_params,
):  # fmt: skip
    """Fit `search` (a scikit-learn or dask-ml search object) with the cluster's workers.

    On a cluster with no worker yet (adaptive, from none), scikit-learn's searches wait up to
    `wait_for_workers` seconds for the first (see `worker_held`); dask-ml's graph waits in the
    scheduler's queue (its tasks are what asks for nodes).
    """
    counting = FitCounter(client, on_fits) if on_fits else nullcontext()
    with counting:
        if is_dask_ml(search):
            search.set_params(scheduler=client)
            return search.fit(X, y, **fit_params)
        from joblib import parallel_config

        if "pre_dispatch" in search.get_params():
            # Every fit of a round submitted at once, not two per thread of the nodes there are
            # when it starts: the scheduler sees the whole round, and an adaptive cluster adds
            # the nodes it needs; nodes that join take their share.
            search.set_params(pre_dispatch="all")
        # n_jobs=-1: as many fits at once as the cluster has threads. scatter: X and y go to
        # every worker once, now, and the fits refer to those copies.
        with ExitStack() as search_context:
            with worker_held(client, wait_for_workers):
                search_context.enter_context(
                    parallel_config(
                        backend="dask", n_jobs=-1, client=client, scatter=[X, y],
                        wait_for_workers_timeout=wait_for_workers,
                    )
                )  # fmt: skip
            search_context.enter_context(warning_filters_without_main())
            return search.fit(X, y, **fit_params)
