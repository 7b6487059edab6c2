"""A Dask client on the emulated laptop that a test drives line by line (stdin), to put an
adaptive cluster in the states its tests need. Each command answers one JSON line (stdout).

    python laptop_client.py OUTPUTS_FILE STACK

Commands:
    search N SECONDS  a GridSearchCV of N candidates x 3 splits whose fits take SECONDS each,
                      through spotsearch.search.fit_on_cluster; answers its best candidate,
                      or "interrupted" after a SIGINT (the client stays connected)
    spin N SECONDS    submit N tasks that each sleep SECONDS, spread by Dask; answers at once
    settle            wait for the spinning tasks to finish
    hold              one task per worker node, pinned there, running until released;
                      answers {instance id: worker address}
    keep INSTANCE     put 1 MB of data on that node's worker and hold it; answers its key
    release INSTANCE  let that node's held task finish; answers where it ran
    check             fetch the kept data; answers whether it is intact
    drop              forget the kept data
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np


def _hold_event(worker, name: str):
    """A flag in the worker's own process: a task cannot reach the scheduler (dask_node.trust)."""
    import threading

    return worker.__dict__.setdefault("test_holds", {}).setdefault(name, threading.Event())


def hold(name: str) -> str:
    from distributed import get_worker

    worker = get_worker()
    _hold_event(worker, name).wait()
    return worker.address


def release_hold(name: str, dask_worker) -> None:
    _hold_event(dask_worker, name).set()


def sleeping_search(client, candidates: int, seconds: float) -> int:
    from sklearn.model_selection import GridSearchCV

    from experiments.benchmarks.scale import SleepClassifier
    from spotsearch.search import fit_on_cluster

    X, y = np.arange(60.0).reshape(30, 2), np.arange(30) % 2
    search = GridSearchCV(SleepClassifier(delay=seconds), {"candidate": list(range(candidates))}, cv=3)
    fit_on_cluster(search, X, y, client=client)
    return int(search.best_params_["candidate"])


def main(outputs_path: str, stack: str) -> int:
    from distributed import Client

    from spotsearch.cluster.outputs import read_outputs
    from spotsearch.cluster.tls_files import private_tls_files, security_for

    outputs = read_outputs(Path(outputs_path), stack)
    held, kept, spinning = {}, None, []
    expected = np.arange(131072, dtype="float64")
    with private_tls_files(outputs) as tls:
        security = security_for(tls["ca"], tls["cert"], tls["key"])
        with Client(outputs["scheduler_address"], security=security, timeout="60s") as client:
            print(json.dumps("connected"), flush=True)
            for line in sys.stdin:
                command, *args = line.split()
                # The worker node names its workers after its instance (user-data): "i-..." or "i-...-N".
                workers = {re.match(r"i-[0-9a-f]+", w["name"]).group(): address
                           for address, w in client.scheduler_info(n_workers=-1)["workers"].items()}  # fmt: skip
                if command == "search":
                    try:
                        answer = sleeping_search(client, int(args[0]), float(args[1]))
                    except KeyboardInterrupt:  # Ctrl-C in a notebook: the search stops, the client stays
                        answer = "interrupted"
                elif command == "spin":
                    spinning = client.map(time.sleep, [float(args[1])] * int(args[0]), pure=False)
                    answer = len(spinning)
                elif command == "settle":
                    client.gather(spinning)
                    spinning, answer = [], "settled"
                elif command == "hold":
                    for instance, address in workers.items():
                        held[instance] = client.submit(hold, f"hold-{instance}", workers=[address], pure=False)
                    answer = workers
                elif command == "keep":
                    (kept,) = client.scatter([expected], workers=[workers[args[0]]])
                    answer = kept.key
                elif command == "release":
                    client.run(release_hold, f"hold-{args[0]}", workers=[workers[args[0]]])
                    answer = held.pop(args[0]).result(timeout=60)
                elif command == "check":
                    answer = bool(np.array_equal(kept.result(timeout=60), expected))
                elif command == "drop":
                    kept = None
                    answer = "dropped"
                else:
                    answer = f"unknown command {command}"
                print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
