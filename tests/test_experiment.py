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


@pytest.mark.parametrize(
    ("case", "expected", "printed"),
    [
        ("multi-metric, refit by one", {"best_params", "best_cv_score", "test_accuracy", "scored_by"},
         "Best mean CV score (accuracy): "),
        ("refit callable", {"best_params", "tied_for_best", "test_accuracy"}, "Classification report"),
        ("refit false, several metrics", set(), "No refitted model (refit=False)"),
        ("regressor", {"best_params", "best_cv_score", "test_r2", "test_mae", "test_rmse"}, "Regression report"),
        ("density estimator", {"best_params", "best_cv_score", "test_score"}, "The best model's own score"),
        ("groups", {"best_params", "best_cv_score", "test_accuracy"}, "Classification report"),
    ],
)  # fmt: skip
def test_any_search_is_reported(tmp_path, case, expected, printed):
    run, summary, rows = run_case(case, tmp_path)
    assert expected <= summary.keys(), summary.keys()
    assert printed in run.stdout
    assert summary["case"] == case and rows and "params" in rows[0]
    assert "Traceback" not in run.stderr


def test_a_failing_plot_keeps_the_finished_search(tmp_path):
    run, summary, rows = run_case("multi-metric, refit by one", tmp_path, "--plot-fails")
    assert "warning: the plot was not drawn (FileNotFoundError: " in run.stdout
    assert summary["best_params"] and len(rows) == 3 and "test_accuracy" in summary
