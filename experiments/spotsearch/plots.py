"""The plots of a run (heatmap.png, candidates.png, study.png), drawn in a helper process (`Plotter`)."""

from __future__ import annotations

import gc
import io
import multiprocessing
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from spotsearch.saved_fits import write_atomically
from spotsearch.spawn import main_script_hidden


def save_figure(figure, path: Path) -> None:
    picture = io.BytesIO()
    figure.savefig(picture, format="png", dpi=100)
    write_atomically(path, picture.getvalue())


def write_heatmap(
    path: Path, candidates: list[dict], mean_scores: list[float], *, rows: str, columns: str, panels: str, title: str
) -> list[dict]:
    """Mean test score of each candidate over rows x columns, one panel per value of `panels`.

    Cells of the best score are framed and starred, ties included; returns their parameters.
    """
    figure, best = heatmap_figure(candidates, mean_scores, rows=rows, columns=columns, panels=panels, title=title)
    save_figure(figure, path)
    return best


def heatmap_figure(
    candidates: list[dict], mean_scores: list[float], *, rows: str, columns: str, panels: str, title: str
) -> tuple[object, list[dict]]:
    """The heatmap (a matplotlib Figure) and the parameters of its best cells."""
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
    return figure, [
        {rows: params[rows], columns: params[columns], panels: params[panels]}
        for params, score in zip(candidates, mean_scores, strict=True)
        if score == best
    ]


def write_candidates(
    path: Path, means: list[float], stds: list[float], rounds: list[int] | None, best: int, *, title: str
) -> None:
    """Mean CV score (and its spread over the splits) of every candidate, best first, the chosen
    one starred; for a successive-halving search, one colour per round (later rounds score on
    more rows, so the chosen one need not have the highest score of all)."""
    from matplotlib.figure import Figure

    order = sorted(range(len(means)), key=lambda i: -means[i])
    figure = Figure(figsize=(8, 4), layout="constrained")
    ax = figure.subplots()
    colours = [f"C{rounds[i] % 10}" for i in order] if rounds else "C0"
    ax.errorbar(range(len(order)), [means[i] for i in order], yerr=[stds[i] for i in order], fmt="none", ecolor="grey")
    ax.scatter(range(len(order)), [means[i] for i in order], c=colours, s=18, zorder=3)
    ax.scatter([order.index(best)], [means[best]], marker="*", s=220, c="red", zorder=4, label="chosen")
    for r in sorted(set(rounds or [])):
        ax.scatter([], [], c=f"C{r % 10}", label=f"round {r}")
    ax.legend(title="successive halving" if rounds else None, loc="lower left")
    ax.set(xlabel="candidates, best first", ylabel="mean CV score", title=title)
    save_figure(figure, path)


def study_figure(trials: list[dict], logs: dict[str, bool], *, title: str):
    """An adaptive search's study: the mean CV score against each parameter (pruned candidates,
    at the mean of the folds they ran, as grey crosses), and the best score so far against the
    fits run. `trials` in the order they were asked: params, value, state, fits."""
    from matplotlib.figure import Figure

    names = list(logs)
    figure = Figure(figsize=(3.6 * (len(names) + 1), 3.6), layout="constrained")
    axes = figure.subplots(1, len(names) + 1, squeeze=False)[0]
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    pruned = [t for t in trials if t["state"] == "PRUNED" and t["value"] is not None]
    best = max((t["value"] for t in complete), default=None)
    for ax, name in zip(axes, names, strict=False):
        ax.scatter([t["params"][name] for t in pruned], [t["value"] for t in pruned], marker="x", c="grey",
                   label="pruned")  # fmt: skip
        ax.scatter([t["params"][name] for t in complete], [t["value"] for t in complete], s=18, label="evaluated")
        ax.scatter([t["params"][name] for t in complete if t["value"] == best], [best] * sum(
            t["value"] == best for t in complete), marker="*", s=200, c="red", zorder=3, label="best")  # fmt: skip
        if logs[name]:
            ax.set_xscale("log")
        ax.set(xlabel=name, ylabel="mean CV score")
    axes[0].legend(loc="lower left")
    fits, so_far, running_best = 0, [], None
    for t in trials:
        fits += t["fits"]
        if t["state"] == "COMPLETE":
            running_best = t["value"] if running_best is None else max(running_best, t["value"])
        so_far.append((fits, running_best))
    shown = [(fit, score) for fit, score in so_far if score is not None]
    axes[-1].step([fit for fit, _ in shown], [score for _, score in shown], where="post")
    axes[-1].set(xlabel="fits run", ylabel="best mean CV score so far", title=f"{len(trials)} candidates, "
                 f"{len(pruned)} pruned")  # fmt: skip
    figure.suptitle(title)
    return figure


def write_study(path: Path, trials: list[dict], logs: dict[str, bool], *, title: str) -> None:
    save_figure(study_figure(trials, logs, title=title), path)


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
    handed plain lists and draws with this module's functions, so it never loads scikit-learn
    nor the script: a script with top-level code and no `if __name__ == "__main__":` runs once.
    """

    def __init__(self) -> None:
        # spawn, not fork: the main process runs Dask's threads by the time plots are drawn.
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_load_matplotlib
        )
        with main_script_hidden():
            self._pool.submit(int)  # the pool starts its process on the first task: start it now

    def heatmap(self, path: Path, cv_results: dict, *, column: str = "mean_test_score", **options) -> Future:
        means = [float(score) for score in cv_results[column]]
        return self._pool.submit(write_heatmap, path, list(cv_results["params"]), means, **options)

    def candidates(
        self, path: Path, cv_results: dict, best_index: int, *, title: str, column: str = "mean_test_score"
    ) -> Future:
        means = [float(score) for score in cv_results[column]]
        stds = [float(score) for score in cv_results[column.replace("mean_", "std_", 1)]]
        rounds = [int(r) for r in cv_results["iter"]] if "iter" in cv_results else None
        return self._pool.submit(write_candidates, path, means, stds, rounds, int(best_index), title=title)

    def study(self, path: Path, search, *, title: str) -> Future:
        """An AdaptiveSearchCV's study (adaptive.py), as `study_figure` draws it."""
        trials = [
            {"params": t.params, "state": t.state.name, "fits": sum(s is not None for s in t.user_attrs["fold_scores"]),
             "value": t.value if t.value is not None else (list(t.intermediate_values.values()) or [None])[-1]}
            for t in search.study_.trials
        ]  # fmt: skip
        logs = {name: bool(getattr(d, "log", False)) for name, d in search.study_.trials[0].distributions.items()}
        return self._pool.submit(write_study, path, trials, logs, title=title)

    def __enter__(self) -> Plotter:
        return self

    def __exit__(self, *exc_info) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_info[0] is not None)
