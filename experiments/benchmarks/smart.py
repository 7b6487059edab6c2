#!/usr/bin/env python
"""Does the adaptive search pay? The fits, and the fit-seconds, each engine needs to reach a
target score: AdaptiveSearchCV, RandomizedSearchCV and HalvingRandomSearchCV, the same budget of
candidates each, over several seeds, medians.

The problem: scaling, PCA and an RBF SVC on scikit-learn's digits, three parameters of which two
span many decades (C, gamma: log scales) and one is a whole number (the PCA's components). The
target: a share (99.5%) of the best mean CV score a random search with ten times the budget
finds. Fits are counted in the order each engine tries its candidates (the adaptive search's
trials in the order asked, the random search's in the order drawn, the halving search's round
by round); a candidate reaches the target with its full-data score (for the halving search,
in a round on all the rows). The random search draws ten times the budget: its first draws are
those of a smaller one, and where the others' budget is not enough for it, how far it has to go
is still told. Fits and fit-seconds are the engines' own, wherever they run: the adaptive search
runs on a local Dask cluster (it needs one), the others in plain scikit-learn (`n_jobs=-1`),
which runs their thousands of short fits faster than any Dask cluster.

    python experiments/benchmarks/smart.py --seeds 5
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from statistics import median

if __package__ in (None, ""):  # run as `python experiments/benchmarks/smart.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ENGINES = ("adaptive", "random", "halving")


def problem(samples: int):
    from scipy.stats import loguniform, randint
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), PCA(random_state=0), SVC())
    space = {"pca__n_components": randint(5, 65), "svc__C": loguniform(1e-3, 1e5), "svc__gamma": loguniform(1e-7, 1e1)}
    return pipeline, space, X[:samples], y[:samples]


def make_search(engine: str, pipeline, space, *, candidates: int, cv: int, seed: int):
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401 (makes the import below work)
    from sklearn.model_selection import HalvingRandomSearchCV, RandomizedSearchCV

    from spotsearch.adaptive import AdaptiveSearchCV

    if engine == "adaptive":
        return AdaptiveSearchCV(pipeline, space, n_trials=candidates, cv=cv, random_state=seed)
    if engine == "random":
        return RandomizedSearchCV(pipeline, space, n_iter=candidates, cv=cv, random_state=seed)
    return HalvingRandomSearchCV(pipeline, space, n_candidates=candidates, factor=3, cv=cv, random_state=seed)


def tries(engine: str, search, cv: int) -> list[tuple[int, float, float | None]]:
    """(fits, fit-seconds, full-data score or None) of each candidate, in the order the engine tried them."""
    if engine == "adaptive":
        return [
            (sum(s is not None for s in t.user_attrs["fold_scores"]), sum(s or 0 for s in t.user_attrs["fold_seconds"]),
             t.value if t.state.name == "COMPLETE" else None)
            for t in search.study_.trials
        ]  # fmt: skip
    results = search.cv_results_
    order = range(len(results["params"]))
    if engine == "halving":
        order = sorted(order, key=lambda i: results["iter"][i])
    full = [engine != "halving" or results["n_resources"][i] == search.max_resources_ for i in order]
    return [
        (cv, cv * (results["mean_fit_time"][i] + results["mean_score_time"][i]),
         float(results["mean_test_score"][i]) if is_full else None)
        for i, is_full in zip(order, full, strict=True)
    ]  # fmt: skip


def to_target(tried: list[tuple[int, float, float | None]], target: float) -> tuple[float, float]:
    """Fits and fit-seconds up to and including the first candidate at or above `target`; inf if none."""
    fits = seconds = 0.0
    for n, spent, score in tried:
        fits, seconds = fits + n, seconds + spent
        if score is not None and score >= target:
            return fits, seconds
    return math.inf, math.inf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds, each a search per engine (default: %(default)s)")
    parser.add_argument("--candidates", type=int, default=60, help="each engine's budget (default: %(default)s)")
    parser.add_argument("--cv", type=int, default=5, help="folds (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=1000, help="rows of digits (default: %(default)s)")
    parser.add_argument("--share", type=float, default=0.995, help="target share of the best (default: %(default)s)")
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    from experiments.benchmarks.local import machine
    from spotsearch.search import fit_on_cluster

    pipeline, space, X, y = problem(args.samples)
    found: dict[str, list[tuple[int, list]]] = {engine: [] for engine in ENGINES}
    started = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as local, Client(local) as client:
        reference = make_search("random", pipeline, space, candidates=10 * args.candidates, cv=args.cv, seed=10**6)
        best = reference.set_params(n_jobs=-1).fit(X, y).best_score_
        target = args.share * best
        for seed in range(args.seeds):
            for engine in ENGINES:
                print(f"seed {seed + 1}/{args.seeds}: {engine}", file=sys.stderr, flush=True)
                candidates = args.candidates * (10 if engine == "random" else 1)
                search = make_search(engine, pipeline, space, candidates=candidates, cv=args.cv, seed=seed)
                if engine == "adaptive":
                    fit_on_cluster(search, X, y, client=client, progress=False)
                else:
                    search.set_params(n_jobs=-1).fit(X, y)
                found[engine].append(tries(engine, search, args.cv))
    print(f"{machine()}; digits {args.samples} rows, {args.cv} folds, {args.candidates} candidates per engine, "
          f"{args.seeds} seeds, {time.perf_counter() - started:.0f} s in all")  # fmt: skip
    print(f"target: {args.share:.1%} of {best:.4f} (the best of a random search of {10 * args.candidates} candidates) "
          f"= {target:.4f}\n")  # fmt: skip
    print("| engine | fits to target (median) | fit-seconds to target (median) | seeds that reached it "
          "| fits run (median) |\n|---|---|---|---|---|")  # fmt: skip
    for engine, runs in found.items():
        reached = [to_target(tried, target) for tried in runs]
        fits = [sum(n for n, _, _ in tried) for tried in runs]
        name = f"{engine} ({10 * args.candidates} candidates)" if engine == "random" else engine
        print(f"| {name} | {median(f for f, _ in reached):g} | {median(s for _, s in reached):.2f} "
              f"| {sum(math.isfinite(f) for f, _ in reached)}/{len(runs)} | {median(fits):g} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
