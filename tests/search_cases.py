"""Searches as scikit-learn's and dask-ml's documentation build them (examples/model_selection and
the user guides), on bundled or synthetic data kept small, and how to compare two fitted ones.

Each case returns (search, X, y, fit_params); dask-ml's return (search, its scikit-learn
equivalent, X, y, fit_params).
"""

from __future__ import annotations

import re
import time

import numpy as np

TIMING = re.compile(r"^(mean|std)_(fit|score)_time$")


def digits(n: int = 300):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X[:n], y[:n]


def multi_metric():
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = digits()
    search = GridSearchCV(
        SVC(gamma=0.001), {"C": [0.1, 1.0, 10.0]}, scoring=["accuracy", "f1_macro"], refit="accuracy", cv=3
    )
    return search, X, y, {}


def lowest_c_within_one_std(cv_results) -> int:
    """The refit callable of scikit-learn's "balance model complexity and cross-validated score"
    example, on C: the simplest model within one standard deviation of the best score."""
    best = np.argmax(cv_results["mean_test_score"])
    threshold = cv_results["mean_test_score"][best] - cv_results["std_test_score"][best]
    candidates = np.flatnonzero(cv_results["mean_test_score"] >= threshold)
    return int(candidates[np.argmin(np.asarray(cv_results["param_C"], dtype=float)[candidates])])


def refit_callable():
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = digits()
    return GridSearchCV(SVC(gamma=0.001), {"C": [0.1, 1.0, 10.0]}, refit=lowest_c_within_one_std, cv=3), X, y, {}


def refit_false():
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = digits()
    return (
        GridSearchCV(SVC(gamma=0.001), {"C": [0.1, 1.0]}, scoring=["accuracy", "recall_macro"], refit=False, cv=3),
        X,
        y,
        {},
    )


def randomized_pipeline():
    from scipy.stats import loguniform
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import RandomizedSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = digits()
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200))
    search = RandomizedSearchCV(
        pipeline, {"logisticregression__C": loguniform(1e-3, 1e2)}, n_iter=4, cv=3, random_state=0
    )
    return search, X, y, {}


def text_pipeline():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(0)
    words = {0: ["ball", "goal", "team", "match", "score"], 1: ["vote", "law", "party", "debate", "court"]}
    y = rng.integers(0, 2, 120)
    X = [" ".join(rng.choice(words[label] + words[1 - label][:1], 6)) for label in y]
    pipeline = Pipeline([("tfidf", TfidfVectorizer()), ("clf", SGDClassifier(random_state=0))])
    grid = {"tfidf__ngram_range": [(1, 1), (1, 2)], "clf__alpha": [1e-4, 1e-2]}
    return GridSearchCV(pipeline, grid, cv=3), X, y, {}


def sparse_features():
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import LinearSVC

    _, X, y, _ = text_pipeline()
    X = HashingVectorizer(n_features=256).transform(X)
    return GridSearchCV(LinearSVC(), {"C": [0.01, 1.0]}, cv=3), X, y, {}


def groups():
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.svm import SVC

    X, y = digits()
    return GridSearchCV(SVC(gamma=0.001), {"C": [0.1, 1.0]}, cv=GroupKFold(3)), X, y, {"groups": np.arange(len(y)) % 7}


def pandas_columns():
    import pandas as pd
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(1)
    X = pd.DataFrame({"size": rng.normal(size=150), "colour": rng.choice(["red", "green", "blue"], 150)})
    y = ((X["size"] > 0) ^ (X["colour"] == "red")).astype(int)
    columns = make_column_transformer((StandardScaler(), ["size"]), (OneHotEncoder(), ["colour"]))
    search = GridSearchCV(make_pipeline(columns, LogisticRegression()), {"logisticregression__C": [0.1, 10.0]}, cv=3)
    return search, X, y, {}


def regressor():
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV

    X, y = load_diabetes(return_X_y=True)
    return GridSearchCV(Ridge(), {"alpha": [0.01, 1.0, 100.0]}, scoring="neg_mean_squared_error", cv=3), X, y, {}


def density():
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KernelDensity

    X = np.random.default_rng(2).normal(size=(200, 2))
    return GridSearchCV(KernelDensity(), {"bandwidth": [0.1, 0.5, 1.0]}, cv=3), X, None, {}


def halving_grid():
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV
    from sklearn.svm import SVC

    X, y = digits(600)
    return HalvingGridSearchCV(SVC(), {"C": [0.1, 1, 10], "gamma": [1e-4, 1e-3, 1e-2]}, cv=3, random_state=0), X, y, {}


def halving_random_forest():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingRandomSearchCV

    X, y = digits(400)
    forest = RandomForestClassifier(n_estimators=8, random_state=0)
    search = HalvingRandomSearchCV(forest, {"max_depth": [3, 6, None], "max_features": [0.3, 0.6]}, cv=3,
                                   random_state=0)  # fmt: skip
    return search, X, y, {}


def sample_weights():
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = digits()
    return GridSearchCV(SVC(gamma=0.001), {"C": [0.1, 1.0]}, cv=3), X, y, {"sample_weight": 1.0 + (y % 3)}


def first_columns(n: int):
    """A feature selection made by a factory: closures that differ only by what they captured."""

    def columns(X):
        return X[:, :n]

    return columns


def closures_grid():
    """Candidates that differ only by a closure: each must be fitted as itself."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.svm import SVC

    X, y = digits()
    grid = {"functiontransformer__func": [first_columns(n) for n in (2, 8, 24, 64)], "svc__C": [1.0, 10.0]}
    return GridSearchCV(make_pipeline(FunctionTransformer(), SVC(gamma=0.001)), grid, cv=3), X, y, {}


def closures_halving():
    """The same as successive halving with aggressive elimination: the first rounds are fitted
    on the same rows, so the same fits come again, and scikit-learn runs them again."""
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.svm import SVC

    X, y = digits(600)
    grid = {"functiontransformer__func": [first_columns(n) for n in (2, 8, 24, 64)], "svc__C": [0.1, 1.0, 10.0]}
    search = HalvingGridSearchCV(
        make_pipeline(FunctionTransformer(), SVC(gamma=0.001)), grid, cv=3, factor=2, min_resources=200,
        aggressive_elimination=True, random_state=0,
    )  # fmt: skip
    return search, X, y, {}


CASES = {
    "multi-metric, refit by one": multi_metric,
    "refit callable": refit_callable,
    "refit false, several metrics": refit_false,
    "randomized pipeline": randomized_pipeline,
    "text pipeline": text_pipeline,
    "sparse text features": sparse_features,
    "groups": groups,
    "pandas columns": pandas_columns,
    "regressor": regressor,
    "density estimator": density,
    "halving grid": halving_grid,
    "halving random forest": halving_random_forest,
    "sample weights": sample_weights,
    "closures from one factory": closures_grid,
    "closures, halving round repeated": closures_halving,
}


def dask_ml_grid():
    from dask_ml.model_selection import GridSearchCV
    from sklearn.model_selection import GridSearchCV as Plain
    from sklearn.svm import SVC

    X, y = digits()
    grid = {"C": [0.1, 1.0, 10.0], "gamma": [1e-4, 1e-3]}
    return GridSearchCV(SVC(), grid, cv=3), Plain(SVC(), grid, cv=3), X, y, {}


def dask_ml_multi_metric_pipeline():
    from dask_ml.model_selection import GridSearchCV
    from sklearn.model_selection import GridSearchCV as Plain
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    X, y = digits()
    pipeline = make_pipeline(StandardScaler(), SVC())
    grid = {"svc__C": [0.1, 1.0]}
    options = {"scoring": ["accuracy", "f1_macro"], "refit": "f1_macro", "cv": 3}
    return GridSearchCV(pipeline, grid, **options), Plain(pipeline, grid, **options), X, y, {}


def dask_ml_randomized_regressor():
    from dask_ml.model_selection import RandomizedSearchCV
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import RandomizedSearchCV as Plain

    X, y = load_diabetes(return_X_y=True)
    grid = {"alpha": [0.01, 0.1, 1.0, 10.0, 100.0]}
    options = {"n_iter": 3, "cv": 3, "random_state": 0}
    return RandomizedSearchCV(Ridge(), grid, **options), Plain(Ridge(), grid, **options), X, y, {}


DASK_ML_CASES = {
    "grid": dask_ml_grid,
    "multi-metric pipeline": dask_ml_multi_metric_pipeline,
    "randomized regressor": dask_ml_randomized_regressor,
}


def assert_same_splits(fitted, plain) -> None:
    """The same candidates, and the same score on every split."""
    assert list(map(comparable, fitted.cv_results_["params"])) == list(map(comparable, plain.cv_results_["params"]))
    splits = [key for key in plain.cv_results_ if re.fullmatch(r"split\d+_test_\w+", key)]
    assert splits
    for key in splits:
        np.testing.assert_allclose(fitted.cv_results_[key], plain.cv_results_[key], rtol=1e-12, err_msg=key)


def comparable(value):
    """A candidate's value as `==` can compare it across two builds of the same search: a closure
    (a new object each build) by its name and what it captured."""
    if isinstance(value, dict):
        return {name: comparable(item) for name, item in value.items()}
    if callable(value) and getattr(value, "__closure__", None):
        return value.__qualname__, tuple(cell.cell_contents for cell in value.__closure__)
    return value


def assert_same_search(fitted, plain) -> None:
    """Every non-timing key of cv_results_, and what the search chose, as the plain search has them."""
    keys = {key for key in plain.cv_results_ if not TIMING.match(key)}
    assert keys == {key for key in fitted.cv_results_ if not TIMING.match(key)}
    for key in sorted(keys):
        mine, theirs = fitted.cv_results_[key], plain.cv_results_[key]
        if key == "params" or key.startswith("param_") or np.asarray(theirs).dtype.kind not in "fiu":
            assert list(map(comparable, mine)) == list(map(comparable, theirs)), key
        else:
            np.testing.assert_array_equal(np.asarray(mine, dtype=float), np.asarray(theirs, dtype=float), err_msg=key)
    for attribute in ("best_params_", "best_index_", "best_score_"):
        assert hasattr(fitted, attribute) == hasattr(plain, attribute), attribute
        if hasattr(plain, attribute):
            assert comparable(getattr(fitted, attribute)) == comparable(getattr(plain, attribute)), attribute


def assert_clean(client, within: float = 30.0) -> None:
    """No task and no data on the scheduler, no future on the client (it settles asynchronously)."""
    deadline = time.monotonic() + within
    while True:
        left = client.run_on_scheduler(lambda dask_scheduler: sorted(map(str, dask_scheduler.tasks)))
        if not left and not client.futures:
            return
        assert time.monotonic() < deadline, f"left on the cluster: {left[:5]}, futures: {list(client.futures)[:5]}"
        time.sleep(0.1)
