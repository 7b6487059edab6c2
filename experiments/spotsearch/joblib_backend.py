"""scikit-learn's searches on the cluster: joblib's Dask backend, made safe and fast for a user's search.

joblib's own backend (`joblib._dask.DaskDistributedBackend`) is kept for what it does well (the
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
import hashlib
import io
import logging
import pickle
import time
from uuid import uuid4

import cloudpickle
from distributed import as_completed
from distributed.client import CancelledError
from joblib._dask import DaskDistributedBackend
from joblib.parallel import ParallelBackendBase

from spotsearch import node_code
from spotsearch.cluster.messages import ClusterError, WithoutMessage
from spotsearch.saved_fits import FitKeys, SavedFits

# What the workers run of a fit: this checkout's node code, by its hashed name (node_code.py).
BLOB, FitBatch, run_fits = (getattr(node_code.module(), name) for name in ("BLOB", "FitBatch", "run_fits"))


class FitNotSendable(ClusterError, pickle.PicklingError):
    """A fit cannot be pickled (scikit-learn sends the search itself with every fit, its cv
    included): the one line names what could not be."""


def _first_cause(error: BaseException) -> BaseException:
    """What could not be pickled, under distributed's own wrapping of it."""
    while (cause := error.__cause__ or error.__context__) is not None:
        error = cause
    return error


PICKLE_LOG = logging.getLogger("distributed.protocol.pickle")


SHARED_FROM_BYTES = 1024  # a value of the calls this large, pickled, travels once, not with each fit
SMALL_TYPES = {type(None), bool, int, float, str}  # never shared: not worth a look


class _LeavesOut:
    """A pickler that writes the objects in `refs` (by id) as references to shared values."""

    refs: dict[int, tuple[str, int]]  # set before each dump

    def persistent_id(self, obj):
        return self.refs.get(id(obj))


class _Plain(_LeavesOut, pickle.Pickler):
    pass


class _ByValue(_LeavesOut, cloudpickle.Pickler):
    pass


def pickled(value, refs: dict[int, tuple[str, int]] | None = None) -> bytes:
    """`value` pickled, with the objects in `refs` (by id) left out as references to shared values.
    As distributed does: pickle's fast C pickler, and cloudpickle only for what must travel by
    value (a class or function of the script, `__main__`, which the workers cannot import)."""
    buffer = io.BytesIO()
    try:
        pickler = _Plain(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.refs = refs or {}
        pickler.dump(value)
        if b"__main__" not in buffer.getvalue():
            return buffer.getvalue()
    except Exception:  # noqa: S110 (what pickle refuses, cloudpickle may take: a lambda, say)
        pass
    try:
        buffer = io.BytesIO()
        pickler = _ByValue(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.refs = refs or {}
        pickler.dump(value)
        return buffer.getvalue()
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        cause = str(_first_cause(error))
    # Raised outside the handler and without the value: a notebook keeps the last exception,
    # and its frames must not keep the search's data (and its futures) alive.
    del value, refs, buffer, pickler
    raise FitNotSendable(f"a fit of this search cannot be sent to the cluster: {cause}")


def without_idle_callback_context(call: tuple) -> tuple:
    """`call`, with a callback context (scikit-learn's experimental callbacks) that no callback
    uses replaced by None. Each fit's context links to the search's whole tree of contexts, so
    pickled it carries every fit's, growing with the search; without a callback on the search
    or on the estimator its hooks do nothing, and `_fit_and_score` treats None as no callbacks."""
    func, args, kwargs = call
    context, estimator = kwargs.get("callback_ctx"), args[0] if args else kwargs.get("estimator")
    if context is None or getattr(context, "_callbacks", True):
        return call
    parts = [estimator, *(estimator.get_params(deep=True).values() if hasattr(estimator, "get_params") else ())]
    if any(getattr(part, "_skl_callbacks", None) for part in parts):
        return call
    return func, args, {**kwargs, "callback_ctx": None}


def without_parameters(result):
    """A fit's result without the candidate it was given back (`return_parameters`): the
    candidate may hold estimators or functions, which a saved fit, plain data, does not; the call
    that takes the saved fit has the same candidate (it is part of the key)."""
    if isinstance(result, dict) and "parameters" in result:
        return {name: value for name, value in result.items() if name != "parameters"}
    return result


def with_parameters(result, call: tuple):
    """A saved fit's result as `_fit_and_score` returns it for `call`."""
    _, _, kwargs = call
    if isinstance(result, dict) and kwargs.get("return_parameters"):
        return {**result, "parameters": kwargs.get("parameters")}
    return result


class ClusterBackend(DaskDistributedBackend):
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
        self._shared: dict[str, object] = {}  # what fits share, by name: a future (or its scatter)
        self._named: dict[int, tuple[object, str]] = {}  # id of a shared value: (value, its name)
        self._by_digest: dict[bytes, str] = {}  # a shared value's name by its pickle's digest
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
            return await future._result(raiseit=False)
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
                    payload, shared = await self._packed(calls)
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

    async def _packed(self, calls: list) -> tuple[bytes, dict]:
        """`calls` pickled, with what fits share as references into `shared` (name: future): the
        search's data as joblib scattered it, and each value of 1 KB or more pickled and
        scattered once (the search itself, the split's rows, scikit-learn's settings)."""
        refs: dict[int, tuple[str, int]] = {}  # id of a value in `calls`: (shared name, which object)
        shared: dict[str, object] = {}
        for func, args, kwargs in calls:
            # The function too: scikit-learn's wrapper of `_fit_and_score` carries its config and
            # warning filters, the same for every fit.
            for value in (func, *args, *kwargs.values()):
                if id(value) not in refs and (name := await self._shared_name(value)) is not None:
                    refs[id(value)] = (name, id(value))
                    shared[name] = self._shared[name]
        return pickled(calls, refs), shared

    async def _shared_name(self, value) -> str | None:
        if id(value) in self.data_futures:  # X and y, scattered to every worker before the search
            name = f"data-{self.data_futures[id(value)].key}"
            self._shared.setdefault(name, self.data_futures[id(value)])
            return name
        if id(value) in self._named:
            name = self._named[id(value)][1]
        else:
            if type(value) in SMALL_TYPES:
                return None
            digest = hashlib.sha256(plain := pickled(value)).digest()
            if len(plain) < SHARED_FROM_BYTES:
                return None
            if (name := self._by_digest.get(digest)) is None:
                name = self._by_digest[digest] = f"{BLOB}{digest.hex()}"
                # To every worker now, as joblib does with the data; a worker that joins later
                # takes a copy from the others.
                self._shared[name] = asyncio.ensure_future(self.client.scatter(plain, hash=False, broadcast=True))
            self._named[id(value)] = (value, name)  # held: an id is only unique while its object lives
        if isinstance(self._shared[name], asyncio.Future):  # still being scattered (by this batch or another)
            self._shared[name] = await self._shared[name]
        return name

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
        # sklearn wraps each call's function (to carry its config); the wrapper names it `function`.
        names = [getattr(getattr(f, "function", f), "__name__", "") for f, _, _ in items]
        return [
            self.fit_keys.key(args, kwargs) if name == "_fit_and_score" else None
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
        shared = [
            value.result() if isinstance(value, asyncio.Future) else value
            for value in list(self._shared.values())
            # A scatter cut short by the abort has nothing to release.
            if not isinstance(value, asyncio.Future)
            or (value.done() and not value.cancelled() and not value.exception())
        ]
        for future in [*self.data_futures.values(), *shared, *self._results, *self._callbacks]:
            if hasattr(future, "release"):
                future.release()
        for bookkeeping in (
            self._results,
            self._callbacks,
            self.data_futures,
            self._shared,
            self._named,
            self._by_digest,
        ):
            bookkeeping.clear()
        self._outbox.clear()
        self._scatter.clear()
        # The releases are sent from the event loop: let it run them before the caller looks.
        self.client.sync(asyncio.sleep, 0)
