"""Connecting (experiments/spotsearch/cluster/connect.py): a local cluster on loopback only, the collector."""

from __future__ import annotations

import gc
import re
from pathlib import Path

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
    """A notebook keeps its collector as it was: nothing it holds is frozen out of collection.
    (Nothing frozen to start with: a frozen object that an earlier test left and that is freed
    meanwhile would lower the count.)"""
    gc.unfreeze()
    with connect():
        assert gc.isenabled()
    assert gc.get_freeze_count() == 0


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


def test_a_local_cluster_is_what_dask_clusters_are_to_a_client():
    """`Client(Cluster())` as with dask's own clusters: its address, its link; closing the
    client leaves the cluster, closing the cluster ends it."""
    from distributed import Client

    from spotsearch import Cluster

    with Cluster() as cluster:
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2]).result() == 3
            assert client.dashboard_link == cluster.dashboard_link
            assert client.dashboard_link.startswith("http://127.0.0.1:")
            assert cluster.security is None
        assert cluster.get_client().submit(sum, [3, 4]).result() == 7, "the client's close left the cluster"
        assert repr(cluster).startswith("<Cluster: local, scheduler ")
    assert cluster.status.name == "closed"
    assert cluster.get_client().status == "closed"


def test_a_deployed_cluster_gives_a_client_its_tls_and_the_forwarded_dashboard(loopback, tmp_path):
    from distributed import Client

    from spotsearch import Cluster

    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    with Cluster(stack="loopback", outputs=outputs, timeout=60) as cluster, Client(cluster) as client:
        assert client.scheduler.address == loopback.address
        assert client.security is cluster.security and client.security.require_encryption
        assert client.dashboard_link == cluster.dashboard_link
        # The local forwarder, on a loopback address of its own, not the node's gateway.
        assert re.match(r"http://127\.\d+\.\d+\.\d+:\d+/", client.dashboard_link), client.dashboard_link
        assert client.submit(sum, [1, 2]).result() == 3
        assert cluster.where.stack == "loopback" and cluster.where.worker_nodes == 2
    key = cluster.security.tls_client_key
    assert key and not Path(key).exists(), "the private TLS files written for the connection are gone with it"


def test_a_cluster_that_cannot_be_reached_leaves_nothing_open(tmp_path):
    import threading

    from spotsearch import Cluster, ClusterError

    threads = set(threading.enumerate())
    try:
        Cluster(stack="dask", outputs=tmp_path / "outputs.json")
    except ClusterError as error:
        assert str(error).startswith(f"{tmp_path / 'outputs.json'}: not found (looked for ")
    else:
        raise AssertionError("a missing outputs file must be refused")
    assert set(threading.enumerate()) <= threads


def test_local_worker_processes_listen_on_loopback_only_and_are_gone_after():
    import psutil
    from distributed import Client

    from spotsearch import Cluster

    with Cluster(processes=2) as cluster, Client(cluster) as client:
        pids = set(client.run(__import__("os").getpid).values())
        assert len(pids) == 2 and __import__("os").getpid() not in pids, "two worker processes of their own"
        assert set(client.run(lambda dask_worker: dask_worker.state.nthreads).values()) == {1}
        # glibc's own allocator settings (Dask's trim threshold slowed fits down), Dask's thread limits.
        environ = client.run(
            lambda: {k: __import__("os").environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}
        )
        assert list(environ.values()) == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}] * 2
        assert __import__("dask").config.get("distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"), (
            "Dask's own setting is left as it was for everything else"
        )
        listening = [
            connection.laddr
            for pid in pids
            for connection in psutil.Process(pid).net_connections(kind="inet")
            if connection.status == psutil.CONN_LISTEN
        ]
        assert listening and all(address.ip == "127.0.0.1" for address in listening), listening
        assert cluster.where.threads == 2
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


def worker_environment(client) -> list[dict]:
    names = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")
    return list(client.run(lambda: {name: __import__("os").environ.get(name) for name in names}).values())


def test_local_worker_processes_keep_glibcs_allocator_settings_and_dasks_thread_limits(monkeypatch):
    """Dask's trim threshold slowed fits down (docs/speed.md): not set in the workers, not even
    when an earlier Dask nanny left it in this process's environment (as Dask's nannies do); a
    value of the user's own is passed on (the control); Dask's setting stays for everything else."""
    import os

    import dask
    from distributed import Client

    from spotsearch import Cluster

    dasks = str(dask.config.get("distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"))
    for inherited, expected in ((None, None), (dasks, None), ("131072", "131072")):
        if inherited is None:
            monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
        else:
            monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", inherited)
        with Cluster(processes=2) as cluster, Client(cluster) as client:
            assert worker_environment(client) == [{"MALLOC_TRIM_THRESHOLD_": expected, "OMP_NUM_THREADS": "1"}] * 2
        assert os.environ.get("MALLOC_TRIM_THRESHOLD_") == inherited, "this process's environment as it was"
    assert dask.config.get("distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_") == int(dasks)
