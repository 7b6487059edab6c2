#!/usr/bin/env python
"""The tutorial's grid search: an RBF SVC on scikit-learn's digits, 3-fold CV on 70% of the data.

Runs on a local Dask cluster by default; `--stack NAME` runs it on a deployed cluster. The
search is dask-ml's GridSearchCV (`--engine scikit-learn` runs scikit-learn's own through
joblib's Dask backend instead: same candidates, same scores).
"""

from spotsearch import experiment, plots, report
from spotsearch.cluster import cli

PARAM_GRID = {"C": [1e-4, 1, 1e4], "gamma": [1e-3, 1, 1e3], "class_weight": [None, "balanced"]}
CV_FOLDS = 3
ENGINES = ("dask-ml", "scikit-learn")


def grid_search(engine: str):
    """The tutorial's search object, from the engine asked for."""
    from sklearn.svm import SVC

    if engine == "dask-ml":
        from dask_ml.model_selection import GridSearchCV
    else:
        from sklearn.model_selection import GridSearchCV
    return GridSearchCV(SVC(kernel="rbf"), PARAM_GRID, cv=CV_FOLDS)


def main() -> int:
    parser = cli.Parser(description=__doc__)
    parser.add_argument(
        "--seed", type=cli.whole_number(0, 2**32 - 1), default=0, help="train/test split seed (default: %(default)s)"
    )
    parser.add_argument(
        "--engine", choices=ENGINES, default=ENGINES[0], help="who runs the search (default: %(default)s)"
    )
    experiment.add_arguments(parser)
    args = parser.parse_args()
    plotter = plots.Plotter()  # first: it loads matplotlib while Dask and scikit-learn load here

    # Imported here, not at the top: the plotting helper re-imports the top of this script, and
    # loading scikit-learn there would take the core it loads matplotlib on.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    data = train_test_split(X, y, test_size=0.3, random_state=args.seed, stratify=y)
    options = {"rows": "C", "columns": "gamma", "panels": "class_weight", "title": "SVC on digits"}
    return experiment.run_search(
        args, plotter, "svc_digits", grid_search(args.engine), data,
        plot=lambda run, search: plotter.heatmap(run / report.HEATMAP, search.cv_results_, **options),
        seed=args.seed, engine=args.engine,
    )  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
