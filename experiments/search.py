"""Exhaustive hyperparameter search on Dask: one task per (candidate, CV split).

Candidates, splits, scores and ranks follow scikit-learn's GridSearchCV, so results compare
one to one with it. Tasks are pure functions of their inputs: when a worker dies mid-search,
Dask recomputes its tasks elsewhere and the result is the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.model_selection import ParameterGrid, check_cv


@dataclass(frozen=True)
class SearchResult:
    candidates: list[dict]
    test_scores: np.ndarray  # (candidates, splits)
    fit_times: np.ndarray
    score_times: np.ndarray
    best_estimator: object

    @property
    def mean_test_scores(self) -> np.ndarray:
        return self.test_scores.mean(axis=1)

    @property
    def ranks(self) -> np.ndarray:
        """1 is best; ties share the lower rank, as in scikit-learn."""
        means = self.mean_test_scores
        return np.array([1 + int(np.sum(means > m)) for m in means])

    @property
    def best_index(self) -> int:
        return int(np.argmin(self.ranks))  # the first of equally good candidates

    @property
    def best_params(self) -> dict:
        return self.candidates[self.best_index]

    @property
    def tied_for_best(self) -> list[dict]:
        """Every candidate with the best mean score, in grid order."""
        return [params for params, rank in zip(self.candidates, self.ranks, strict=True) if rank == 1]

    @property
    def best_score(self) -> float:
        return float(self.mean_test_scores[self.best_index])

    def table(self) -> list[dict]:
        """One row per candidate, with scikit-learn's cv_results_ column names."""
        rows = []
        for i, params in enumerate(self.candidates):
            row = {f"param_{name}": value for name, value in params.items()}
            row["params"] = params
            for split, score in enumerate(self.test_scores[i]):
                row[f"split{split}_test_score"] = float(score)
            row["mean_test_score"] = float(self.mean_test_scores[i])
            row["std_test_score"] = float(self.test_scores[i].std())
            row["rank_test_score"] = int(self.ranks[i])
            row["mean_fit_time"] = float(self.fit_times[i].mean())
            row["mean_score_time"] = float(self.score_times[i].mean())
            rows.append(row)
        return rows


def fit_and_score(estimator, params: dict, X, y, train, test) -> tuple[float, float, float]:
    """Fit one candidate on one training fold; its score on the fold's test part, and timings."""
    model = clone(estimator).set_params(**params)
    started = time.perf_counter()
    model.fit(X[train], y[train])
    fitted = time.perf_counter()
    score = model.score(X[test], y[test])
    return float(score), fitted - started, time.perf_counter() - fitted


def refit(estimator, params: dict, X, y):
    return clone(estimator).set_params(**params).fit(X, y)


def grid_search(
    client,
    estimator,
    param_grid: dict,
    X,
    y,
    *,
    cv: int = 3,
    on_progress: Callable[[int], object] | None = None,
) -> SearchResult:
    """Score every candidate on every split on the cluster, then refit the best on all of X."""
    from distributed import as_completed

    candidates = list(ParameterGrid(param_grid))
    splits = list(check_cv(cv, y, classifier=is_classifier(estimator)).split(X, y))
    # Shipped to every worker once, rather than once per task, so that losing a node loses no
    # data. Keys unique to this search: a content-hashed key shared with an earlier search may
    # be released by that search's cleanup while this one still needs it.
    X_remote, y_remote = client.scatter([X, y], broadcast=True, hash=False)
    futures = {}
    for i, params in enumerate(candidates):
        for j, (train, test) in enumerate(splits):
            future = client.submit(fit_and_score, estimator, params, X_remote, y_remote, train, test, pure=False)
            futures[future] = (i, j)
    shape = (len(candidates), len(splits))
    scores, fit_times, score_times = np.empty(shape), np.empty(shape), np.empty(shape)
    for future in as_completed(futures):
        i, j = futures[future]
        scores[i, j], fit_times[i, j], score_times[i, j] = future.result()
        if on_progress:
            on_progress(1)
    best = SearchResult(candidates, scores, fit_times, score_times, best_estimator=None).best_params
    best_estimator = client.submit(refit, estimator, best, X_remote, y_remote, pure=False).result()
    return SearchResult(candidates, scores, fit_times, score_times, best_estimator)
