"""What the cluster's nodes run of this project, and all of it: a scikit-learn search's fits as
workers load and run them, and the check of what a node can import.

No node image holds this project: `user_code.ship` sends this module (and the package's
`__init__.py`) to the scheduler and every worker, present and future, before each search. So
it imports only what every Dask node has (the standard library, joblib and distributed), never
the laptop's modules, and a plain Dask cluster runs a search as a deployed one does. A search on
data in S3 needs boto3, pandas (and pyarrow for Parquet) on the workers too, imported when used.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import threading
import time

from joblib._dask import Batch
from joblib._utils import _TracebackCapturingWrapper
from joblib.parallel import parallel_config

BLOB = "pickled-"  # the shared names of values that travel pickled (the others are data)
TABLE = "s3-table-"  # the shared names of data each worker reads from S3 itself (spotsearch/s3_data.py)


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
            if name.startswith(TABLE):  # read from S3 by this worker, once (`table`)
                value = table(value)[name.endswith("-y")]
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


def timed_fit(estimator, X, y=None, **fit_params) -> tuple:
    """A search's refit on the cluster (for data in S3): the fitted estimator, and its seconds."""
    start = time.perf_counter()
    if y is None:
        estimator.fit(X, **fit_params)
    else:
        estimator.fit(X, y, **fit_params)
    return estimator, time.perf_counter() - start


# Data in S3, read by each worker process once and kept for the search (`forget_tables` after it).
SUFFIXES = (".csv", ".parquet", ".npy", ".npz")
MEMORY_SHARE = 0.5  # of a worker's memory limit, the most one table may take: its fits need the rest
# Kept across the reload each upload of this module makes (user_code.ship, before every search).
_tables: dict[str, tuple] = globals().get("_tables", {})  # by the spec's name: (X, y, its version)
_reading = globals().get("_reading", threading.Lock())  # a worker's threads wait for one read, not each make their own


class DataProblem(ValueError):
    """What is wrong with a data file, in one line (the caller names the file)."""


def read_table(file, suffix: str, target: str | None = None) -> tuple:
    """(X, y) from a data file (a path or a binary file): a table's columns but the target (a
    DataFrame, so that a pipeline can name its columns) and the target's; an array's columns
    but the target's (the last unless `target` is a column number, or a .npz file's X and y)."""
    import numpy as np
    import pandas as pd

    suffix = suffix.lower()
    if suffix not in SUFFIXES:
        raise DataProblem(f"not a data file this reads ({', '.join(SUFFIXES)})")
    try:
        if suffix == ".csv":
            table = pd.read_csv(file)
        elif suffix == ".parquet":
            table = pd.read_parquet(file)
        else:
            arrays = np.load(file, allow_pickle=False)  # a pickle in an array file runs code: refused
    except FileNotFoundError:
        raise DataProblem("no such file") from None
    except (OSError, ValueError, ImportError) as error:  # unreadable, malformed, a pickled array
        raise DataProblem(f"cannot be read ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if suffix in (".csv", ".parquet"):
        name = target if target is not None else table.columns[-1]
        if name not in table.columns:
            raise DataProblem(f"has no column {name!r} (the target); its columns: {list(table.columns)!r}")
        if len(table.columns) < 2:
            raise DataProblem("needs a column to predict from besides the target")
        return table.drop(columns=[name]), table[name].to_numpy()
    if suffix == ".npz":
        with arrays:  # an .npz file is read lazily, from a file kept open until closed
            names = ("X", target or "y")
            missing = [name for name in names if name not in arrays.files]
            if missing:
                raise DataProblem(f"has no array {missing[0]!r}; its arrays: {arrays.files!r}")
            X, y = (arrays[name] for name in names)
    else:
        if arrays.ndim != 2 or arrays.shape[1] < 2:
            raise DataProblem(f"must be a 2-D array with the target as one column, got shape {arrays.shape}")
        try:
            column = int(target) if target is not None else arrays.shape[1] - 1
            y = arrays[:, column]
        except (ValueError, IndexError):
            raise DataProblem(f"the target must be a column number below {arrays.shape[1]}, got {target!r}") from None
        X = np.delete(arrays, column, axis=1)
    if len(X) != len(y):
        raise DataProblem(f"X has {len(X)} rows and y {len(y)}")
    return X, y


def _memory_budget() -> int | None:
    """The bytes one table may take on this worker (None: no limit known)."""
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):  # not in a worker
        return None
    return int(limit * MEMORY_SHARE) if limit else None


def _s3_object(spec: dict) -> tuple[bytes, dict]:
    """The object's bytes and its head, the very version the laptop saw (its ETag)."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as error:
        raise DataProblem(f"the cluster's workers cannot read S3: {error}") from None
    s3 = boto3.session.Session().client("s3")
    where = {
        "Bucket": spec["bucket"],
        "Key": spec["key"],
        **({"VersionId": spec["version"]} if spec["version"] else {}),
    }
    try:
        head = s3.head_object(**where)
        if spec["etag"] and head["ETag"] != spec["etag"]:
            raise DataProblem("changed in S3 since the search began (another ETag); start the search again")
        _refuse_if_too_large(head["ContentLength"], "is")
        body = s3.get_object(**where, IfMatch=head["ETag"])["Body"].read()
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket", "NoSuchVersion"):
            raise DataProblem("no such object in S3") from None
        if code in ("403", "AccessDenied", "Forbidden", "AllAccessDisabled"):
            raise DataProblem("the cluster's workers may not read it (access denied)") from None
        if code in ("412", "PreconditionFailed"):
            raise DataProblem("changed in S3 since the search began (another ETag); start the search again") from None
        raise DataProblem(f"cannot be read from S3 ({code or error})") from None
    except BotoCoreError as error:
        raise DataProblem(f"cannot be read from S3 ({error})") from None
    return body, head


def _refuse_if_too_large(size: int, what: str) -> None:
    budget = _memory_budget()
    if budget and size > budget:
        raise DataProblem(
            f"{what} {size} bytes, more than a worker may hold for it ({budget} bytes, {MEMORY_SHARE:.0%} of its "
            "memory); choose larger worker types or fewer worker processes"
        )


def _read(spec: dict) -> tuple:
    body, head = _s3_object(spec)
    if spec["key"].lower().endswith(".parquet"):  # compressed: its size once read is in its footer
        import pyarrow.parquet

        try:
            meta = pyarrow.parquet.ParquetFile(io.BytesIO(body)).metadata
        except (OSError, ValueError):  # not Parquet: read_table says so
            meta = None
        if meta is not None:
            _refuse_if_too_large(sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)), "holds")
    X, y = read_table(io.BytesIO(body), "." + spec["key"].rpartition(".")[2], spec["target"])
    return X, y, {"etag": head["ETag"], "version": head.get("VersionId")}


def table(spec: dict) -> tuple:
    """(X, y, the object's ETag and version) of the table `spec` names, read from S3 by this
    worker process once."""
    with _reading:
        if spec["name"] not in _tables:
            _tables[spec["name"]] = _read(spec)
        return _tables[spec["name"]]


def table_facts(spec: dict) -> dict:
    """Read the table on a worker (kept for the search): what the laptop needs of it to run a
    search (its size, its columns, and y, which scikit-learn's splitters read), not X."""
    X, y, version = table(spec)
    columns = [str(c) for c in X.columns] if hasattr(X, "columns") else list(range(X.shape[1]))
    return {"rows": len(X), "columns": columns, "y": y, **version}


def forget_tables(names: list[str]) -> None:
    """The search is over: its tables leave this worker's memory."""
    with _reading:
        for name in names:
            _tables.pop(name, None)
