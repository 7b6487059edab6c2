"""What a search leaves behind in results/<run>/: the CV table, the held-out report, the summary
(the plots are drawn by plots.py)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import platform
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from spotsearch.cluster.connect import Where
from spotsearch.cluster.forwarder import without_key
from spotsearch.saved_fits import write_atomically

CV_TABLE = "cv_results.csv"
HEATMAP = "heatmap.png"
CANDIDATES_PLOT = "candidates.png"
STUDY_PLOT = "study.png"
DASK_REPORT = "dask-report.html"
SUMMARY = "summary.json"
SAVED_FITS = "fits"  # every finished fit, one file each (experiments/spotsearch/saved_fits.py)


def new_run_folder(results: Path, experiment: str, where: Where) -> Path:
    """results/<experiment>-<UTC time>-<local|stack name>, never reused."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = results / f"{experiment}-{stamp}-{where.stack or where.kind}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}.{n}")
    # Not writable by the group, whatever the umask: a resume refuses a folder others can change.
    folder.mkdir(mode=0o755, parents=True)
    return folder


def finished(run: Path) -> bool:
    """Whether the run got to its end: its last summary, with the total time, is written."""
    try:
        summary = json.loads((run / SUMMARY).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "total" in summary.get("timings_seconds", {})


def _plain(value):
    """A numpy scalar as the Python value JSON wants."""
    return value.item() if hasattr(value, "item") else value


def write_cv_table(path: Path, cv_results: dict) -> None:
    """scikit-learn's cv_results_ (or dask-ml's, the same columns), one row per candidate.

    A parameter a candidate does not have is masked in its column; it is written empty.
    """
    columns = {
        name: values.tolist() if hasattr(values, "tolist") else list(values) for name, values in cv_results.items()
    }
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(columns)
    for i, params in enumerate(cv_results["params"]):
        writer.writerow(
            json.dumps(params, default=_jsonable) if name == "params" else values[i] for name, values in columns.items()
        )
    write_atomically(path, table.getvalue().encode())


@contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` for a writer that takes a file name (Dask's performance
    report): renamed to `path` if the block ends normally, removed otherwise."""
    temporary = path.with_name(f".writing-{path.name}")
    try:
        yield temporary
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def plain_params(params: dict) -> dict:
    return {name: _plain(value) for name, value in params.items()}


def score_column(search) -> str | None:
    """The cv_results_ column the search chose its best candidate by: "mean_test_score", the
    refit metric's of a multi-metric search, or None when no single one did (refit=False or a
    refit callable with several metrics)."""
    results = search.cv_results_
    if "mean_test_score" in results:
        return "mean_test_score"
    refit = getattr(search, "refit", None)
    return f"mean_test_{refit}" if isinstance(refit, str) and f"mean_test_{refit}" in results else None


def tied_for_best(cv_results: dict, best_index: int, column: str = "mean_test_score") -> list[dict]:
    """Every candidate as good as the chosen one, in the search's order (the first is kept).

    In a successive-halving search only the chosen one's round counts: early rounds score on
    a few rows, where many candidates look perfect.
    """
    scores, rounds = cv_results[column], cv_results.get("iter")
    return [
        plain_params(params)
        for i, params in enumerate(cv_results["params"])
        if scores[i] == scores[best_index] and (rounds is None or rounds[i] == rounds[best_index])
    ]


def best_fields(search) -> dict:
    """What the search chose, as far as it chose: best_params_, best_score_ and the ties exist
    for some searches only (refit=False with several metrics chooses nothing; a refit callable
    chooses an index without a score)."""
    fields = {}
    column = score_column(search)
    if column and column != "mean_test_score":
        fields["scored_by"] = column.removeprefix("mean_test_")
    if hasattr(search, "best_params_"):
        fields["best_params"] = plain_params(search.best_params_)
    if hasattr(search, "best_score_"):
        fields["best_cv_score"] = float(search.best_score_)
    if column and hasattr(search, "best_index_"):
        fields["tied_for_best"] = tied_for_best(search.cv_results_, search.best_index_, column)
    return fields


def held_out(search, X_test, y_test) -> tuple[dict, str]:
    """The refitted best model on the held-out data: summary fields and a report to print.

    Classifiers get the classification report, regressors R², MAE and RMSE, anything else
    (a density estimator, say) its own score; a search without a refit (refit=False) none."""
    from sklearn.base import is_classifier, is_regressor

    if X_test is None:
        return {}, "No held-out data was given: the best model was not evaluated on unseen data."
    if not hasattr(search, "best_estimator_"):
        return {}, "No refitted model (refit=False): nothing to evaluate on the held-out data."
    model = search.best_estimator_
    if y_test is not None and is_classifier(model):
        from sklearn.metrics import classification_report

        text = classification_report(y_test, model.predict(X_test), digits=3)
        return {
            "test_accuracy": float(model.score(X_test, y_test))
        }, f"Classification report on the held-out data:\n{text}"
    if y_test is not None and is_regressor(model):
        from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

        predicted = model.predict(X_test)
        fields = {
            "test_r2": float(r2_score(y_test, predicted)),
            "test_mae": float(mean_absolute_error(y_test, predicted)),
            "test_rmse": float(root_mean_squared_error(y_test, predicted)),
        }
        lines = [f"  {name.removeprefix('test_')}: {value:.4g}" for name, value in fields.items()]
        return fields, "Regression report on the held-out data:\n" + "\n".join(lines) + "\n"
    if hasattr(model, "score"):
        score = float(model.score(X_test) if y_test is None else model.score(X_test, y_test))
        return {"test_score": score}, f"The best model's own score on the held-out data: {score:.4g}\n"
    return {}, "The best model has no score: nothing to evaluate on the held-out data."


def write_summary(path: Path, **fields) -> None:
    write_atomically(path, (json.dumps(fields, indent=2, default=_jsonable) + "\n").encode())


VERSIONS_OF = (
    "spotsearch",
    "scikit-learn",
    "dask",
    "distributed",
    "dask-ml",
    "numpy",
    "joblib",
    "cloudpickle",
    "optuna",
)


def run_record(started: float) -> dict:
    """What finds a run again: its command line, when it started (`started`, epoch seconds), and
    the versions that ran it."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in VERSIONS_OF:
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    return {"command": list(sys.argv), "started_at": _utc(started), "versions": versions}


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def ended(status: str) -> dict:
    """How a run ended ("finished", "failed" or "interrupted"), and when: summary fields."""
    return {"status": status, "ended_at": _utc(time.time())}


def mark_ended(run: Path, status: str, **fields) -> None:
    """Record in the run's summary how it ended, keeping what it already holds."""
    try:
        summary = json.loads((run / SUMMARY).read_text())
    except (OSError, ValueError):
        summary = {}
    summary = summary if isinstance(summary, dict) else {}
    write_summary(run / SUMMARY, **{**summary, **ended(status), **fields})


def summary_fields(search, where: Where, timings: dict[str, float], **extra) -> dict:
    """What a fitted search found, where and how fast: the summary.json of a run."""
    results = search.cv_results_
    return {
        "search": f"{type(search).__module__.split('.')[0]}.{type(search).__name__}",
        **best_fields(search),
        "candidates": len(results["params"]),
        "splits": len({column.split("_", 1)[0] for column in results if re.fullmatch(r"split\d+_test_\w+", column)}),
        **adaptive_fields(search),
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
        # The dashboard link's key opens the cluster's dashboard while this run lasts: not kept.
        "where": {**asdict(where), "dashboard": without_key(where.dashboard) if where.dashboard else None},
        "client": {"python": platform.python_version(), "machine": platform.machine()},
        **extra,
    }


def adaptive_fields(search) -> dict:
    """What an AdaptiveSearchCV's study did (adaptive.py): candidates tried, pruned, and the fits
    pruning saved; nothing for another search."""
    if not hasattr(search, "study_"):
        return {}
    states = [t.state.name.lower() for t in search.study_.trials]
    return {"trials": {state: states.count(state) for state in sorted(set(states))} | {"asked": len(states)},
            "fits_saved_by_pruning": search.fits_saved_by_pruning_}  # fmt: skip


def _jsonable(value):
    """What json cannot write itself: numpy scalars as plain values, anything else (an estimator
    or a function searched over) as Python shows it."""
    plain = _plain(value)
    return repr(plain) if plain is value else plain
