"""What a search leaves behind in results/<run>/: CV table, heatmap, Dask report, summary."""

from __future__ import annotations

import csv
import gc
import json
import multiprocessing
import platform
import signal
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from experiments.cluster import Where

if TYPE_CHECKING:  # not at run time: the plotting process need not load scikit-learn
    from experiments.search import SearchResult

CV_TABLE = "cv_results.csv"
HEATMAP = "heatmap.png"
DASK_REPORT = "dask-report.html"
SUMMARY = "summary.json"


def new_run_folder(results: Path, experiment: str, where: Where) -> Path:
    """results/<experiment>-<UTC time>-<local|stack name>, never reused."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = results / f"{experiment}-{stamp}-{where.stack or where.kind}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}.{n}")
    folder.mkdir(parents=True)
    return folder


def write_cv_table(path: Path, result: SearchResult) -> None:
    rows = result.table()
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "params": json.dumps(row["params"])})


def write_heatmap(
    path: Path, candidates: list[dict], mean_scores: list[float], *, rows: str, columns: str, panels: str, title: str
) -> list[dict]:
    """Mean test score of each candidate over rows x columns, one panel per value of `panels`.

    Cells of the best score are framed and starred, ties included; returns their parameters.
    """
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, faster to import
    from matplotlib.patches import Rectangle

    def values(name: str) -> list:
        return list(dict.fromkeys(params[name] for params in candidates))

    means = {
        (params[rows], params[columns], params[panels]): score
        for params, score in zip(candidates, mean_scores, strict=True)
    }
    row_values, column_values, panel_values = values(rows), values(columns), values(panels)
    best = max(mean_scores)
    figure = Figure(figsize=(4.2 * len(panel_values), 4), layout="constrained")
    axes = figure.subplots(1, len(panel_values), squeeze=False)[0]
    for ax, panel in zip(axes, panel_values, strict=True):
        grid = [[means[r, c, panel] for c in column_values] for r in row_values]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower")
        ax.set_xticks(range(len(column_values)), [f"{c:g}" for c in column_values])
        ax.set_yticks(range(len(row_values)), [f"{r:g}" for r in row_values])
        ax.set(xlabel=columns, ylabel=rows, title=f"{panels}={panel}")
        for i, row in enumerate(grid):
            for j, score in enumerate(row):
                label = f"{score:.3f}"
                if score == best:  # every candidate tied for best is marked, not just the first
                    label = f"★ {label}"
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
                ax.text(j, i, label, ha="center", va="center", color="white" if score < 0.6 else "black")
    figure.colorbar(image, ax=list(axes), label="mean CV accuracy")
    ties = sum(score == best for score in mean_scores)
    figure.suptitle(f"{title}\n★ best mean CV accuracy {best:.4f}" + (f" ({ties} candidates tied)" if ties > 1 else ""))
    figure.savefig(path, dpi=100)
    return [
        {rows: params[rows], columns: params[columns], panels: params[panels]}
        for params, score in zip(candidates, mean_scores, strict=True)
        if score == best
    ]


def _load_matplotlib() -> None:
    # Ctrl-C reaches every process of the terminal's group: the main process handles it and
    # shuts this one down, which must not print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import matplotlib.figure  # noqa: F401

    # This process draws a few plots and exits: keep what matplotlib loaded out of every
    # collection, above all the interpreter's last ones at exit.
    gc.freeze()


class Plotter:
    """Draws plots in a helper process started before anything heavy is imported.

    Loading Dask and scikit-learn keeps one core busy while the other idles: the helper loads
    matplotlib there, and later draws while the main process writes Dask's report. It is
    handed plain lists, so it never loads scikit-learn; a script that starts it should import
    scikit-learn inside main, not at the top, since the helper re-imports the script's top.
    """

    def __init__(self) -> None:
        # spawn, not fork: the main process runs Dask's threads by the time plots are drawn.
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_load_matplotlib
        )
        self._pool.submit(int)  # the pool starts its process on the first task: start it now

    def heatmap(self, path: Path, result: SearchResult, **options) -> Future:
        means = [float(score) for score in result.mean_test_scores]
        return self._pool.submit(write_heatmap, path, result.candidates, means, **options)

    def __enter__(self) -> Plotter:
        return self

    def __exit__(self, *exc_info) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_info[0] is not None)


def write_summary(path: Path, **fields) -> None:
    path.write_text(json.dumps(fields, indent=2, default=_jsonable) + "\n")


def summary_fields(result: SearchResult, where: Where, timings: dict[str, float], **extra) -> dict:
    return {
        "best_params": result.best_params,
        "best_cv_score": result.best_score,
        "candidates": len(result.candidates),
        "splits": int(result.test_scores.shape[1]),
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
        "where": asdict(where),
        "client": {"python": platform.python_version(), "machine": platform.machine()},
        **extra,
    }


def _jsonable(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
