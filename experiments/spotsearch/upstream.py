"""The private names of joblib, scikit-learn, distributed, dask and dask-ml that spotsearch relies
on, all of them, in one place.

The rest of the package reaches them only through this module, and tests/test_upstream.py has a
test for each that fails, naming it, when an upgrade renames or changes it. The node code
(on_nodes.py) is the one exception: it travels to the nodes alone, so it imports its two joblib
names itself; NODE_NAMES lists them for the same tests.
"""

from __future__ import annotations

import re

# What joblib's Dask backend (`dask_backend`) has inside that ClusterBackend (joblib_backend.py)
# overrides or uses: its collector of finished fits, the flag that keeps it going, its
# bookkeeping of results, callbacks and scattered data, and its client.
DASK_BACKEND_INTERNALS = (
    "_collect",
    "_continue",
    "_results",
    "_callbacks",
    "_scatter",
    "data_futures",
    "waiting_futures",
    "submit_kwargs",
    "client",
)

# Task keys of (candidate, split) fits, which the fit counter reads in the scheduler's task
# stream: joblib names a batch's task after its function and its number of calls
# (`joblib._dask.Batch.__repr__`); dask-ml names its fit-and-score tasks.
JOBLIB_BATCH = re.compile(r"batch_of__fit_and_score_(\d+)_calls")
DASK_ML_FIT = re.compile(r"-fit-score-")

# scikit-learn's function that fits and scores one candidate on one split
# (`sklearn.model_selection._validation._fit_and_score`), and the keywords of its calls that
# spotsearch reads (a fit's key, fit_keys.py) or changes (fit_calls.py).
FIT_AND_SCORE = "_fit_and_score"
FIT_AND_SCORE_KEYWORDS = (
    "estimator",
    "parameters",
    "train",
    "test",
    "scorer",
    "fit_params",
    "score_params",
    "return_train_score",
    "return_n_test_samples",
    "return_times",
    "return_estimator",
    "return_parameters",
    "error_score",
    "callback_ctx",
)

# What `clone` keeps of an estimator besides its parameters: metadata requests and set_output's
# configuration. A fit's key includes them.
ESTIMATOR_CONFIG = ("_metadata_request", "_sklearn_output_config")

# scikit-learn's experimental callbacks: a callback context's callbacks, an estimator's own.
CONTEXT_CALLBACKS = "_callbacks"
ESTIMATOR_CALLBACKS = "_skl_callbacks"

# What on_nodes.py imports itself (see the module's docstring).
NODE_NAMES = ("joblib._dask.Batch", "joblib._utils._TracebackCapturingWrapper")


def dask_backend() -> type:
    """joblib's Dask backend (`joblib._dask.DaskDistributedBackend`), which ClusterBackend extends.
    Imported when asked for: it loads distributed, which this module's other users (the plotting
    helper among them, through saved_fits.py) must not."""
    from joblib._dask import DaskDistributedBackend

    return DaskDistributedBackend


def wrapped_function(func):
    """The function inside scikit-learn's wrapper of each delayed call
    (`sklearn.utils.parallel._FuncWrapper`, which carries scikit-learn's config to the call)."""
    return getattr(func, "function", func)


async def outcome(future):
    """A finished distributed Future's result or, without raising, its error as (type, exception,
    traceback) (`Future._result`), which joblib's collector takes as a batch's outcome."""
    return await future._result(raiseit=False)


def data_node(key, value):
    """A task of dask's graph that holds `value` as it is (`dask._task_spec.DataNode`)."""
    from dask._task_spec import DataNode

    return DataNode(key, value)


def incremental_search_base() -> type:
    """The base class of dask-ml's incremental searches (Hyperband and the like)."""
    from dask_ml.model_selection._incremental import BaseIncrementalSearchCV

    return BaseIncrementalSearchCV


def fit_and_score():
    """scikit-learn's function that fits and scores one candidate on one split
    (`sklearn.model_selection._validation._fit_and_score`)."""
    from sklearn.model_selection._validation import _fit_and_score

    return _fit_and_score


def fit_inputs(search, X, y, params: dict) -> tuple:
    """What `BaseSearchCV.fit` hands each (candidate, split) fit through its evaluate_candidates,
    for a search (adaptive.py) that sends its fits itself, from inside its `_run_search`:
    (base estimator, X, y, splits, the metric to optimise, the calls' other keywords). The
    same values, so that each fit has the key its evaluate_candidates call will look for.

    Private: `_check_method_params`, the search's `_get_scorers`, `_get_routed_params_for_fit`
    and `_checked_cv_orig` (which `fit` sets before `_run_search`, as `_run_search`'s docstring says)."""
    from sklearn.base import clone
    from sklearn.utils import indexable
    from sklearn.utils.validation import _check_method_params

    X, y = indexable(X, y)
    routed = search._get_routed_params_for_fit(_check_method_params(X, params=params))
    scorers, refit_metric = search._get_scorers()
    splits = list(search._checked_cv_orig.split(X, y, **routed.splitter.split))
    keywords = dict(
        scorer=scorers, fit_params=routed.estimator.fit, score_params=routed.scorer.score,
        return_train_score=search.return_train_score, return_n_test_samples=True, return_times=True,
        return_parameters=False, error_score=search.error_score, verbose=search.verbose, caller=search,
        callback_ctx=None,
    )  # fmt: skip
    return clone(search.estimator), X, y, splits, refit_metric, keywords


def best_index(search, refit, refit_metric: str, results: dict) -> int:
    """The best candidate's index as the search's `fit` chooses it for `refit` (the halving
    searches choose among the last round's). Private: the search's `_select_best_index`."""
    return search._select_best_index(refit, refit_metric, results)


def estimator_fit_params(search, params: dict) -> dict:
    """The fit parameters `BaseSearchCV.fit` gives the estimator's fits and refit (without
    `groups`, or as metadata routing routes them). Private: `_get_routed_params_for_fit`."""
    return dict(search._get_routed_params_for_fit(params).estimator.fit)


def base_search() -> type:
    """scikit-learn's base class of its searches (`sklearn.model_selection._search.BaseSearchCV`),
    which AdaptiveSearchCV extends as its `_run_search` docstring invites."""
    from sklearn.model_selection._search import BaseSearchCV

    return BaseSearchCV


def configured(call: tuple, config: dict, warning_filters: list) -> tuple:
    """A call made with scikit-learn's `delayed`, carrying scikit-learn's config and the warning
    filters to the worker as scikit-learn's `Parallel` makes it carry them
    (`sklearn.utils.parallel._FuncWrapper.with_config_and_warning_filters`)."""
    func, args, kwargs = call
    return func.with_config_and_warning_filters(config, warning_filters), args, kwargs
