"""Searches as scikit-learn's and dask-ml's documentation write them, through `fit_on_cluster`:
the same cv_results_ (every key but the timings), best_params_, best_score_ and best_index_ as
plain scikit-learn, and the cluster clean after each (no task, no data, no future left).

The cluster has worker processes of its own, so every fit is pickled and sent as on a real one.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
from sklearn.base import clone

from spotsearch.search import fit_on_cluster

from .search_cases import CASES, DASK_ML_CASES, assert_clean, assert_same_search, assert_same_splits


@pytest.mark.parametrize("case", sorted(CASES))
def test_scikit_learn_search_matches_plain_scikit_learn(process_cluster, case):
    search, X, y, fit_params = CASES[case]()
    plain = clone(search).fit(X, y, **fit_params)
    fitted = fit_on_cluster(clone(search), X, y, **fit_params, client=process_cluster)
    assert_same_search(fitted, plain)
    assert_clean(process_cluster)


@pytest.mark.parametrize("case", sorted(DASK_ML_CASES))
def test_dask_ml_search_matches_itself_run_plainly_and_scikit_learns_splits(process_cluster, case):
    """dask-ml's own result, run in this process, exactly; scikit-learn's split by split (dask-ml
    weighs unequal splits in its means its own way)."""
    search, scikit_learn_search, X, y, fit_params = DASK_ML_CASES[case]()
    plain = clone(search).set_params(scheduler="sync").fit(X, y, **fit_params)
    fitted = fit_on_cluster(search, X, y, **fit_params, client=process_cluster)
    assert_same_search(fitted, plain)
    assert_same_splits(fitted, scikit_learn_search.fit(X, y, **fit_params))
    assert fitted.scheduler is None, "the user's setting is back"
    assert_clean(process_cluster)


def test_sparse_input_is_a_case():
    _, X, *_ = CASES["sparse text features"]()
    assert scipy.sparse.issparse(X)


def test_every_case_checks_something():
    search, X, y, fit_params = CASES["multi-metric, refit by one"]()
    plain = clone(search).fit(X, y, **fit_params)
    other = clone(search).set_params(param_grid={"C": [0.5, 3.0]}).fit(X, y, **fit_params)
    with pytest.raises(AssertionError):
        assert_same_search(other, plain)
    assert np.all(plain.cv_results_["mean_test_accuracy"] > 0)
