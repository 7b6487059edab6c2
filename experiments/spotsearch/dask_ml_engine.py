"""dask-ml's searches on the cluster: they build their own task graph, which runs through the
client with every finished fit saved as it arrives."""

from __future__ import annotations

import time
from collections.abc import Callable

from spotsearch.cluster.messages import ClusterError
from spotsearch.saved_fits import SavedFits
from spotsearch.upstream import DASK_ML_FIT, data_node, incremental_search_base


def is_dask_ml(search) -> bool:
    return type(search).__module__.startswith("dask_ml.")


def refuse_unsupported(search) -> None:
    """dask-ml's incremental searches (Hyperband and the like) are broken upstream since dask 2025.3
    (dask/dask-ml#1016): their fit calls `dask.persist` from the client's event loop, which dask
    refuses ("an asynchronous Client in a synchronous context"). Refused before any work."""
    if not is_dask_ml(search):
        return
    if isinstance(search, incremental_search_base()):
        raise ClusterError(
            f"dask-ml's {type(search).__name__} is broken upstream since dask 2025.3 (dask/dask-ml#1016: it calls "
            "dask.persist inside the client's event loop); use spotsearch.AdaptiveSearchCV for an adaptive search "
            "that prunes, or scikit-learn's HalvingRandomSearchCV or HalvingGridSearchCV for successive halving"
        )


# How often dask-ml's fits are looked at when none has finished: what a finished fit may wait
# before it is saved, and a lost scheduler before it is noticed.
COLLECT_SECONDS = 0.05


def _check_same_scheduler(client, scheduler_id: str | None) -> None:
    """CommClosedError (a lost scheduler, to fit_on_cluster) when the client is no longer
    connected to the scheduler the fits were sent to. A client that reconnects to a new one (a
    replaced scheduler, at the same address) cancels its futures; yet on the emulated deploy a
    search once went on waiting for a fit of the old one after that, for ever (the cause, in
    distributed, is not known). Its fits are not waited for past the scheduler that had them."""
    from distributed.comm import CommClosedError

    if client.status != "running" or client.scheduler_info().get("id") != scheduler_id:
        raise CommClosedError(f"the scheduler the search was sent to ({scheduler_id}) is gone")


def dask_ml_scheduler(client, saved: SavedFits) -> Callable:
    """What dask-ml's searches get as their scheduler: `client.get`, as a plain function, that
    keeps every finished fit in `saved` as it arrives and does not run the fits already there.

    Handed the Client itself, dask-ml retries a fit that raised, for ever: a search with
    error_score="raise" whose fit fails never ends (and keeps its nodes busy). Handed a function,
    it calls it as it would dask's own: the first error ends the search, and the futures
    released end its other fits. A lost worker's fits are still computed again by the scheduler,
    as for any task. dask-ml's task keys hash the estimator, the candidate, the split and the data,
    so they serve as the fits' keys."""
    from distributed import as_completed
    from distributed.utils_comm import pack_data

    def get(graph, keys, **options):
        options.pop("num_workers", None)  # dask's local schedulers' option
        graph = dict(graph)
        fits = [key for key in graph if DASK_ML_FIT.search(str(key))]
        todo = [key for key in fits if str(key) not in saved]
        for key in fits:
            if str(key) in saved:
                # Still a task, returning the saved result at once (the fit counter counts it once).
                graph[key] = data_node(key, saved.take(str(key)))
        wanted = list(dict.fromkeys([*_flat(keys), *todo]))
        scheduler = client.scheduler_info().get("id")
        sent = client.get(graph, wanted, sync=False, allow_other_workers=True, **options)
        futures = dict(zip(wanted, sent, strict=True))
        # Results are gathered here, not by as_completed (with_results): its tracking task, failing
        # on a lost connection, kept a future in its traceback until Python's cycle collector ran,
        # and that future's task on the new scheduler.
        completed = as_completed([futures[key] for key in todo])
        while not completed.is_empty():
            batch = completed.next_batch(block=False)
            # Not cancelled (a lost scheduler) nor failed: the last gather raises for those.
            if finished := [future for future in batch if future.status == "finished"]:
                for future, value in zip(finished, client.gather(finished), strict=True):
                    saved.save(str(future.key), value)
            if not batch:
                _check_same_scheduler(client, scheduler)
                time.sleep(COLLECT_SECONDS)
        return pack_data(keys, client.gather({key: futures[key] for key in _flat(keys)}))

    return get


def _flat(keys) -> list:
    """The task keys in dask's nested list of keys (a key itself may be a tuple)."""
    return [key for part in keys for key in _flat(part)] if isinstance(keys, list) else [keys]
