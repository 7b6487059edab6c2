"""A script of the user's own (experiments/spotsearch/script.py), written the obvious way: in a
folder of theirs, top-level code and no main guard, `spotsearch.run` and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .experiment_runs import assert_one_line_error

pytestmark = pytest.mark.slow

SCRIPT = """\
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.svm import SVC

import spotsearch

print("top-level code ran")
X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
search = spotsearch.run(
    GridSearchCV(SVC(), {"C": [1, 10]}, cv=3), X_train, y_train, test=(X_test, y_test), tried="two Cs"
)
print("fitted:", search.best_params_)
"""


def run_script(folder: Path, *args: str) -> subprocess.CompletedProcess:
    script = folder / "my_search.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), *args], cwd=folder, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.mark.parametrize("flags", [[], ["--processes", "2"]], ids=["threads", "worker processes"])
def test_a_script_with_top_level_code_runs_once_and_returns_the_fitted_search(tmp_path, flags):
    """Also with worker processes, which multiprocessing would start by running the script again."""
    run = run_script(tmp_path, *flags)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("top-level code ran") == 1, "the plotting helper must not run the script again"
    assert "Traceback" not in run.stderr
    assert "fitted: {'C': 10}" in run.stdout
    assert "Classification report on the held-out data" in run.stdout
    (folder,) = (tmp_path / "results").iterdir()
    assert folder.name.startswith("my_search-") and folder.name.endswith("-local")
    assert {"cv_results.csv", "summary.json", "candidates.png", "dask-report.html", "fits"} <= {
        path.name for path in folder.iterdir()
    }
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["experiment"] == "my_search"
    assert summary["command"] == [str(tmp_path / "my_search.py"), *flags] and summary["tried"] == "two Cs"
    assert summary["versions"]["scikit-learn"] and summary["versions"]["spotsearch"]
    assert summary["started_at"] <= summary["ended_at"] and summary["test_accuracy"] > 0.9


def test_a_script_of_ones_own_takes_the_same_flags_and_says_what_is_wrong_in_one_line(tmp_path):
    run = run_script(tmp_path, "--stack", "dask")
    assert_one_line_error(run, "outputs.json: not found (looked for ")
    assert not (tmp_path / "results").exists(), "nothing is made for a run that did not start"
    run = run_script(tmp_path, "--results", "")
    assert_one_line_error(run, "argument --results: must name a folder, got ''")


def test_a_failed_run_is_marked_as_such(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(
        "import numpy as np\nfrom sklearn.model_selection import GridSearchCV\nfrom sklearn.svm import SVC\n"
        "import spotsearch\n"
        "X = np.arange(40.0).reshape(20, 2)\n"
        "spotsearch.run(GridSearchCV(SVC(), {'C': [1.0]}, cv=2, error_score='raise'), X, np.full(20, 1))\n"
    )
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    (folder,) = (tmp_path / "results").iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("ValueError: ")
    assert "best_params" not in summary


def test_fit_on_cluster_takes_the_current_client_and_says_so_when_there_is_none():
    from distributed import Client

    from spotsearch import Cluster, ClusterError, fit_on_cluster

    from .experiment_runs import tiny_svc_search

    search, X, y = tiny_svc_search()
    with pytest.raises(ClusterError, match=r"^fit_on_cluster: no Dask client - make one first"):
        fit_on_cluster(search, X, y)
    with Cluster() as cluster, Client(cluster):
        assert fit_on_cluster(search, X, y, progress=False) is search
    assert search.best_params_ == {"C": 1}


def test_a_script_of_ones_own_with_the_adaptive_search_draws_its_study(tmp_path):
    script = tmp_path / "my_adaptive.py"
    script.write_text(
        "from scipy.stats import loguniform\nfrom sklearn.datasets import load_digits\nfrom sklearn.svm import SVC\n\n"
        "import spotsearch\n\nX, y = load_digits(return_X_y=True)\n"
        "search = spotsearch.run(spotsearch.AdaptiveSearchCV(SVC(), {'C': loguniform(1e-2, 1e3)}, n_trials=8, cv=3),"
        " X[:400], y[:400])\nprint('pruned:', search.n_pruned_)\n"
    )
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "pruned: " in run.stdout and "Traceback" not in run.stderr
    (folder,) = (tmp_path / "results").iterdir()
    names = {path.name for path in folder.iterdir()}
    assert "study.png" in names and "candidates.png" not in names
    assert json.loads((folder / "summary.json").read_text())["trials"]["asked"] == 8
