#!/usr/bin/env python
"""A successive-halving search over random forests: plain scikit-learn against the same search
through `fit_on_cluster` on the local cluster, interleaved rounds, medians.

A forest's own joblib use (its trees) must stay inside each fit: sent to the scheduler as tasks
of their own, they made this search several times slower.

    python experiments/benchmarks/forests.py --runs 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from statistics import median

if __package__ in (None, ""):  # run as `python experiments/benchmarks/forests.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def search():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingRandomSearchCV

    grid = {"max_depth": [4, 8, 16, None], "max_features": [0.2, 0.4, 0.6, 0.8], "min_samples_leaf": [1, 2, 4]}
    return HalvingRandomSearchCV(RandomForestClassifier(n_estimators=50, random_state=0), grid, cv=3, random_state=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    args = parser.parse_args()
    from distributed import Client, LocalCluster
    from sklearn.datasets import load_digits

    from experiments.benchmarks.local import machine
    from spotsearch.search import fit_on_cluster

    X, y = load_digits(return_X_y=True)
    times: dict[str, list[float]] = {"scikit-learn n_jobs=-1": [], "fit_on_cluster, local cluster": []}
    with LocalCluster(processes=False, n_workers=1, dashboard_address=None) as local, Client(local) as client:
        for _ in range(args.runs):
            started = time.perf_counter()
            plain = search().set_params(n_jobs=-1).fit(X, y)
            times["scikit-learn n_jobs=-1"].append(time.perf_counter() - started)
            started = time.perf_counter()
            mine = fit_on_cluster(search(), X, y, client=client)
            times["fit_on_cluster, local cluster"].append(time.perf_counter() - started)
            assert mine.best_params_ == plain.best_params_
    print(f"{machine()}; {args.runs} interleaved rounds\n")
    print("| search over forests | median s | min s | max s |\n|---|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {median(seconds):.2f} | {min(seconds):.2f} | {max(seconds):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
