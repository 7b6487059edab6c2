"""Running the experiment scripts as a user does, and reading what they leave behind."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

from stacks.content import PROJECT_ROOT as ROOT

SCRIPT = ROOT / "experiments" / "svc_digits.py"
BEST_LINE = "Best parameters: {'C': 1, 'class_weight': None, 'gamma': 0.001}"
PROGRESS = ("connecting to ", "  still waiting ")  # what the client says while it waits


def run_experiment(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def only_run_folder(results: Path) -> Path:
    (folder,) = results.iterdir()
    return folder


def cv_scores(folder: Path) -> dict[str, float]:
    with (folder / "cv_results.csv").open() as file:
        return {row["params"]: float(row["mean_test_score"]) for row in csv.DictReader(file)}


def assert_one_line_error(run: subprocess.CompletedProcess, expected: str) -> None:
    """What a user can get wrong: one line, exit status 2, no traceback."""
    assert run.returncode == 2, run.stdout + run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith(PROGRESS)]
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert run.stderr.rstrip().endswith(lines[0])
    assert expected in lines[0], lines[0]
    assert "Traceback" not in run.stderr


# A module of a user's own, beside their script: the image and the workers do not have it.
USER_MODULE = """
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class Doubler(TransformerMixin, BaseEstimator):
    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.asarray(X) * 2.0
"""


def tiny_svc_search():
    """A two-candidate scikit-learn search and its data: the smallest thing fit_on_cluster runs."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    return GridSearchCV(SVC(), {"C": [1, 2]}, cv=2), np.arange(40.0).reshape(20, 2), np.arange(20) % 2
