#!/usr/bin/env python
"""Wall time of `python experiments/svc_digits.py`, with each engine, against plain scikit-learn,
and what saving every finished fit costs it.

Whole processes, interleaved (A B C A B C ...), medians: what a user waits for at the terminal.
The baseline is GridSearchCV(n_jobs=-1) on the same split and grid, printing the same report.
The "fits not kept" runs are the same script with SavedFits.save made a no-op: no file written,
nothing kept (the keys are still computed, as a search always does).

    python experiments/benchmarks/local.py --runs 9
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

EXPERIMENT = Path(__file__).resolve().parent.parent / "svc_digits.py"
BASELINE = """
import time
from sklearn.datasets import load_digits
from sklearn.metrics import classification_report
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.svm import SVC

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
grid = {"C": [1e-4, 1, 1e4], "gamma": [1e-3, 1, 1e3], "class_weight": [None, "balanced"]}
started = time.perf_counter()
search = GridSearchCV(SVC(kernel="rbf"), grid, cv=3, n_jobs=-1).fit(X_train, y_train)
print(f"SEARCH_SECONDS={time.perf_counter() - started}")
print(search.best_params_, search.best_score_)
print(classification_report(y_test, search.best_estimator_.predict(X_test), digits=3))
"""


NOT_KEPT = """
import runpy, sys
sys.path.insert(0, {root!r})
from spotsearch import saved_fits

saved_fits.SavedFits.save = lambda self, key, value: None
sys.argv = [{script!r}, "--engine", {engine!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


def not_kept(engine: str) -> list[str]:
    code = NOT_KEPT.format(root=str(EXPERIMENT.parent.parent), script=str(EXPERIMENT), engine=engine)
    return [sys.executable, "-c", code]


def timed(command: list[str], cwd: str) -> tuple[float, float]:
    """Wall time of the whole process, and of its search phase as the process reports it."""
    started = time.perf_counter()
    run = subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if match := re.search(r"SEARCH_SECONDS=([0-9.]+)", run.stdout):
        return wall, float(match.group(1))
    summaries = sorted(Path(cwd, "results").glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    return wall, json.loads(summaries[-1].read_text())["timings_seconds"]["search"]


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
        "GridSearchCV(n_jobs=-1)": [sys.executable, "-c", BASELINE],
        "svc_digits.py (dask-ml, local)": [sys.executable, str(EXPERIMENT), "--engine", "dask-ml"],
        "svc_digits.py (scikit-learn + joblib's Dask backend, local)": [
            sys.executable, str(EXPERIMENT), "--engine", "scikit-learn"
        ],
        "svc_digits.py (dask-ml, local), fits not kept": not_kept("dask-ml"),
        "svc_digits.py (scikit-learn, local), fits not kept": not_kept("scikit-learn"),
    }  # fmt: skip
    walls: dict[str, list[float]] = {name: [] for name in commands}
    searches: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as folder:
        for command in commands.values():  # warm-up: file caches, matplotlib's font cache
            timed(command, folder)
        for run in range(args.runs):
            for name, command in commands.items():
                wall, search = timed(command, folder)
                walls[name].append(wall)
                searches[name].append(search)
            latest = ", ".join(f"{name} {values[-1]:.2f} s" for name, values in walls.items())
            print(f"run {run + 1}/{args.runs}: {latest}", flush=True)
    print(f"\n{machine()}; {args.runs} interleaved runs each\n")
    print("| command | whole process: median s | min s | max s | search phase: median s |")
    print("|---|---|---|---|---|")
    for name in commands:
        wall, search = walls[name], searches[name]
        print(f"| {name} | {median(wall):.2f} | {min(wall):.2f} | {max(wall):.2f} | {median(search):.2f} |")
    baseline = next(iter(commands))
    for name in list(commands)[1:3]:
        print(
            f"\n{name} / scikit-learn, ratio of medians: whole process "
            f"{median(walls[name]) / median(walls[baseline]):.2f}, "
            f"search phase {median(searches[name]) / median(searches[baseline]):.2f}"
        )
        # Each round ran the commands back to back: their ratio cancels the machine's slow drifts.
        paired = [a / b for a, b in zip(walls[name], walls[baseline], strict=True)]
        faster = sum(ratio < 1 for ratio in paired)
        print(f"  median of the {args.runs} per-round ratios: {median(paired):.2f}; faster in {faster} of {args.runs}")
    for saved, unsaved in zip(list(commands)[1:3], list(commands)[3:], strict=True):
        paired = [a / b for a, b in zip(searches[saved], searches[unsaved], strict=True)]
        ratio = median(searches[saved]) / median(searches[unsaved])
        print(f"\nfits saved / not kept, {saved}: search phase, ratio of medians {ratio:.3f}, "
              f"median of per-round ratios {median(paired):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
