"""A search on data kept in S3, read by the cluster's workers where it lives: this machine never
holds X nor sends it::

    fit_on_cluster(search, S3Data("s3://my-data/emails/train.parquet", target="label"))

Each worker process reads the object once (on_nodes.table), with its own AWS identity (a deployed
stack's worker role reads exactly what its `data_sources` setting names), and keeps it until the
search ends. One worker reads it first, for what scikit-learn needs of the data on this machine
to run a search: the number of rows, the columns, and y (its splitters read y to stratify; y is
never sent back). The fits get the workers' own copy, and so does the refit of the best
candidate, which runs on the cluster too. The data's identity, for saved fits and resumes, is
its location, target, ETag and version: a resume on an object that changed since is refused.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from uuid import uuid4

from spotsearch import node_code
from spotsearch.cluster.messages import ClusterError, shown

# The search's own `refit` while the search runs with refit=False (its refit runs on the
# cluster after it): AdaptiveSearchCV optimises the metric it names.
REFIT: ContextVar = ContextVar("spotsearch_refit_later")


class S3Data:
    """A table in S3 (CSV, Parquet, .npy or .npz) to fit a search on, read on the cluster.

    Parameters
    ----------
    url : s3://bucket/key of the object.
    target : what to predict: a column's name (CSV, Parquet), a column's number (.npy), or a .npz
        file's array of it; by default the last column (a .npz file's X and y arrays).
    version : the object's S3 version id, on a versioned bucket (default: its current one).
    """

    def __init__(self, url: str, target: str | int | None = None, *, version: str | None = None) -> None:
        bucket, _, key = url.removeprefix("s3://").partition("/") if isinstance(url, str) else ("", "", "")
        if not isinstance(url, str) or not url.startswith("s3://") or not bucket or not key or key.endswith("/"):
            raise ClusterError(f"S3Data: give an S3 object such as s3://my-data/train.parquet, not {shown(url)}")
        suffixes = node_code.module().SUFFIXES
        if not key.lower().endswith(suffixes):
            raise ClusterError(f"S3Data: {url} is not a data file this reads ({', '.join(suffixes)})")
        self.url, self.bucket, self.key = url, bucket, key
        self.target = None if target is None else str(target)
        self.version = version

    def __repr__(self) -> str:
        return f"S3Data({self.url!r}, target={self.target!r})"


class TableOnCluster:
    """X of a search on S3Data as this machine holds it: its shape and identity, no values.
    The fits' calls refer to the workers' copy by its shared name (fit_calls.SharedValues)."""

    def __init__(self, data: S3Data, spec: dict, facts: dict) -> None:
        self.data, self.spec, self.columns = data, spec, facts["columns"]
        self.shape = (facts["rows"], len(self.columns))

    def __len__(self) -> int:
        return self.shape[0]

    def _on_the_cluster(self, *_, **__):
        raise ClusterError(f"the data of this search is read on the cluster, from {self.data.url}: it is not here")

    __getitem__ = __array__ = __iter__ = _on_the_cluster

    def __dask_tokenize__(self):
        """What the saved fits record of X: the object, as S3 identifies it, and its target."""
        return ("s3-table", self.data.url, self.data.target, self.spec["etag"], self.spec["version"])

    def __repr__(self) -> str:
        return f"<{self.data!r} on the cluster: {self.shape[0]} rows, {self.shape[1]} columns>"


def covered(url: str, sources: tuple[str, ...]) -> bool:
    """Whether the `data_sources` entries (prefixes ending in /, or objects) include `url`."""
    return any(url == source or (source.endswith("/") and url.startswith(source)) for source in sources)


def _advice(where) -> str:
    if where is not None and where.stack:
        return f"; add it to clusters.{where.stack}.data_sources in cdktf.json and run cdktf deploy {where.stack}"
    return "; give the workers read access to it (on a deployed stack: its data_sources setting)"


def opened(data: S3Data, client, timeout: float) -> tuple[TableOnCluster, object]:
    """(X, y) of `data` for a search on `client`'s cluster: one worker reads it (and keeps it);
    every problem with it one line (ClusterError), before any fit."""
    where = getattr(getattr(client, "cluster", None), "where", None)  # a Cluster's: a stack's settings
    sources = getattr(where, "data_sources", None)
    uploads = (f"s3://{where.uploads_bucket}/uploads/",) if getattr(where, "uploads_bucket", None) else ()
    if sources is not None and not covered(data.url, sources + uploads):
        raise ClusterError(
            f"{data.url}: not among the S3 data this cluster's workers may read "
            f"(data_sources: {', '.join(sources) or 'none'}){_advice(where)}"
        )
    node = node_code.module()
    spec = {"name": f"{node.TABLE}{uuid4().hex}", "bucket": data.bucket, "key": data.key, "target": data.target,
            "version": data.version, "etag": None}  # fmt: skip
    future = client.submit(node.table_facts, spec, pure=False, key=f"read-{spec['name']}")
    try:
        facts = future.result(timeout=timeout)
    except node.DataProblem as problem:
        denied = "may not read" in str(problem)
        raise ClusterError(f"{data.url}: {problem}{_advice(where) if denied else ''}") from None
    except TimeoutError:
        raise ClusterError(f"{data.url}: no worker read it within {timeout:g} s; pass a longer timeout") from None
    finally:
        future.cancel()
    # Every later read is of the very object this one read.
    spec = {**spec, "etag": facts["etag"], "version": facts["version"]}
    return TableOnCluster(data, spec, facts), facts["y"]


def shared_names(X, y) -> dict[int, tuple[str, dict]]:
    """The parts of a search's data that workers read from S3 themselves: by id, (shared name, spec)."""
    if not isinstance(X, TableOnCluster):
        return {}
    return {id(X): (f"{X.spec['name']}-X", X.spec), id(y): (f"{X.spec['name']}-y", X.spec)}


@contextlib.contextmanager
def refit_kept(refit):
    """The search's own `refit` kept (REFIT) while it runs with refit=False: scikit-learn would
    refit in this process, which has no X; `refit_on_cluster` refits after the search."""
    token = REFIT.set(refit)
    try:
        yield
    finally:
        REFIT.reset(token)


def refit_on_cluster(search, X, y, fit_params: dict) -> None:
    """What `BaseSearchCV.fit` does after the search when its `refit` is set, with the fit on the
    cluster (through the search's joblib backend, which sends X as the workers' own copy)."""
    from joblib import Parallel, delayed
    from sklearn.base import clone

    from spotsearch.upstream import best_index, estimator_fit_params

    if not isinstance(X, TableOnCluster) or not search.refit:
        return
    refit, results = search.refit, search.cv_results_
    # With refit=False scikit-learn chose no best candidate for several metrics, and chose one
    # by rank, not by the user's function, for a callable refit.
    if search.multimetric_ or callable(refit):
        metric = refit if search.multimetric_ else "score"
        search.best_index_ = best_index(search, refit, metric, results)
        if callable(refit):
            vars(search).pop("best_score_", None)  # scikit-learn has none for a callable refit
        else:
            search.best_score_ = results[f"mean_test_{metric}"][search.best_index_]
        search.best_params_ = results["params"][search.best_index_]
    estimator = clone(search.estimator).set_params(**clone(search.best_params_, safe=False))
    fit = delayed(node_code.module().timed_fit)(estimator, X, y, **estimator_fit_params(search, fit_params))
    ((search.best_estimator_, search.refit_time_),) = Parallel(n_jobs=-1)([fit])
    if hasattr(search.best_estimator_, "feature_names_in_"):
        search.feature_names_in_ = search.best_estimator_.feature_names_in_


@contextlib.contextmanager
def problems_in_one_line(X):
    """A worker's read of the search's data that fails midway (the object changed since the
    search began, say) ends the search with one line naming the object, not a traceback."""
    node = node_code.module()
    try:
        yield
    except node.DataProblem as problem:
        if not isinstance(X, TableOnCluster):
            raise
        raise ClusterError(f"{X.data.url}: {problem}") from None


def forget(client, X) -> None:
    """The search is over: its table leaves the workers' memory."""
    # A client without its scheduler would wait for one: its workers went with it anyway.
    if isinstance(X, TableOnCluster) and client.status == "running":
        with contextlib.suppress(Exception):
            client.run(node_code.module().forget_tables, [X.spec["name"]])
