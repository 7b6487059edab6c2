"""A lost scheduler, told apart from a search's own errors, and waited for until it is back."""

from __future__ import annotations

import time
from contextlib import suppress

from spotsearch.cluster.messages import ClusterError, console
from spotsearch.cluster.waiting import Heartbeat


def scheduler_lost(client, error: BaseException, scheduler_id: str | None) -> bool:
    """Whether `error` ended the search because the client lost its scheduler (its process, its
    node or the network), rather than a problem of the search's own: never for an error a fit
    raised (an OSError of the user's, say) while the scheduler it ran on is still there."""
    from distributed.client import FutureCancelledError
    from distributed.comm import CommClosedError

    if isinstance(error, (KeyboardInterrupt, SystemExit, ClusterError)) or client.status in ("closing", "closed"):
        return False
    if client.status != "running":  # reconnecting
        return True
    if isinstance(error, FutureCancelledError):
        return "connection-lost" in str(error)
    if isinstance(error, CommClosedError):
        return True
    return isinstance(error, OSError) and identity(client).get("id") != scheduler_id  # a new one, or none


def identity(client) -> dict:
    """What the scheduler the client reaches now says of itself (a new scheduler has a new id);
    empty when there is none to ask."""
    with suppress(OSError, TimeoutError):
        return client.sync(client.scheduler.identity)
    return {}


def reconnected(client, timeout: float) -> None:
    """Wait, saying so, for the client to be connected again to a scheduler with a worker;
    ClusterError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    console(f"lost the connection to the scheduler at {client.scheduler.address}; waiting up to {timeout:g} s for it")
    waiting = Heartbeat("waiting for the scheduler and a worker", deadline)
    while not (client.status == "running" and identity(client).get("workers")):
        if client.status in ("closing", "closed") or time.monotonic() > deadline:
            raise ClusterError(f"the scheduler at {client.scheduler.address} did not come back within {timeout:g} s")
        waiting.beat()
        time.sleep(0.5)
    console("reconnected: the search goes on with the fits not yet finished")
