#!/usr/bin/env python
"""The search engines as the work grows, and what a search moves over the network.

    python experiments/benchmarks/scale.py --runs 5                 # every part
    python experiments/benchmarks/scale.py --part scale --runs 3    # one part

tenfold  Ten times the seed grid's fits (180 candidates x 3 splits of digits): plain
         GridSearchCV(n_jobs=-1), dask-ml's GridSearchCV and scikit-learn's under joblib's
         Dask backend, the two on the project's local cluster; search phase, interleaved rounds.
scale    Fits that sleep 0.3 s and use no CPU, on 4 worker processes x N threads on loopback, so
         that the scheduler's and the transport's overhead shows apart from this machine's cores:
         efficiency = ideal time (fits x 0.3 s / slots) / measured time, at 8, 32, 64 and 128
         slots, and per fit: the CPU each process used (scheduler, client, the workers together)
         and the bytes every hop carried (loopback). The scheduler runs in a process of its own,
         as on a real cluster, where it has a node to itself and the client is on the laptop.
bytes    How many times the training data crosses the network per search, on 4 worker
         processes: the bytes the loopback interface carried during one search (client to
         scheduler, scheduler to workers, worker to worker), over the size of X and y. Run it on
         an otherwise quiet machine: other loopback traffic counts too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from statistics import median

if __package__ in (None, ""):  # run as `python experiments/benchmarks/scale.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sklearn.base import BaseEstimator, ClassifierMixin

from experiments.benchmarks.local import machine

ENGINES = ("scikit-learn n_jobs=-1", "dask-ml", "scikit-learn + joblib Dask")
DASK_ENGINES = ENGINES[1:]
SLEEP = 0.3
WAVES = 8  # fits per slot in the scale part: enough that start and end effects stay small


class SleepClassifier(ClassifierMixin, BaseEstimator):
    """A classifier whose fit takes a fixed wall time and no CPU; `candidate` only tells
    candidates apart."""

    def __init__(self, candidate: int = 0, delay: float = SLEEP) -> None:
        self.candidate, self.delay = candidate, delay

    def fit(self, X, y):
        import numpy as np

        time.sleep(self.delay)
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        import numpy as np

        return np.full(len(X), self.classes_[0])


def search_for(engine: str, estimator, grid: dict, cv: int):
    if engine == "dask-ml":
        from dask_ml.model_selection import GridSearchCV

        return GridSearchCV(estimator, grid, cv=cv, refit=False)
    from sklearn.model_selection import GridSearchCV

    return GridSearchCV(estimator, grid, cv=cv, refit=False, n_jobs=-1 if engine == ENGINES[0] else None)


def timed_search(client, engine: str, estimator, grid: dict, X, y, cv: int = 3) -> float:
    from spotsearch.search import fit_on_cluster

    search = search_for(engine, estimator, grid, cv)
    started = time.perf_counter()
    if engine == ENGINES[0]:
        search.fit(X, y)  # scikit-learn alone, with its own worker processes
    else:
        fit_on_cluster(search, X, y, client=client)
    return time.perf_counter() - started


def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    return X_train, y_train


def tenfold(runs: int, scale: int = 10) -> None:
    import numpy as np
    from distributed import Client, LocalCluster
    from sklearn.svm import SVC

    # The seed grid has 18 candidates; this one has 18 x `scale`, over the same ranges.
    grid = {
        "C": list(np.logspace(-4, 4, scale)),
        "gamma": list(np.logspace(-3, 3, 9)),
        "class_weight": [None, "balanced"],
    }
    X, y = digits()
    threads = os.cpu_count() or 1
    with (
        LocalCluster(processes=False, n_workers=1, threads_per_worker=threads, dashboard_address=None) as local,
        Client(local) as client,
    ):
        times: dict[str, list[float]] = {engine: [] for engine in ENGINES}
        for engine in ENGINES:  # warm-up: imports, scikit-learn's process pool
            timed_search(client, engine, SVC(), {"C": [1.0]}, X, y)
        for run in range(runs):
            for engine in ENGINES:
                times[engine].append(timed_search(client, engine, SVC(), grid, X, y))
            print(f"  tenfold round {run + 1}/{runs}: " + ", ".join(f"{e} {t[-1]:.2f} s" for e, t in times.items()))
    fits = len(grid["C"]) * len(grid["gamma"]) * len(grid["class_weight"]) * 3
    print(f"\n### {fits} fits of SVC on digits, search phase, {runs} interleaved rounds\n")
    print("| engine | median s | min s | max s | median of per-round ratios to scikit-learn |")
    print("|---|---|---|---|---|")
    for engine, values in times.items():
        ratios = [a / b for a, b in zip(values, times[ENGINES[0]], strict=True)]
        print(f"| {engine} | {median(values):.2f} | {min(values):.2f} | {max(values):.2f} | {median(ratios):.2f} |")


def scale(runs: int, slots_list: tuple[int, ...] = (8, 32, 64, 128), workers: int = 4) -> None:
    import numpy as np
    import psutil
    from distributed import Client
    from distributed.deploy.subprocess import SubprocessCluster

    # The estimator travels by reference, as scikit-learn's own do: a class of the script being
    # run would travel by value (cloudpickle), which costs the client and the scheduler more per
    # fit. The workers import it from this module.
    from experiments.benchmarks.scale import SleepClassifier

    root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))
    X, y = np.zeros((300, 2)), np.arange(300) % 2
    print(f"\n### fits of {SLEEP} s that use no CPU, {workers} worker processes and the scheduler's, {runs} rounds\n")
    print(
        "| slots | engine | fits | ideal s | median s | efficiency | first fit after s | slots busy "
        "| CPU ms per fit: scheduler | client | workers | KB per fit over loopback |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for slots in slots_list:
        cv = 2
        grid = {"candidate": list(range(WAVES * slots // cv))}
        fits = len(grid["candidate"]) * cv
        ideal = fits * SLEEP / slots
        with (
            SubprocessCluster(
                n_workers=workers, threads_per_worker=slots // workers, host="127.0.0.1", dashboard_address=None
            ) as local,
            Client(local) as client,
        ):
            client.wait_for_workers(workers)
            # Every worker imports the engines once before the clock starts: a worker that had
            # no fit in the warm-up would import scikit-learn (seconds) on its first timed fit.
            for module in ("sklearn.model_selection", "dask_ml.model_selection", "experiments.benchmarks.scale"):
                client.run(importlib.import_module, module)
            processes = {
                "scheduler": [psutil.Process(client.run_on_scheduler(os.getpid))],
                "client": [psutil.Process()],
                "workers": [psutil.Process(pid) for pid in client.run(os.getpid).values()],
            }
            for engine in DASK_ENGINES:  # warm-up
                timed_search(client, engine, SleepClassifier(delay=0.0), {"candidate": [0, 1]}, X, y, cv)
            measured: dict[str, list[tuple[float, ...]]] = {engine: [] for engine in DASK_ENGINES}
            for _ in range(runs):
                for engine in DASK_ENGINES:
                    cpu_before, bytes_before = cpu_seconds(processes), loopback_bytes()
                    timeline = fit_timeline(client, engine, SleepClassifier(), grid, X, y, cv)
                    cpu = [
                        (after - before) / fits * 1e3
                        for before, after in zip(cpu_before, cpu_seconds(processes), strict=True)
                    ]
                    moved = (loopback_bytes() - bytes_before) / fits / 1e3
                    measured[engine].append((*timeline, *cpu, moved))
        for engine, rounds in measured.items():
            elapsed, before, busy, *per_fit = (median(column) for column in zip(*rounds, strict=True))
            cells = [f"{elapsed:.2f}", f"{ideal / elapsed:.2f}", f"{before:.2f}", f"{busy:.2f}"]
            cells += [f"{value:.1f}" for value in per_fit]
            print(f"| {slots} | {engine} | {fits} | {ideal:.2f} | " + " | ".join(cells) + " |", flush=True)


def cpu_seconds(processes: dict[str, list]) -> list[float]:
    """CPU seconds (user and system) each group of processes has used so far."""
    return [sum(sum(p.cpu_times()[:2]) for p in group) for group in processes.values()]


def fit_timeline(client, engine: str, estimator, grid: dict, X, y, cv: int) -> tuple[float, float, float]:
    """One timed search, and from the scheduler's task stream: how long before the first fit
    started (the engine building and sending its tasks), and how busy the slots were from then
    until the last fit ended (fit-seconds over slot-seconds, as a fraction of the slots)."""
    from distributed import get_task_stream

    from spotsearch.upstream import DASK_ML_FIT, JOBLIB_BATCH

    slots = sum(client.nthreads().values())
    with get_task_stream(client) as stream:
        started = time.time()  # the task stream's clock
        elapsed = timed_search(client, engine, estimator, grid, X, y, cv)
    fits = [
        (span["start"], span["stop"])
        for record in stream.data
        if JOBLIB_BATCH.search(str(record["key"])) or DASK_ML_FIT.search(str(record["key"]))
        for span in record["startstops"]
        if span["action"] == "compute"
    ]
    first, last = min(start for start, _ in fits), max(stop for _, stop in fits)
    return elapsed, first - started, sum(stop - start for start, stop in fits) / ((last - first) * slots)


def loopback_bytes() -> int:
    """Bytes carried by the loopback interface so far (every hop of a local cluster is on it)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[0])  # received; on loopback, each byte sent is received once
    raise RuntimeError("no loopback interface in /proc/net/dev")


def bytes_moved(runs: int, workers: int = 4) -> None:
    from distributed import Client, LocalCluster
    from sklearn.datasets import make_classification
    from sklearn.dummy import DummyClassifier

    # Enough rows that the data, not the messages about it, dominates what moves.
    X, y = make_classification(n_samples=40_000, n_features=50, random_state=0)
    size = X.nbytes + y.nbytes
    grid = {"strategy": ["most_frequent", "prior", "stratified", "uniform"]}
    print(f"\n### times the training data ({size / 1e6:.1f} MB) crosses loopback per search, {workers} workers\n")
    print("| engine | median bytes over loopback | times the data | per worker |")
    print("|---|---|---|---|")
    moved: dict[str, list[int]] = {engine: [] for engine in DASK_ENGINES}
    for _ in range(runs):
        for engine in DASK_ENGINES:
            # A new cluster for every search: data left on the workers by an earlier search
            # (scatter reuses content-hashed keys) would hide what a first search moves.
            with (
                LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
                ) as local,
                Client(local) as client,
            ):
                timed_search(client, engine, DummyClassifier(), grid, X[:100], y[:100])  # workers load scikit-learn
                before = loopback_bytes()
                timed_search(client, engine, DummyClassifier(), grid, X, y)
                moved[engine].append(loopback_bytes() - before)
    for engine, values in moved.items():
        copies = median(values) / size
        print(f"| {engine} | {median(values) / 1e6:.1f} MB | {copies:.2f} | {copies / workers:.2f} |", flush=True)


PARTS = {"tenfold": tenfold, "scale": scale, "bytes": bytes_moved}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="rounds of each measurement (default: %(default)s)")
    parser.add_argument("--part", choices=PARTS, action="append", help="only these parts (default: all)")
    parser.add_argument("--small", action="store_true", help="tiny sizes, to check that it runs (tests)")
    args = parser.parse_args()
    print(f"{machine()}; {time.strftime('%Y-%m-%d')}")
    for part in args.part or PARTS:
        if args.small:
            options = {"tenfold": {"scale": 1}, "scale": {"slots_list": (4,)}, "bytes": {}}[part]
            PARTS[part](args.runs, **options)
        else:
            PARTS[part](args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
