"""The benchmarks behind the README's Speed section (experiments/benchmarks/) cannot rot: each runs once, small."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import ROOT


def test_benchmark_times_every_engine_and_compares_them(tmp_path):
    """One round of the README's speed benchmark, end to end: every command runs and is compared."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "benchmarks" / "local.py"), "--runs", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and "median" not in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| GridSearchCV(n_jobs=-1)",
        "| svc_digits.py (dask-ml, local)",
        "| svc_digits.py (scikit-learn + joblib's Dask backend, local)",
        "| svc_digits.py (dask-ml, local), fits not kept",
        "| svc_digits.py (scikit-learn, local), fits not kept",
    ]
    for row in rows:
        cells = [float(cell) for cell in row.strip(" |").split(" | ")[1:]]
        assert len(cells) == 4 and all(cell > 0 for cell in cells), row
    assert run.stdout.count("/ scikit-learn, ratio of medians: whole process") == 2
    assert run.stdout.count("median of the 1 per-round ratios") == 2
    assert run.stdout.count("fits saved / not kept, svc_digits.py") == 2
    assert not list(tmp_path.iterdir()), "its runs write their results in a folder of their own"


def test_scale_benchmark_runs_every_part_at_tiny_size(tmp_path):
    """The benchmark behind the README's scale table cannot rot: each part runs once, small."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "benchmarks" / "scale.py"), "--small", "--runs", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and not line.startswith("| engine")]
    rows = [row for row in rows if not row.startswith("| slots")]
    engines = [row.split(" | ")[0].strip("| ") for row in rows]
    assert engines == [
        "scikit-learn n_jobs=-1", "dask-ml", "scikit-learn + joblib Dask",  # tenfold
        "4", "4",  # scale: a row per slot count and engine
        "dask-ml", "scikit-learn + joblib Dask",  # bytes
    ], run.stdout  # fmt: skip
    for row, engine in zip(rows[3:5], ("dask-ml", "scikit-learn + joblib Dask"), strict=True):
        _, name, *cells = row.strip(" |").split(" | ")
        assert name == engine
        fits, ideal, elapsed, efficiency, first_fit_after, busy, *per_fit = map(float, cells)
        assert fits == 32 and 0 < efficiency <= 1.05 and abs(efficiency - ideal / elapsed) < 0.02, row
        assert 0 <= first_fit_after < 60 and 0 < busy <= 1.0, row
        scheduler_ms, client_ms, workers_ms, kilobytes = per_fit
        assert scheduler_ms > 0 and client_ms > 0 and workers_ms > 0 and kilobytes > 0, row
    copies = [float(row.strip(" |").split(" | ")[2]) for row in rows[5:]]
    assert all(c >= 1 for c in copies), "the data reaches the cluster at least once"


def test_forest_benchmark_runs_and_both_searches_agree(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "benchmarks" / "forests.py"), "--runs", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and "median" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| scikit-learn n_jobs=-1", "| fit_on_cluster, local cluster"]


def test_text_benchmark_runs_every_command_and_compares_it_with_scikit_learn():
    run = subprocess.run(
        [sys.executable, "-m", "experiments.benchmarks.text", "--runs", "1", "--samples", "150"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and "median" not in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| `GridSearchCV(n_jobs=-1)`", "| spotsearch, local cluster: threads (the default)",
        f"| spotsearch, local cluster: {os.cpu_count()} worker processes (`--processes`)",
    ]  # fmt: skip
    ratios = [float(row.strip(" |").split(" | ")[-1]) for row in rows]
    assert ratios[0] == 1.0 and all(ratio > 0 for ratio in ratios)


def test_the_text_benchmarks_search_is_the_same_through_the_cluster():
    """What it times is the same search: the cluster's result is scikit-learn's."""
    from distributed import Client

    from experiments.benchmarks.text import documents, search
    from spotsearch import Cluster, fit_on_cluster

    X, y = documents(150)
    plain = search().fit(X, y)
    with Cluster(processes=2) as cluster, Client(cluster):
        through = fit_on_cluster(search(), X, y, progress=False)
    assert through.best_params_ == plain.best_params_
    assert list(through.cv_results_["mean_test_score"]) == list(plain.cv_results_["mean_test_score"])


def test_the_adaptive_search_benchmark_counts_fits_to_the_target_for_every_engine(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "benchmarks" / "smart.py"), "--seeds", "1", "--candidates", "4",
         "--cv", "3", "--samples", "300", "--share", "0.5"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    header = next(line for line in run.stdout.splitlines() if line.startswith("| engine"))
    assert "| fits to target (median) |" in header
    rows = [line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| ") and line != header]
    assert [row[0] for row in rows] == ["| adaptive", "| random (40 candidates)", "| halving"]
    for row in rows[:2]:  # half the best score: reached by the adaptive and the random search
        assert 0 < float(row[1]) < float("inf") and row[3] == "1/1", row
    assert rows[2][3] in ("0/1", "1/1"), rows[2]  # the halving search's 4 candidates may not reach all the rows


def test_fits_to_target_count_up_to_the_first_candidate_that_reaches_it():
    from experiments.benchmarks.smart import to_target

    tried = [(3, 1.0, 0.5), (1, 0.1, None), (3, 2.0, 0.9), (3, 1.0, 0.95)]
    assert to_target(tried, 0.9) == (7, 3.1)
    assert to_target(tried, 0.99) == (float("inf"), float("inf"))
