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
from uuid import uuid4

from distributed import as_completed
from distributed.client import CancelledError
from joblib.parallel import ParallelBackendBase

from spotsearch import node_code
from spotsearch.cluster.messages import WithoutMessage
from spotsearch.fit_calls import (
    FitNotSendable,
    SharedValues,
    with_parameters,
    without_idle_callback_context,
    without_parameters,
)
from spotsearch.fit_keys import FitKeys
from spotsearch.saved_fits import SavedFits
from spotsearch.upstream import FIT_AND_SCORE, dask_backend, outcome, wrapped_function

# What the workers run of a fit: this checkout's node code, by its hashed name (node_code.py).
FitBatch, run_fits = node_code.module().FitBatch, node_code.module().run_fits


PICKLE_LOG = logging.getLogger("distributed.protocol.pickle")


class ClusterBackend(dask_backend()):
    """joblib's Dask backend for one search on `client`; `release` when the search is over."""

    default_n_jobs = 1  # joblib calls that do not ask for the cluster (n_jobs=None) stay where they are

    def __init__(self, *args, saved: SavedFits | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.saved = saved if saved is not None else SavedFits()
        self.fit_keys = FitKeys()  # this attempt's: a search run again counts its fits again
        self.released = False
        self._sending: set[object] = set()  # batches whose data or task is still on its way
        self.submitted: set = set()  # every fit task this search sent, until it is released
        self._outbox: list[tuple] = []  # batches ready to go in the next message
        self._shared = SharedValues(self.client, self.data_futures)
        # Finished fits are collected together (see `_collect`), not gathered one by one.
        self.waiting_futures = as_completed([], loop=self.client.loop, raise_errors=False)
        # distributed logs a traceback for an object it cannot pickle; the search says it in one line.
        self._quiet = WithoutMessage("Failed to serialize")
        PICKLE_LOG.addFilter(self._quiet)

    async def _collect(self):
        """joblib's collector, taking the results of every fit finished so far in one request:
        joblib's asks the scheduler once per fit, and on many slots the results then come
        back slower than the fits end."""
        while self._continue:
            async for first in self.waiting_futures:
                ready = [first, *self.waiting_futures.next_batch(block=False)]
                finished = [future for future in ready if future.status == "finished"]
                values = await self._gathered(finished)
                for future in ready:
                    out = await self._outcome(future, values)
                    result, callback = self._results.pop(future, None), self._callbacks.pop(future, None)
                    if result is None:  # forgotten by an abort meanwhile
                        continue
                    if future.status == "error":
                        result.set_exception(out[1])
                    else:
                        result.set_result(out)
                        callback(out)
            await asyncio.sleep(0.01)

    async def _gathered(self, finished: list) -> dict:
        """The results of `finished`, by future; none if one was lost meanwhile (its worker, or the
        scheduler: the request would wait for it as long as the client's connection timeout)."""
        gathering = asyncio.ensure_future(self.client.gather(finished, asynchronous=True))
        while not gathering.done():
            await asyncio.wait([gathering], timeout=0.1)
            if self.client.status != "running" or any(future.status != "finished" for future in finished):
                gathering.cancel()
                return {}
        if gathering.exception() is not None:
            return {}  # each is taken on its own (`_outcome`), as joblib does
        return dict(zip(finished, gathering.result(), strict=True))

    @staticmethod
    async def _outcome(future, values: dict):
        """A fit's result, or what joblib's collector gets for an error: (type, exception,
        traceback); a cancelled fit (a lost scheduler) gives its CancelledError, as joblib's."""
        if future in values:
            return values[future]
        try:
            return await outcome(future)
        except (CancelledError, asyncio.CancelledError) as cancelled:
            return cancelled
        except Exception as error:  # never the collector's end: the search would wait for ever
            return error  # joblib raises an exception given as a batch's outcome

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
        result = concurrent.futures.Future()
        result.get = result.result  # joblib's AsyncResult interface

        keys = self._fit_keys(func.items)
        todo = [i for i, key in enumerate(keys) if key is None or key not in self.saved]

        def finished(out) -> None:
            # On the event loop: `out` is the results of the calls sent, or the error they raised.
            if isinstance(out, list):
                for i, value in zip(todo, out, strict=True):
                    if keys[i] is not None:
                        self.saved.save(keys[i], without_parameters(value))
                sent = dict(zip(todo, out, strict=True))
                out = [
                    sent[i] if i in sent else with_parameters(self.saved.take(keys[i]), func.items[i])
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
            calls = [without_idle_callback_context(func.items[i]) for i in todo]
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
            if self.released:  # the search ended while this batch was on its way: drop it
                return False
            key = f"{FitBatch(calls)!r}-{uuid4().hex}"
            self._outbox.append((key, payload, shared, finished, failed, sending))
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
        keys, payloads, shared, finished, failed, sending = zip(*outbox, strict=True)
        try:
            if self.released:  # the search ended meanwhile: nothing of it goes out any more
                return
            try:
                tasks = self.client.map(run_fits, payloads, shared, key=list(keys), pure=False, **self.submit_kwargs)
            except BaseException as error:  # on the event loop, it would only be logged: the search ends with it
                for fail in failed:
                    fail(error)
                return
            for task, done in zip(tasks, finished, strict=True):
                # Held until it ends, not longer: a finished fit's result is the search's, not the cluster's.
                self.submitted.add(task)
                task.add_done_callback(self.submitted.discard)
                self.waiting_futures.add(task)
                self._callbacks[task] = done
                # joblib's collector sets this one with the results sent; `done` sets the search's.
                self._results[task] = concurrent.futures.Future()
        finally:
            # Until now `release` waited for these batches: their tasks are in `submitted`, or dropped.
            self._sending.difference_update(sending)

    def _fit_keys(self, items) -> list[str | None]:
        """Each call's key among the saved fits; None for a call that is not a fit."""
        names = [getattr(wrapped_function(f), "__name__", "") for f, _, _ in items]
        return [
            self.fit_keys.key(args, kwargs) if name == FIT_AND_SCORE else None
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
        for bookkeeping in (self._results, self._callbacks, self.data_futures):
            bookkeeping.clear()
        self._outbox.clear()
        self._scatter.clear()
        # The releases are sent from the event loop: let it run them before the caller looks.
        self.client.sync(asyncio.sleep, 0)
