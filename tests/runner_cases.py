#!/usr/bin/env python
"""A user's own experiment script, as the README shows one, for the runner's tests: one search
of tests/search_cases.py, split 70/30, through spotsearch.experiment.run_search.

    python tests/runner_cases.py CASE [--plot-fails] [experiment flags...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spotsearch import experiment, plots, report
from spotsearch.cluster import cli


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("--plot-fails", action="store_true")
    experiment.add_arguments(parser)
    args = parser.parse_args()
    plotter = plots.Plotter()

    import numpy as np
    from sklearn.model_selection import train_test_split

    from tests.search_cases import CASES

    search, X, y, fit_params = CASES[args.case]()
    rows = np.arange(X.shape[0])
    train, test = train_test_split(rows, test_size=0.3, random_state=0)
    pick = lambda data, part: None if data is None else (data.iloc[part] if hasattr(data, "iloc") else data[part])  # noqa: E731
    data = (pick(X, train), pick(X, test), pick(y, train), pick(y, test))
    fit_params = {name: value[train] for name, value in fit_params.items()}

    def plot(run, fitted):
        column = report.score_column(fitted)
        # A plot that fails in the helper process: its folder is not there.
        path = run / "no-such-folder" / report.CANDIDATES_PLOT if args.plot_fails else run / report.CANDIDATES_PLOT
        return plotter.candidates(path, fitted.cv_results_, fitted.best_index_, title=args.case, column=column)

    return experiment.run_search(args, plotter, "case", search, data, plot=plot, fit_params=fit_params, case=args.case)


if __name__ == "__main__":
    cli.run(main)
