"""The experiment runner (experiments/spotsearch/experiment.py) reports any search it can fit: several
metrics, a refit callable or none, regressors, density estimators, fit parameters; and writes
the finished search's results before anything that could fail after it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from .conftest import ROOT
from .experiment_runs import only_run_folder

SCRIPT = ROOT / "tests" / "runner_cases.py"


def run_case(case: str, folder, *args: str) -> tuple[subprocess.CompletedProcess, dict, list[dict]]:
    run = subprocess.run([sys.executable, str(SCRIPT), case, "--results", str(folder / "results"), *args],
                         cwd=folder, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    results = only_run_folder(folder / "results")
    with (results / "cv_results.csv").open() as file:
        rows = list(csv.DictReader(file))
    return run, json.loads((results / "summary.json").read_text()), rows


def plainly(case: str) -> tuple[dict, list[dict]]:
    """What the summary must say for `case`, from the same search on the same split fitted by
    plain scikit-learn in this process, and scikit-learn's own metrics; and its candidates."""
    import numpy as np
    from sklearn import metrics
    from sklearn.base import is_classifier, is_regressor
    from sklearn.model_selection import train_test_split

    from .search_cases import CASES

    search, X, y, fit_params = CASES[case]()
    train, test = train_test_split(np.arange(X.shape[0]), test_size=0.3, random_state=0)
    y_train, y_test = (None, None) if y is None else (y[train], y[test])
    search.fit(X[train], y_train, **{name: value[train] for name, value in fit_params.items()})
    expected = {}
    if hasattr(search, "best_params_"):
        expected["best_params"] = {k: v.item() if hasattr(v, "item") else v for k, v in search.best_params_.items()}
    if hasattr(search, "best_score_"):
        expected["best_cv_score"] = pytest.approx(float(search.best_score_))
    candidates = list(search.cv_results_["params"])
    if not getattr(search, "refit", False):
        return expected, candidates
    predicted = search.predict(X[test]) if (is_classifier(search) or is_regressor(search)) else None
    if is_classifier(search):
        expected["test_accuracy"] = pytest.approx(metrics.accuracy_score(y_test, predicted))
    elif is_regressor(search):
        expected["test_r2"] = pytest.approx(metrics.r2_score(y_test, predicted))
        expected["test_mae"] = pytest.approx(metrics.mean_absolute_error(y_test, predicted))
        expected["test_rmse"] = pytest.approx(metrics.root_mean_squared_error(y_test, predicted))
    else:
        expected["test_score"] = pytest.approx(float(search.best_estimator_.score(X[test])))
    return expected, candidates


@pytest.mark.parametrize(
    ("case", "printed"),
    [
        ("multi-metric, refit by one", "Best mean CV score (accuracy): "),
        ("refit callable", "Classification report"),
        ("refit false, several metrics", "No refitted model (refit=False)"),
        ("regressor", "Regression report"),
        ("density estimator", "The best model's own score"),
        ("groups", "Classification report"),
    ],
)  # fmt: skip
def test_any_search_is_reported(tmp_path, case, printed):
    """Each value the summary reports is plain scikit-learn's on the same split; what a search
    does not choose (refit=False, several metrics) is not reported at all."""
    run, summary, rows = run_case(case, tmp_path)
    expected, candidates = plainly(case)
    reported = {"best_params", "best_cv_score", "test_accuracy", "test_r2", "test_mae", "test_rmse", "test_score"}
    assert {name: summary[name] for name in reported & summary.keys()} == expected
    if case == "refit false, several metrics":
        assert expected == {}, "the control: scikit-learn chose nothing either"
    else:
        assert "best_params" in expected and any(name.startswith("test_") for name in expected)
    if case == "multi-metric, refit by one":
        assert summary["scored_by"] == "accuracy"
    if case == "refit callable":  # no best score: the ties are those of the callable's choice
        assert summary["best_params"] in summary["tied_for_best"]
    assert printed in run.stdout
    assert summary["case"] == case
    assert [json.loads(row["params"]) for row in rows] == json.loads(json.dumps(candidates, default=str))
    assert "Traceback" not in run.stderr


def test_a_failing_plot_keeps_the_finished_search(tmp_path):
    case = "multi-metric, refit by one"
    run, summary, rows = run_case(case, tmp_path, "--plot-fails")
    assert "warning: the plot was not drawn (FileNotFoundError: " in run.stdout
    expected, candidates = plainly(case)  # the search and its report, as if the plot had worked
    assert {name: summary[name] for name in expected} == expected and summary["status"] == "finished"
    assert [json.loads(row["params"]) for row in rows] == json.loads(json.dumps(candidates, default=str))
    (folder,) = (tmp_path / "results").iterdir()
    assert not (folder / "candidates.png").exists() and not (folder / "no-such-folder").exists()
