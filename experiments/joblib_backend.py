"""scikit-learn's searches on the cluster: joblib's Dask backend, made safe for a user's search.

joblib's own backend (`joblib._dask.DaskDistributedBackend`) is kept for what it does well (the
batches, the scattered data, the task names the fit counter reads); this subclass changes what
would lose or leak a search:

- a batch that cannot be sent (an unpicklable cv generator, say) fails the search at once with
  the pickling error; joblib's backend submits from an event-loop callback, where the error is
  only logged and the search waits forever;
- an aborted search (an error, Ctrl-C) cancels every fit it submitted, and `release` forgets
  the data it scattered: nothing keeps running, or holding memory, on the cluster;
- the fits run as scikit-learn runs them: an estimator's own joblib use inside a fit (a forest's
  trees) stays in that fit's task, on the worker's threads, as its `n_jobs` says, instead of
  going to the scheduler as tasks of their own; joblib calls with `n_jobs=None` (the refit of a
  forest in the client, say) run sequentially, as in scikit-learn;
- a cluster with one thread still runs the fits there, one at a time: joblib would take one
  job for "run in this process";
- every finished fit is kept in the search's SavedFits as it arrives, and a fit already there
  is not sent again (experiments/saved_fits.py): a search run again after a lost scheduler,
  or resumed, runs only what it had not finished.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import pickle
import time
from types import SimpleNamespace
from uuid import uuid4

from joblib._dask import Batch, DaskDistributedBackend
from joblib._utils import _TracebackCapturingWrapper
from joblib.parallel import ParallelBackendBase, parallel_config

from experiments.cluster.messages import ClusterError, WithoutMessage
from experiments.saved_fits import SavedFits, joblib_fit_key


class FitNotSendable(ClusterError, pickle.PicklingError):
    """A fit cannot be pickled (scikit-learn sends the search itself with every fit, its cv
    included): the one line names what could not be."""


def _first_cause(error: BaseException) -> BaseException:
    """What could not be pickled, under distributed's own wrapping of it."""
    while (cause := error.__cause__ or error.__context__) is not None:
        error = cause
    return error


PICKLE_LOG = logging.getLogger("distributed.protocol.pickle")


class FitBatch(Batch):
    """joblib's batch of fits (same task names), with nested joblib calls kept on the worker."""

    def __call__(self, tasks=None):
        with parallel_config(backend="threading"):  # n_jobs=None: one at a time, as in scikit-learn
            return [func(*args, **kwargs) for func, args, kwargs in tasks]


class ClusterBackend(DaskDistributedBackend):
    """joblib's Dask backend for one search on `client`; `release` when the search is over."""

    default_n_jobs = 1  # joblib calls that do not ask for the cluster (n_jobs=None) stay where they are

    def __init__(self, *args, saved: SavedFits | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.saved = saved if saved is not None else SavedFits()
        self.released = False
        self._sending: set[object] = set()  # batches whose data or task is still on its way
        self.submitted: set = set()  # every fit task this search sent, until it is released
        # distributed logs a traceback for an object it cannot pickle; the search says it in one line.
        self._quiet = WithoutMessage("Failed to serialize")
        PICKLE_LOG.addFilter(self._quiet)

    def __reduce__(self):
        return (ParallelBackendBase, ())  # never sent anywhere; joblib's would rebuild a Dask backend

    def get_nested_backend(self):
        return ParallelBackendBase.get_nested_backend(self)

    def effective_n_jobs(self, n_jobs):
        if n_jobs == 1:
            return 1
        # Never 1 for the cluster: joblib would run the search in this process instead.
        return max(2, super().effective_n_jobs(n_jobs))

    async def _to_func_args(self, func):
        _, tasks = await super()._to_func_args(func)
        return FitBatch(tasks), tasks

    def submit(self, func, callback=None):
        result = concurrent.futures.Future()
        result.get = result.result  # joblib's AsyncResult interface

        keys = self._fit_keys(func.items)
        todo = [i for i, key in enumerate(keys) if key is None or key not in self.saved]

        def finished(out) -> None:
            # On the event loop: `out` is the results of the calls sent, or the error they raised.
            if isinstance(out, list):
                for i, value in zip(todo, out, strict=True):
                    if keys[i] is not None:
                        self.saved.save(keys[i], value)
                sent = dict(zip(todo, out, strict=True))
                out = [sent[i] if i in sent else self.saved.take(keys[i]) for i in range(len(keys))]
            if not result.done():
                result.set_result(out)
            if callback is not None:
                callback(out)

        sending = object()  # this batch, until its data and task are out (see `release`)
        self._sending.add(sending)

        async def send() -> None:
            try:
                await prepare_and_send()
            finally:
                self._sending.discard(sending)

        async def prepare_and_send() -> None:
            if not todo:  # every fit of the batch is saved: nothing to send
                finished([])
                return
            try:
                batch, tasks = await self._to_func_args(SimpleNamespace(items=[func.items[i] for i in todo]))
                if self.released:  # the search ended while this batch's data went out: drop it
                    return
                unsendable = None
                try:
                    task = self.client.submit(
                        _TracebackCapturingWrapper(batch), tasks=tasks, key=f"{batch!r}-{uuid4().hex}",
                        **self.submit_kwargs,
                    )  # fmt: skip
                except (pickle.PicklingError, TypeError, AttributeError) as error:
                    unsendable = f"a fit of this search cannot be sent to the cluster: {_first_cause(error)}"
                # Raised outside the handler, and without the batch: neither the pickling error's
                # frames nor this one may hold the batch's data futures in the search's exception
                # (a notebook keeps the last exception: the data would stay on the cluster).
                if unsendable:
                    del batch, tasks
                    raise FitNotSendable(unsendable)
            except BaseException as error:
                # joblib takes a batch's outcome from its callback: an exception there is raised
                # in the search's thread, which then aborts the search.
                result.set_exception(error)
                if callback is not None:
                    callback(error)
                return
            # Held until it ends, not longer: a finished fit's result is the search's, not the cluster's.
            self.submitted.add(task)
            task.add_done_callback(self.submitted.discard)
            self.waiting_futures.add(task)
            self._callbacks[task] = finished
            # joblib's collector sets this one with the results sent; `finished` sets the search's.
            self._results[task] = concurrent.futures.Future()

        self.client.loop.add_callback(send)
        return result

    @staticmethod
    def _fit_keys(items) -> list[str | None]:
        """Each call's key among the saved fits; None for a call that is not a fit."""
        # sklearn wraps each call's function (to carry its config); the wrapper names it `function`.
        names = [getattr(getattr(f, "function", f), "__name__", "") for f, _, _ in items]
        return [
            joblib_fit_key(args, kwargs) if name == "_fit_and_score" else None
            for name, (_, args, kwargs) in zip(names, items, strict=True)
        ]

    def abort_everything(self, ensure_ready=True):
        super().abort_everything(ensure_ready)
        self._cancel_submitted()

    def _cancel_submitted(self) -> None:
        pending = [task for task in list(self.submitted) if not task.done()]
        if pending:
            self.client.cancel(pending)
        self.submitted.clear()

    def release(self) -> None:
        """Cancel what is still running and forget every future of this search: its fits (an
        aborted search leaves them in joblib's bookkeeping), the data scattered ahead of them, and
        what joblib scattered on its own. The cluster holds nothing of it any more (its results
        are in the search object)."""
        # Batches still on their way stop at their next step; what they scattered meanwhile goes
        # to joblib's mapping below, so they are waited for (briefly: they are only sending).
        self.released = True
        deadline = time.monotonic() + 10
        while self._sending and time.monotonic() < deadline:
            time.sleep(0.01)
        PICKLE_LOG.removeFilter(self._quiet)
        self._cancel_submitted()
        # What joblib scattered on its own, kept as the asyncio tasks that scattered it (in a
        # weak-key mapping of its own, by id); one cut short by the abort has nothing to release.
        call_data = getattr(self, "call_data_futures", None)
        tasks = [task for _, task in getattr(call_data, "_data", {}).values()]
        scattered = [task.result() for task in tasks if task.done() and not task.cancelled() and not task.exception()]
        for future in [*self.data_futures.values(), *scattered, *self._results, *self._callbacks]:
            if hasattr(future, "release"):
                future.release()
        for bookkeeping in (self._results, self._callbacks, self.data_futures):
            bookkeeping.clear()
        if call_data is not None:
            call_data.clear()
        self.call_data_futures = None  # a batch sent now would not scatter its data
        self._scatter.clear()
        # The releases are sent from the event loop: let it run them before the caller looks.
        self.client.sync(asyncio.sleep, 0)
