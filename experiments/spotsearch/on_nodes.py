"""What the cluster's nodes run of this project, and all of it: a scikit-learn search's fits as
workers load and run them, and the check of what a node can import.

No node image holds this project: `user_code.ship` sends this module (and the package's
`__init__.py`) to the scheduler and every worker, present and future, before each search. So
it imports only what every Dask node has (the standard library and joblib), never the laptop's
modules, and a plain Dask cluster runs a search as a deployed one does.
"""

from __future__ import annotations

import importlib.util
import io
import pickle

from joblib._dask import Batch
from joblib._utils import _TracebackCapturingWrapper
from joblib.parallel import parallel_config

BLOB = "pickled-"  # the shared names of values that travel pickled (the others are data)


class FitBatch(Batch):
    """joblib's batch of fits (same task names), with nested joblib calls kept on the worker."""

    def __call__(self, tasks=None):
        with parallel_config(backend="threading"):  # n_jobs=None: one at a time, as in scikit-learn
            return [func(*args, **kwargs) for func, args, kwargs in tasks]


class CallsLoader(pickle.Unpickler):
    """Loads what `joblib_backend.pickled` wrote, on the worker, taking the references from `shared`."""

    def __init__(self, file, shared: dict) -> None:
        super().__init__(file)
        self.shared, self.loaded = shared, {}

    def persistent_load(self, ref):
        name, _ = ref
        if ref not in self.loaded:
            value = self.shared[name]
            # A fresh copy for each object it stood for: a fit changes its estimator.
            self.loaded[ref] = pickle.loads(value) if name.startswith(BLOB) else value  # noqa: S301 (ours)
        return self.loaded[ref]


def run_fits(payload: bytes, shared: dict):
    """One batch's calls, on a worker; `shared` holds the values its calls share, by name."""
    calls = CallsLoader(io.BytesIO(payload), shared).load()
    return _TracebackCapturingWrapper(FitBatch(calls))(tasks=calls)


def missing_on_the_cluster(names: list[str]) -> list[str]:
    """Run on a node: which of `names` it cannot import."""
    return [name for name in names if importlib.util.find_spec(name) is None]
