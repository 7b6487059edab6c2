#!/usr/bin/env python
"""Wall time of `python experiments/svc_digits.py` against plain scikit-learn on the same grid.

Whole processes, interleaved (A B A B ...), medians: what a user waits for at the terminal.
The baseline is GridSearchCV(n_jobs=-1) on the same split and grid, printing the same report.

    python experiments/benchmark_local.py --runs 9
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPERIMENT = Path(__file__).resolve().parent / "svc_digits.py"
BASELINE = """
from sklearn.datasets import load_digits
from sklearn.metrics import classification_report
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.svm import SVC

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
grid = {"C": [1e-4, 1, 1e4], "gamma": [1e-3, 1, 1e3], "class_weight": [None, "balanced"]}
search = GridSearchCV(SVC(kernel="rbf"), grid, cv=3, n_jobs=-1).fit(X_train, y_train)
print(search.best_params_, search.best_score_)
print(classification_report(y_test, search.best_estimator_.predict(X_test), digits=3))
"""


def timed(command: list[str], cwd: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def machine() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line), model
        )
    return (
        f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9, help="runs of each command (default: %(default)s)")
    args = parser.parse_args()
    commands = {
        "svc_digits.py (Dask, local)": [sys.executable, str(EXPERIMENT)],
        "GridSearchCV(n_jobs=-1)": [sys.executable, "-c", BASELINE],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as folder:
        for command in commands.values():  # warm-up: file caches, matplotlib's font cache
            timed(command, folder)
        for run in range(args.runs):
            for name, command in commands.items():
                times[name].append(timed(command, folder))
            print(
                f"run {run + 1}/{args.runs}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True
            )
    print(f"\n{machine()}; {args.runs} interleaved runs each\n")
    print("| command | median s | min s | max s |\n|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    ours, baseline = (statistics.median(v) for v in times.values())
    print(f"\nratio of medians (ours / scikit-learn): {ours / baseline:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
