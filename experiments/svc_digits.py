#!/usr/bin/env python
"""The tutorial's grid search: an RBF SVC on scikit-learn's digits, 3-fold CV on 70% of the data.

Runs on a local Dask cluster by default; `--stack NAME` runs it on a deployed cluster.
"""

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/svc_digits.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import cluster, cost, report

PARAM_GRID = {"C": [1e-4, 1, 1e4], "gamma": [1e-3, 1, 1e3], "class_weight": [None, "balanced"]}
CV_FOLDS = 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default: %(default)s)")
    parser.add_argument(
        "--results", type=Path, default=Path("results"), help="where runs are written (default: %(default)s)"
    )
    cluster.add_arguments(parser)
    args = parser.parse_args()
    plotter = report.Plotter()  # first: it loads matplotlib while Dask and scikit-learn load here

    # Imported here, not at the top: the plotting helper re-imports the top of this script, and
    # loading scikit-learn there would take the core it loads matplotlib on.
    from distributed import performance_report
    from sklearn.datasets import load_digits
    from sklearn.metrics import classification_report
    from sklearn.model_selection import ParameterGrid, train_test_split
    from sklearn.svm import SVC
    from tqdm import tqdm

    from experiments.search import grid_search

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=args.seed, stratify=y)
    started = time.perf_counter()
    with plotter, cluster.connect(args) as (client, where):
        connected = time.perf_counter()
        print(f"Dask dashboard: {where.dashboard}", flush=True)
        run = report.new_run_folder(args.results, "svc_digits", where)
        fits = len(ParameterGrid(PARAM_GRID)) * CV_FOLDS
        # Inline: the report embeds Bokeh, so it opens offline and years from now.
        with performance_report(filename=str(run / report.DASK_REPORT), mode="inline"):
            with tqdm(total=fits, desc="fits", unit="fit") as bar:
                result = grid_search(
                    client, SVC(kernel="rbf"), PARAM_GRID, X_train, y_train, cv=CV_FOLDS, on_progress=bar.update
                )
            searched = time.perf_counter()
            # Drawn in the helper process while Dask writes its report.
            heatmap = plotter.heatmap(
                run / report.HEATMAP, result, rows="C", columns="gamma", panels="class_weight", title="SVC on digits"
            )
        test_accuracy = result.best_estimator.score(X_test, y_test)
        test_report = classification_report(y_test, result.best_estimator.predict(X_test), digits=3)
        print(f"\nBest parameters: {result.best_params}\nBest mean CV accuracy: {result.best_score:.4f}")
        if len(tied := result.tied_for_best) > 1:
            print(f"Tied for best ({len(tied)}, the first is kept as scikit-learn does): " + "; ".join(map(str, tied)))
        print()
        print(f"Classification report on the held-out 30%:\n{test_report}")
        report.write_cv_table(run / report.CV_TABLE, result)
        heatmap.result()
    timings = {"connect": connected - started, "search": searched - connected, "total": time.perf_counter() - started}
    fields = report.summary_fields(result, where, timings, seed=args.seed, test_accuracy=test_accuracy)
    if estimate := cost.for_where(where, searched - connected):
        fields["cost"] = estimate
        print(cost.summary_line(estimate))
    report.write_summary(run / report.SUMMARY, **fields)
    print(f"Results in {run}")
    return 0


if __name__ == "__main__":
    cluster.run(main)
