"""spotsearch: a scikit-learn hyperparameter search on a local Dask cluster (the default), on
any Dask cluster, or on a cluster of AWS spot instances that this project deploys::

    from distributed import Client
    from spotsearch import Cluster, fit_on_cluster

    with Cluster(stack="dask") as cluster, Client(cluster):  # Cluster(): this machine
        fit_on_cluster(search, X, y)

`run` is the same for a script: the command line's flags, the progress, a run folder with the
results, and every error as one line. `AdaptiveSearchCV` is a search that learns where to look
(Optuna's TPE) and prunes bad candidates after their first folds. `S3Data` names a table in S3
that the workers read where it lives, in place of X and y.

The names are loaded when first used: `import spotsearch` alone loads none of Dask,
scikit-learn or matplotlib. The nodes need none of this package (see node_code.py).
"""

from __future__ import annotations

import importlib

__all__ = ["AdaptiveSearchCV", "Cluster", "ClusterError", "S3Data", "fit_on_cluster", "run"]

_WHERE = {
    "AdaptiveSearchCV": "spotsearch.adaptive",
    "Cluster": "spotsearch.cluster.connect",
    "ClusterError": "spotsearch.cluster.messages",
    "S3Data": "spotsearch.s3_data",
    "fit_on_cluster": "spotsearch.search",
    "run": "spotsearch.script",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'spotsearch' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
