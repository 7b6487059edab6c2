"""What every experiment script does around its search: connect, show progress, report, exit.

A script builds its data and its search object (scikit-learn's or dask-ml's, unchanged), then
hands both to `run_search`, which fits it on the cluster the command line names (a local one by
default) and leaves the same results/<run>/ files whatever the search.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from experiments import cost, report
from experiments.cluster import cli
from experiments.cluster.waiting import NodeMeter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results", type=Path, default=Path("results"), help="where runs are written (default: %(default)s)"
    )
    cli.add_arguments(parser)


def run_search(
    args: argparse.Namespace,
    plotter: report.Plotter,
    experiment: str,
    search,
    data: tuple,
    *,
    plot: Callable[[Path, object], Future],
    **summary,
) -> int:
    """Fit `search` on (X_train, y_train) on the cluster, score it on (X_test, y_test), and write
    results/<run>/: the CV table, `plot`'s figure, Dask's performance report and a summary."""
    from distributed import performance_report
    from sklearn.metrics import classification_report
    from tqdm import tqdm

    from experiments.search import expected_fits, fit_on_cluster

    X_train, X_test, y_train, y_test = data
    started = time.perf_counter()
    with plotter, cli.connect_from_args(args) as (client, where):
        connected = time.perf_counter()
        print(f"Dask dashboard: {where.dashboard}", flush=True)
        run = report.new_run_folder(args.results, experiment, where)
        # Inline: the report embeds Bokeh, so it opens offline and years from now.
        with performance_report(filename=str(run / report.DASK_REPORT), mode="inline"):
            # Worker nodes over the search phase: they come and go on an adaptive cluster.
            with (
                NodeMeter(client, lambda was, now: tqdm.write(f"worker nodes: {was} -> {now}")) as nodes,
                tqdm(total=expected_fits(search, X_train, y_train), desc="fits", unit="fit") as bar,
            ):
                fit_on_cluster(client, search, X_train, y_train, on_fits=bar.update, wait_for_workers=args.timeout)
            searched = time.perf_counter()
            figure = plot(run, search)  # drawn in the helper while Dask writes its report
        test_accuracy = search.best_estimator_.score(X_test, y_test)
        test_report = classification_report(y_test, search.best_estimator_.predict(X_test), digits=3)
        best = report.plain_params(search.best_params_)
        print(f"\nBest parameters: {best}\nBest mean CV score: {search.best_score_:.4f}")
        if len(tied := report.tied_for_best(search.cv_results_, search.best_index_)) > 1:
            print(f"Tied for best ({len(tied)}, the first is kept as scikit-learn does): " + "; ".join(map(str, tied)))
        print(f"\nClassification report on the held-out data:\n{test_report}")
        report.write_cv_table(run / report.CV_TABLE, search.cv_results_)
        figure.result()
    timings = {"connect": connected - started, "search": searched - connected, "total": time.perf_counter() - started}
    node_use = {"peak": nodes.peak, "worker_node_hours": round(nodes.node_seconds / 3600, 4)}
    fields = report.summary_fields(
        search, where, timings, test_accuracy=test_accuracy, worker_nodes=node_use, **summary
    )
    if estimate := cost.for_where(where, nodes.node_seconds, searched - connected):
        fields["cost"] = estimate
        print(cost.summary_line(estimate))
    report.write_summary(run / report.SUMMARY, **fields)
    print(f"Results in {run}")
    return 0
