"""What a run leaves behind (experiments/spotsearch/report.py): plots drawn in a light helper, the CV table."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest


def test_plotting_helper_loads_neither_scikit_learn_nor_dask(tmp_path):
    """It loads matplotlib on the core the main process's startup leaves free; loading those
    as well would take that core back."""
    from spotsearch import plots

    candidates = [
        {"C": c, "gamma": g, "class_weight": w} for c in (1, 10) for g in (0.1, 1) for w in (None, "balanced")
    ]
    scores = np.linspace(0.1, 0.9, len(candidates))
    cv_results = {"params": candidates, "mean_test_score": scores, "std_test_score": scores / 10}
    with plots.Plotter() as plotter:
        options = {"rows": "C", "columns": "gamma", "panels": "class_weight", "title": "test"}
        plotter.heatmap(tmp_path / "heatmap.png", cv_results, **options).result()
        plotter.candidates(tmp_path / "candidates.png", cv_results, 7, title="test").result()
        loaded = plotter._pool.submit(eval, "list(__import__('sys').modules)").result()
    for name in ("heatmap.png", "candidates.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    assert "matplotlib" in loaded
    assert not {name.split(".")[0] for name in loaded} & {"sklearn", "scipy", "dask", "distributed"}


def test_heatmap_marks_every_best_cell(tmp_path):
    """Every cell of the best score, ties included, is framed in red and starred, in the panel
    and at the row and column of its candidate; no other cell is."""
    from matplotlib.patches import Rectangle

    from spotsearch.plots import heatmap_figure, write_heatmap

    candidates = [{"C": c, "gamma": g, "w": w} for w in (None, "balanced") for c in (1, 10) for g in (0.1, 1)]
    scores = [0.5, 0.9, 0.7, 0.9, 0.2, 0.3, 0.4, 0.6]
    options = {"rows": "C", "columns": "gamma", "panels": "w", "title": "t"}
    figure, best = heatmap_figure(candidates, scores, **options)
    assert best == [{"C": 1, "gamma": 1, "w": None}, {"C": 10, "gamma": 1, "w": None}]
    panels = {ax.get_title(): ax for ax in figure.axes if ax.get_title()}
    framed, starred = {}, {}
    for title, ax in panels.items():
        framed[title] = {
            (round(p.get_y() + 0.5), round(p.get_x() + 0.5))  # (row, column) of the cell
            for p in ax.patches
            if isinstance(p, Rectangle) and p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)
        }
        starred[title] = {
            (round(t.get_position()[1]), round(t.get_position()[0])) for t in ax.texts if "★" in t.get_text()
        }
    # C=1 is row 0 and C=10 row 1; gamma=1 is column 1; only the panel w=None holds the best.
    assert framed == starred == {"w=None": {(0, 1), (1, 1)}, "w=balanced": set()}
    assert "★ best mean CV accuracy 0.9000 (2 candidates tied)" in figure.get_suptitle()
    assert write_heatmap(tmp_path / "h.png", candidates, scores, **options) == best
    assert (tmp_path / "h.png").read_bytes().startswith(b"\x89PNG")


def test_cv_table_leaves_a_parameter_a_candidate_lacks_empty(tmp_path):
    """A grid of several dicts masks the parameters a candidate does not have: never 0."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    from spotsearch.report import write_cv_table

    X, y = load_iris(return_X_y=True)
    search = GridSearchCV(SVC(), [{"kernel": ["linear"]}, {"kernel": ["rbf"], "gamma": [0.1]}], cv=3).fit(X, y)
    write_cv_table(tmp_path / "cv.csv", search.cv_results_)
    with (tmp_path / "cv.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(row["param_kernel"], row["param_gamma"]) for row in rows] == [("linear", ""), ("rbf", "0.1")]
    assert [json.loads(row["params"]) for row in rows] == [{"kernel": "linear"}, {"kernel": "rbf", "gamma": 0.1}]


def test_a_result_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """Stopped at the rename (as by Ctrl-C or a full disk): no file, no half file, no temporary left."""
    import os

    from spotsearch import report

    def stopped(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        report.write_summary(tmp_path / "summary.json", best_params={"C": 1})
    with pytest.raises(KeyboardInterrupt), report.written_whole(tmp_path / "dask-report.html") as temporary:
        temporary.write_text("<html>half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    report.write_summary(tmp_path / "summary.json", best_params={"C": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_the_study_plot_shows_each_parameter_the_pruned_and_the_best_so_far_against_fits():
    from matplotlib.collections import PathCollection

    from spotsearch.plots import study_figure

    trials = [
        {"params": {"C": 1.0, "kernel": "rbf"}, "state": "COMPLETE", "value": 0.8, "fits": 3},
        {"params": {"C": 100.0, "kernel": "poly"}, "state": "PRUNED", "value": 0.3, "fits": 1},
        {"params": {"C": 10.0, "kernel": "rbf"}, "state": "COMPLETE", "value": 0.9, "fits": 3},
        {"params": {"C": 0.1, "kernel": "poly"}, "state": "COMPLETE", "value": 0.7, "fits": 3},
    ]
    figure = study_figure(trials, {"C": True, "kernel": False}, title="t")
    c_axis, kernel_axis, so_far = figure.axes[:3]
    assert (c_axis.get_xscale(), kernel_axis.get_xscale()) == ("log", "linear")
    pruned, evaluated, best = (collection.get_offsets() for collection in c_axis.collections
                               if isinstance(collection, PathCollection))  # fmt: skip
    assert pruned.tolist() == [[100.0, 0.3]]
    assert sorted(map(tuple, evaluated.tolist())) == [(0.1, 0.7), (1.0, 0.8), (10.0, 0.9)]
    assert best.tolist() == [[10.0, 0.9]]
    (line,) = so_far.get_lines()
    assert line.get_xdata().tolist() == [3, 4, 7, 10] and line.get_ydata().tolist() == [0.8, 0.8, 0.9, 0.9]
    assert so_far.get_title() == "4 candidates, 1 pruned"
