#!/usr/bin/env python
"""A text pipeline's search, whole process, against plain scikit-learn: TF-IDF (tokenizing is
Python code that holds the GIL) and a transformer of the user's own, then a linear model.

Each command is a process of its own, as a user runs it, interleaved (A B C A B C ...), medians:
- `GridSearchCV(n_jobs=-1)`: scikit-learn's process pool;
- spotsearch's local cluster as threads in one process (the default);
- spotsearch's local cluster as worker processes (`--processes`, one per core).

    python -m experiments.benchmarks.text --runs 5   (from the project folder)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from statistics import median

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

WORDS = 3000
GRID = {"tfidf__ngram_range": [(1, 1), (1, 2)], "tfidf__min_df": [1, 3], "clf__C": [0.1, 1.0, 10.0]}


def documents(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Synthetic documents of two classes that share most words and lean on a few of their own."""
    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"w{i}" for i in range(WORDS)])
    labels = rng.integers(0, 2, n)
    texts = []
    for label in labels:
        weights = np.ones(WORDS)
        weights[label * 100 : label * 100 + 100] = 3.0
        words = rng.choice(vocabulary, size=int(rng.integers(40, 120)), p=weights / weights.sum())
        texts.append(" ".join(words))
    return texts, labels


class WordStatistics(BaseEstimator, TransformerMixin):
    """A transformer of the user's own, in plain Python: each document's length and mean word length."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        rows = []
        for text in X:
            words = text.split()
            rows.append([len(words), sum(len(word) for word in words) / max(len(words), 1)])
        return np.array(rows)


def pipeline():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline
    from sklearn.preprocessing import StandardScaler

    features = FeatureUnion(
        [("tfidf", TfidfVectorizer()), ("stats", Pipeline([("words", WordStatistics()), ("scale", StandardScaler())]))]
    )
    return Pipeline([("features", features), ("clf", LogisticRegression(max_iter=200))])


def search(n_jobs=None):
    from sklearn.model_selection import GridSearchCV

    grid = {f"features__{name}" if name.startswith("tfidf") else name: values for name, values in GRID.items()}
    return GridSearchCV(pipeline(), grid, cv=3, n_jobs=n_jobs)


def one(engine: str, samples: int) -> None:
    """One search, as its own process: prints SEARCH_SECONDS."""
    X, y = documents(samples)
    started = time.perf_counter()
    if engine == "scikit-learn":
        search(n_jobs=-1).fit(X, y)
    else:
        from distributed import Client

        from spotsearch import Cluster, fit_on_cluster

        processes = os.cpu_count() if engine == "processes" else None
        with Cluster(processes=processes) as cluster, Client(cluster):
            fit_on_cluster(search(), X, y, progress=False)
    print(f"SEARCH_SECONDS={time.perf_counter() - started:.3f}")


def main() -> int:
    from experiments.benchmarks.local import machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=3000, help="documents (default: %(default)s)")
    parser.add_argument("--one", choices=["scikit-learn", "threads", "processes"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.samples)
        return 0
    names = {
        "scikit-learn": "`GridSearchCV(n_jobs=-1)`",
        "threads": "spotsearch, local cluster: threads (the default)",
        "processes": f"spotsearch, local cluster: {os.cpu_count()} worker processes (`--processes`)",
    }
    command = [sys.executable, "-m", "experiments.benchmarks.text", "--samples", str(args.samples), "--one"]
    walls: dict[str, list[float]] = {name: [] for name in names}
    for engine in names:  # warm-up: file caches
        subprocess.run([*command, engine], check=True, capture_output=True)
    for run in range(args.runs):
        for engine in names:
            started = time.perf_counter()
            subprocess.run([*command, engine], check=True, capture_output=True)
            walls[engine].append(time.perf_counter() - started)
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{e} {w[-1]:.2f} s" for e, w in walls.items()), flush=True)
    fits = 3 * np.prod([len(values) for values in GRID.values()])
    print(f"\n{machine()}; {args.samples} documents, {fits} fits; {args.runs} interleaved runs each\n")
    print("| command | whole process: median s | min s | max s | median of per-round ratios to scikit-learn |")
    print("|---|---|---|---|---|")
    for engine, name in names.items():
        ratios = [a / b for a, b in zip(walls[engine], walls["scikit-learn"], strict=True)]
        wall = walls[engine]
        print(f"| {name} | {median(wall):.2f} | {min(wall):.2f} | {max(wall):.2f} | {median(ratios):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
