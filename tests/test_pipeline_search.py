"""A user's own search (experiments/pipeline_search.py): a pipeline searched by successive halving, or
by the adaptive search."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

from .conftest import ROOT
from .experiment_runs import (
    only_run_folder,
)


def test_a_pipeline_searched_by_successive_halving(tmp_path):
    script = ROOT / "experiments" / "pipeline_search.py"
    run = subprocess.run(
        [sys.executable, str(script), "--samples", "600", "--features", "12", "--candidates", "9", "--results", "r"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Best parameters: {'pca__n_components': " in run.stdout and "Traceback" not in run.stderr
    folder = only_run_folder(tmp_path / "r")
    assert sorted(p.name for p in folder.iterdir()) == [
        "candidates.png", "cv_results.csv", "dask-report.html", "fits", "summary.json"
    ]  # fmt: skip
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["search"] == "sklearn.HalvingRandomSearchCV"
    assert summary["samples"] == 600 and summary["features"] == 12
    with (folder / "cv_results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert {"iter", "n_resources", "param_svc__C", "mean_test_score"} <= rows[0].keys()
    assert len({row["iter"] for row in rows}) >= 2, "several rounds, each with more rows"
    fits = sum(int(count) for count in re.findall(r"fits: (\d+)fit", run.stderr)[-1:])
    assert fits == 3 * len(rows), "the progress bar counts every fit of every round"

    # Resumed with a third of its fits lost: the rest run, and every round ends as it did.
    saved = sorted((folder / "fits").glob("*.fit"))
    assert len(saved) == fits
    for lost in saved[::3]:
        lost.unlink()
    (folder / "summary.json").unlink()  # as a run stopped mid-search leaves it
    resumed = subprocess.run(
        [sys.executable, str(script), "--samples", "600", "--features", "12", "--candidates", "9", "--results", "r",
         "--resume", folder.name],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((folder / "summary.json").read_text())["resumed"] == {"fits_reused": fits - len(saved[::3])}
    with (folder / "cv_results.csv").open() as file:
        again = list(csv.DictReader(file))
    untimed = [[value for name, value in row.items() if "time" not in name] for row in rows]
    assert [[value for name, value in row.items() if "time" not in name] for row in again] == untimed


def test_the_pipeline_searched_by_the_adaptive_engine_and_resumed(tmp_path):
    script = ROOT / "experiments" / "pipeline_search.py"
    command = [sys.executable, str(script), "--engine", "adaptive", "--trials", "20", "--samples", "600",
               "--features", "12", "--results", "r"]  # fmt: skip
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "Trial " not in run.stderr, "no traceback, no Optuna line per trial"
    folder = only_run_folder(tmp_path / "r")
    assert sorted(p.name for p in folder.iterdir()) == [
        "cv_results.csv", "dask-report.html", "fits", "study.png", "summary.json"
    ]  # fmt: skip
    assert (folder / "fits" / "study.journal").is_file()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["search"] == "spotsearch.AdaptiveSearchCV" and summary["engine"] == "adaptive"
    assert summary["trials"]["asked"] == 20
    assert summary["trials"].get("complete", 0) + summary["trials"].get("pruned", 0) == 20
    assert summary["candidates"] == summary["trials"]["complete"]
    pruned = summary["trials"].get("pruned", 0)
    assert 0 < summary["fits_saved_by_pruning"] <= 2 * pruned, "each pruned candidate ran its first fold"

    saved = sorted((folder / "fits").glob("*.fit"))
    for lost in saved[::3]:
        lost.unlink()
    (folder / "summary.json").unlink()  # as a run stopped mid-search leaves it
    resumed = subprocess.run([*command, "--resume", folder.name], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads((folder / "summary.json").read_text())
    assert again["resumed"] == {"fits_reused": len(saved) - len(saved[::3])}
    assert (again["trials"], again["best_params"]) == (summary["trials"], summary["best_params"])
