"""How a fit's call travels to the workers: the laptop's half of on_nodes.py's `run_fits`.

A call is pickled with what fits share (the search, a split's rows, scikit-learn's settings, the
data) left out as references, which the worker fills in from values sent once
(on_nodes.CallsLoader). What a saved fit keeps of a call's result is plain data (saved_fits.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import pickle

import cloudpickle

from spotsearch import node_code
from spotsearch.cluster.messages import ClusterError
from spotsearch.upstream import CONTEXT_CALLBACKS, ESTIMATOR_CALLBACKS


class FitNotSendable(ClusterError, pickle.PicklingError):
    """A fit cannot be pickled (scikit-learn sends the search itself with every fit, its cv
    included): the one line names what could not be."""


def _first_cause(error: BaseException) -> BaseException:
    """What could not be pickled, under distributed's own wrapping of it."""
    while (cause := error.__cause__ or error.__context__) is not None:
        error = cause
    return error


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
    if context is None or getattr(context, CONTEXT_CALLBACKS, True):
        return call
    parts = [estimator, *(estimator.get_params(deep=True).values() if hasattr(estimator, "get_params") else ())]
    if any(getattr(part, ESTIMATOR_CALLBACKS, None) for part in parts):
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


class SharedValues:
    """What the fits of one search share, each sent to every worker once and named in the fits'
    calls: the search's data as joblib scattered it (`data_futures`, id of X or y: its future)
    or, read from S3, as each worker reads it (`tables`, id of X or y: its name and spec), and
    each value of SHARED_FROM_BYTES or more, pickled (the search itself, the split's rows,
    scikit-learn's settings). `release` when the search is over."""

    def __init__(self, client, data_futures: dict, tables: dict | None = None) -> None:
        self._client, self._data = client, data_futures
        self._tables = tables or {}  # id of X or y read from S3 by the workers: (shared name, spec)
        self._shared: dict[str, object] = {}  # by name: a future (or its scatter, on its way)
        self._named: dict[int, tuple[object, str]] = {}  # id of a shared value: (value, its name)
        self._by_digest: dict[bytes, str] = {}  # a shared value's name by its pickle's digest

    async def packed(self, calls: list) -> tuple[bytes, dict]:
        """`calls` pickled, with what fits share as references into the returned dict (name: future)."""
        refs: dict[int, tuple[str, int]] = {}  # id of a value in `calls`: (shared name, which object)
        shared: dict[str, object] = {}
        for func, args, kwargs in calls:
            # The function too: scikit-learn's wrapper of `_fit_and_score` carries its config and
            # warning filters, the same for every fit.
            for value in (func, *args, *kwargs.values()):
                if id(value) not in refs and (name := await self._name(value)) is not None:
                    refs[id(value)] = (name, id(value))
                    shared[name] = self._shared[name]
        return pickled(calls, refs), shared

    async def _name(self, value) -> str | None:
        if id(value) in self._tables:  # data in S3: each worker reads it itself (s3_data.py)
            name, spec = self._tables[id(value)]
            self._shared.setdefault(name, spec)
            return name
        if id(value) in self._data:  # X and y, scattered to every worker before the search
            name = f"data-{self._data[id(value)].key}"
            self._shared.setdefault(name, self._data[id(value)])
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
                name = self._by_digest[digest] = f"{node_code.module().BLOB}{digest.hex()}"
                # To every worker now, as joblib does with the data; a worker that joins later
                # takes a copy from the others.
                self._shared[name] = asyncio.ensure_future(self._client.scatter(plain, hash=False, broadcast=True))
            self._named[id(value)] = (value, name)  # held: an id is only unique while its object lives
        if isinstance(self._shared[name], asyncio.Future):  # still being scattered (by this batch or another)
            self._shared[name] = await self._shared[name]
        return name

    def release(self) -> None:
        """Forget every shared value: the cluster holds none of them any more."""
        for value in list(self._shared.values()):
            if isinstance(value, asyncio.Future):
                # A scatter cut short by the abort has nothing to release.
                if not value.done() or value.cancelled() or value.exception():
                    continue
                value = value.result()
            if hasattr(value, "release"):
                value.release()
        for bookkeeping in (self._shared, self._named, self._by_digest):
            bookkeeping.clear()
