"""A script of the user's own, in two lines: build the data and the search, then `run` it.

    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC
    import spotsearch

    X, y = load_digits(return_X_y=True)
    spotsearch.run(GridSearchCV(SVC(), {"C": [1, 10, 100]}), X, y)

The script then takes the shipped scripts' flags (`--stack NAME`, `--resume RUN`, `--results`,
...), and leaves the same run folder. No `if __name__ == "__main__":` is needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from spotsearch import experiment, plots, report
from spotsearch.cluster import cli


def run(search, X, y=None, *, test: tuple | None = None, name: str | None = None, fit_params: dict | None = None,
        argv: list[str] | None = None, **summary):  # fmt: skip
    """Fit `search` on (X, y) where the command line says, and return it fitted.

    Parameters
    ----------
    search : a scikit-learn or dask-ml search object (GridSearchCV, RandomizedSearchCV, the
        halving searches), of any estimator or pipeline.
    X, y : the training data (y may be None).
    test : (X_test, y_test), held-out data the best model is evaluated on, if given.
    name : the run's name in its folder (default: the script's file name).
    fit_params : passed to the search's `fit` (groups, sample_weight, routed metadata).
    argv : the command line (default: the script's, `sys.argv[1:]`): `--stack NAME` runs on a
        deployed stack, `--scheduler` on any Dask scheduler, `--resume RUN` finishes a run;
        `--help` lists them all.
    **summary : more fields for the run's summary.json (your settings, say).

    Writes results/<name>-<time>-<where>/: every fit as it finishes, the CV table, summary.json,
    a plot of the candidates and Dask's performance report. A problem you can fix (a bad flag, no
    cluster, a module the nodes lack) ends the script with one line and exit status 2; Ctrl-C
    and SIGTERM end it keeping the finished fits, which `--resume` does not run again.

    Example
    -------
    >>> import spotsearch, tempfile
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.model_selection import GridSearchCV
    >>> from sklearn.svm import SVC
    >>> X, y = load_digits(return_X_y=True)
    >>> runs = tempfile.mkdtemp()  # where the run folders go (default: results/)
    >>> search = spotsearch.run(GridSearchCV(SVC(), {"C": [1, 10]}), X, y, argv=["--results", runs])
    ... # doctest: +ELLIPSIS
    Dask dashboard: http://127.0.0.1:...
    >>> search.best_params_["C"] in (1, 10)
    True
    """
    name = name or Path(sys.argv[0]).stem or "search"
    parser = cli.Parser(prog=Path(sys.argv[0]).name or name, description=f"{name}: a search with spotsearch")
    experiment.add_arguments(parser)
    args = parser.parse_args(argv)
    X_test, y_test = test if test is not None else (None, None)

    def plot(plotter: plots.Plotter, run: Path, search):
        if hasattr(search, "study_"):  # AdaptiveSearchCV: its study, against each parameter and the fits
            return plotter.study(run / report.STUDY_PLOT, search, title=name)
        return plotter.candidates(run / report.CANDIDATES_PLOT, search.cv_results_, search.best_index_, title=name)

    def main() -> int:
        plotter = plots.Plotter()
        return experiment.run_search(
            args, plotter, name, search, (X, X_test, y, y_test), fit_params=fit_params,
            plot=lambda run, search: plot(plotter, run, search), **summary,
        )  # fmt: skip

    try:
        cli.run(main)
    except SystemExit as ended:
        if ended.code not in (0, None):
            raise
    return search
