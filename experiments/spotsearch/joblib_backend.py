"""scikit-learn's searches on the cluster: joblib's Dask backend, made safe and fast for a user's search.

joblib's own backend (`joblib._dask.DaskDistributedBackend`, from upstream.py) is kept for what it does well (the
batches, the scattered data, the task names the fit counter reads); this subclass changes how
fits travel, which on many slots left most of them waiting on the scheduler:

- what every fit shares (the search object, which scikit-learn sends with every call, its
  settings and warning filters, a split's rows) is pickled and scattered once; each fit travels
  as a few hundred bytes of its own that refer to those, which the scheduler passes on without
  unpickling (it unpickled and pickled again some 15 KB of scikit-learn objects per fit);
- the batches made ready together go to the scheduler in one message, each still a task of its
  own (no fixed batch size: an adaptive cluster still sees every fit);
- finished fits' results are fetched together, not one request per fit;

and what would lose or leak a search:

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
- every finished fit is kept in the search's SavedFits as it arrives, and a fit an earlier
  attempt saved is not sent again (experiments/spotsearch/saved_fits.py): a search run again after a
  lost scheduler, or resumed, runs only what it had not finished.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from uuid import uuid4

from distributed import as_completed
from joblib.parallel import ParallelBackendBase

from spotsearch import node_code
from spotsearch.cluster.messages import WithoutMessage
from spotsearch.collector import Collector
from spotsearch.fit_calls import (
    FitNotSendable,
    SharedValues,
    with_parameters,
    without_idle_callback_context,
    without_parameters,
)
from spotsearch.fit_keys import FitKeys
from spotsearch.saved_fits import SavedFits
from spotsearch.upstream import FIT_AND_SCORE, dask_backend, wrapped_function

# What the workers run of a fit: this checkout's node code, by its hashed name (node_code.py).
FitBatch, run_fits = node_code.module().FitBatch, node_code.module().run_fits


PICKLE_LOG = logging.getLogger("distributed.protocol.pickle")

# The backend of the search being fitted on the cluster (search.py sets it for the fit), for a
# search that sends its fits itself (adaptive.py).
ACTIVE: ContextVar[ClusterBackend | None] = ContextVar("spotsearch_cluster_backend", default=None)


class ClusterBackend(Collector, dask_backend()):
    """joblib's Dask backend for one search on `client`; `release` when the search is over."""

    default_n_jobs = 1  # joblib calls that do not ask for the cluster (n_jobs=None) stay where they are

    def __init__(self, *args, saved: SavedFits | None = None, tables: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.saved = saved if saved is not None else SavedFits()
        self.fit_keys = FitKeys()  # this attempt's: a search run again counts its fits again
        self.released = False
        self._sending: set[object] = set()  # batches whose data or task is still on its way
        self.submitted: set = set()  # every fit task this search sent, until it is released
        self._outbox: list[tuple] = []  # batches ready to go in the next message
        self._task_of: dict[concurrent.futures.Future, object] = {}  # submit_fit's fits on the cluster
        self._shared = SharedValues(self.client, self.data_futures, tables)
        # Finished fits are collected together (see `_collect`), not gathered one by one.
        self.waiting_futures = as_completed([], loop=self.client.loop, raise_errors=False)
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

    def submit(self, func, callback=None):
        return self._send(func.items, self._fit_keys(func.items, self.fit_keys), callback)

    def submit_fit(self, call: tuple, fit_keys: FitKeys) -> concurrent.futures.Future:
        """One (candidate, split) fit of a search that picks its fits as it goes (adaptive.py),
        outside joblib's calls: keyed by the search's own `fit_keys`, saved as it ends or taken
        from the saved fits, stopped by `cancel`. `retrieve_result_callback` of its result is
        the fit's result in a list of one, or raises the fit's error."""
        return self._send([call], self._fit_keys([call], fit_keys), None)

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """joblib's collector of finished fits running for the block, outside joblib's calls (it
        runs during one only), for `submit_fit`'s fits."""
        self.start_call()
        try:
            yield
        finally:
            self.stop_call()

    def cancel(self, results: list[concurrent.futures.Future]) -> None:
        """Stop the fits `submit_fit` returned these futures for: dropped before they go, or
        cancelled on the cluster (see `_forget`)."""
        for result in results:
            result.cancel()

    def _forget(self, result: concurrent.futures.Future) -> None:
        """`result`'s task is over for the search: done, or cancelled (then on the cluster too).
        By its key only: `result`, in a cycle (its `get`), lives until Python's cycle collector
        runs, and a task it held would stay on the cluster until then."""
        task = self._task_of.pop(result, None)
        if task is not None and result.cancelled():
            self._results.pop(task, None)  # the collector skips it
            self._callbacks.pop(task, None)
            self.client.cancel([task])

    def _send(self, items: list, keys: list[str | None], callback) -> concurrent.futures.Future:
        result = concurrent.futures.Future()
        result.get = result.result  # joblib's AsyncResult interface
        todo = [i for i, key in enumerate(keys) if key is None or key not in self.saved]

        def finished(out) -> None:
            # On the event loop: `out` is the results of the calls sent, or the error they raised.
            if isinstance(out, list):
                for i, value in zip(todo, out, strict=True):
                    if keys[i] is not None:
                        self.saved.save(keys[i], without_parameters(value))
                sent = dict(zip(todo, out, strict=True))
                out = [
                    sent[i] if i in sent else with_parameters(self.saved.take(keys[i]), items[i])
                    for i in range(len(keys))
                ]
            if not result.done():
                result.set_result(out)
            if callback is not None:
                callback(out)

        def failed(error: BaseException) -> None:
            # joblib takes a batch's outcome from its callback: an exception there is raised in
            # the search's thread, which then aborts the search.
            if not result.done():
                result.set_exception(error)
            if callback is not None:
                callback(error)

        sending = object()  # this batch, until its task is out (see `release`)
        self._sending.add(sending)

        async def send() -> None:
            queued = False
            try:
                queued = await prepare_and_send()
            finally:
                if not queued:  # else `_send_outbox` lets it go once its task is out
                    self._sending.discard(sending)

        async def prepare_and_send() -> bool:
            """Whether the batch went to the outbox."""
            if not todo:  # every fit of the batch is saved: nothing to send
                finished([])
                return False
            calls = [without_idle_callback_context(items[i]) for i in todo]
            try:
                try:
                    payload, shared = await self._shared.packed(calls)
                except FitNotSendable as error:
                    unsendable = str(error)
                else:
                    unsendable = None
                # Raised again outside the handler, from this frame with the calls gone: see `pickled`.
                if unsendable:
                    del calls
                    raise FitNotSendable(unsendable)
            except BaseException as error:
                failed(error)
                return False
            if self.released or result.cancelled():  # the search, or this fit, ended meanwhile: drop it
                return False
            key = f"{FitBatch(calls)!r}-{uuid4().hex}"
            self._outbox.append((key, payload, shared, finished, failed, sending, result))
            if len(self._outbox) == 1:
                self.client.loop.add_callback(self._send_outbox)
            return True

        self.client.loop.add_callback(send)
        return result

    def _send_outbox(self) -> None:
        """Every batch made ready since the last call goes in one message: the scheduler handles
        one graph of many fits instead of a graph per fit (each still a task of its own)."""
        outbox, self._outbox = self._outbox, []
        if not outbox:
            return
        for batch in outbox:
            if batch[-1].cancelled():  # submit_fit's, cancelled on its way
                self._sending.discard(batch[-2])
        if not (outbox := [batch for batch in outbox if not batch[-1].cancelled()]):
            return
        keys, payloads, shared, finished, failed, sending, results = zip(*outbox, strict=True)
        try:
            if self.released:  # the search ended meanwhile: nothing of it goes out any more
                return
            try:
                tasks = self.client.map(run_fits, payloads, shared, key=list(keys), pure=False, **self.submit_kwargs)
            except BaseException as error:  # on the event loop, it would only be logged: the search ends with it
                for fail in failed:
                    fail(error)
                return
            for task, done, result in zip(tasks, finished, results, strict=True):
                # Held until it ends, not longer: a finished fit's result is the search's, not the cluster's.
                self.submitted.add(task)
                task.add_done_callback(self.submitted.discard)
                self.waiting_futures.add(task)
                self._callbacks[task] = done
                # joblib's collector sets this one with the results sent; `done` sets the search's.
                self._results[task] = concurrent.futures.Future()
                self._task_of[result] = task
                result.add_done_callback(self._forget)
        finally:
            # Until now `release` waited for these batches: their tasks are in `submitted`, or dropped.
            self._sending.difference_update(sending)

    @staticmethod
    def _fit_keys(items, fit_keys: FitKeys) -> list[str | None]:
        """Each call's key among the saved fits; None for a call that is not a fit."""
        names = [getattr(wrapped_function(f), "__name__", "") for f, _, _ in items]
        return [
            fit_keys.key(args, kwargs) if name == FIT_AND_SCORE else None
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
        aborted search leaves them in joblib's bookkeeping), its data and the values its fits
        share. The cluster holds nothing of it any more (its results are in the search object)."""
        # Batches still on their way stop at their next step; what they scattered meanwhile is
        # in `_shared`, so they are waited for (briefly: they are only sending).
        self.released = True
        deadline = time.monotonic() + 10
        while self._sending and time.monotonic() < deadline:
            time.sleep(0.01)
        PICKLE_LOG.removeFilter(self._quiet)
        self._cancel_submitted()
        for future in [*self.data_futures.values(), *self._results, *self._callbacks]:
            if hasattr(future, "release"):
                future.release()
        self._shared.release()
        for bookkeeping in (self._results, self._callbacks, self.data_futures, self._task_of):
            bookkeeping.clear()
        self._outbox.clear()
        self._scatter.clear()
        # The releases are sent from the event loop: let it run them before the caller looks.
        self.client.sync(asyncio.sleep, 0)
