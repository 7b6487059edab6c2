"""Connecting (experiments/spotsearch/cluster/connect.py): a local cluster on loopback only, the collector."""

from __future__ import annotations

import gc

from spotsearch.cluster.connect import connect


def test_local_cluster_listens_on_loopback_only():
    """A laptop's cluster runs any code sent to it: nothing may listen beyond loopback."""
    import psutil

    with connect() as (client, where):
        listening = [c.laddr for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert client.submit(sum, [1, 2]).result() == 3
    assert listening, "the dashboard should be listening"
    assert all(address.ip == "127.0.0.1" for address in listening), listening
    assert where.kind == "local" and where.dashboard.startswith("http://127.0.0.1:")


def test_connect_leaves_the_collector_of_a_caller_that_runs_it_alone():
    """A notebook keeps its collector as it was: nothing it holds is frozen out of collection."""
    frozen = gc.get_freeze_count()
    with connect():
        assert gc.isenabled()
    assert gc.get_freeze_count() == frozen


def test_the_local_workers_heartbeat_at_close_is_not_reported_and_other_warnings_are(caplog):
    """The in-process worker's heartbeat can only fail as it closes with its scheduler (seen on a
    busy machine: a traceback under a run that went well); any other warning still shows."""
    import logging

    worker_log = logging.getLogger("distributed.worker")
    with connect(timeout=60):
        worker_log.warning("Failed to communicate with scheduler during heartbeat.")
        worker_log.warning("Worker is at 85% memory usage.")
    worker_log.warning("Failed to communicate with scheduler during heartbeat.")  # after: not ours to hide
    said = [record.getMessage() for record in caplog.records if record.name == "distributed.worker"]
    assert said.count("Failed to communicate with scheduler during heartbeat.") == 1
    assert "Worker is at 85% memory usage." in said
