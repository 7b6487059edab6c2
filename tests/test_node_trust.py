"""The scheduler's trust in its peers (image/dask_node/trust.py), with real processes on loopback.

The cluster runs the nodes' own command lines. Each refusal has its control: the same request
made with the client's certificate does what Dask does without the check, so a test fails if
the check is gone, not only if the request is malformed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from distributed import Client
from distributed.comm import connect
from distributed.protocol.serialize import ToPickle
from distributed.security import Security

from . import loopback_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = loopback_cluster.start(tmp_path_factory.mktemp("trust"), workers=("127.0.0.2",))
    try:
        with cluster.client(wait_for_nodes=1) as client:
            assert client.submit(sum, [1, 2]).result(timeout=120) == 3  # the control: workers work
        yield cluster
    finally:
        cluster.stop()


def security(cluster, role: str) -> Security:
    folder = cluster.tls_dir
    return Security(tls_ca_file=str(folder / "ca.pem"), tls_client_cert=str(folder / f"{role}.pem"),
                    tls_client_key=str(folder / f"{role}.key"), require_encryption=True)  # fmt: skip


def scheduler_log(cluster) -> str:
    return (cluster.logs / "scheduler.log").read_text()


class MakesFolder:
    """Unpickling this makes a folder: proof that the scheduler loaded it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


async def request(cluster, role: str, message: dict):
    """One raw request to the scheduler with `role`'s certificate: its reply, or the error raised."""
    comm = await connect(cluster.address, **security(cluster, role).get_connection_args("client"))
    try:
        await comm.write(message)
        return await asyncio.wait_for(comm.read(), 30)
    except Exception as error:
        return error
    finally:
        comm.abort()


def read(path: str) -> str:
    with open(path) as file:
        return file.read()


def test_a_task_cannot_run_code_in_the_scheduler(cluster):
    """A task's own client (get_client) would carry the worker's certificate: refused."""

    key = str(cluster.tls_dir / "scheduler.key")

    def read_scheduler_key():
        from distributed import get_client

        return get_client(timeout=20).run_on_scheduler(read, key)

    with cluster.client() as client:
        with pytest.raises(Exception) as refused:
            client.submit(read_scheduler_key, pure=False).result(timeout=120)
        assert "PRIVATE KEY" not in str(refused.value)
        # The control: the user's own client may (what the check keeps from workers).
        assert "PRIVATE KEY" in client.run_on_scheduler(read, key)
    assert "refused and disconnected" in scheduler_log(cluster)


def test_the_worker_key_is_not_a_client(cluster):
    with pytest.raises(OSError):
        Client(cluster.address, security=security(cluster, "worker"), timeout="10s")
    with Client(cluster.address, security=security(cluster, "client"), timeout="30s") as client:
        assert client.scheduler_info()["workers"]


def test_the_scheduler_loads_no_pickle_from_a_worker_key(cluster, tmp_path):
    refused_folder, control_folder = tmp_path / "from-worker", tmp_path / "from-client"
    reply = asyncio.run(
        request(cluster, "worker", {"op": "who_has", "keys": ToPickle(MakesFolder(str(refused_folder)))})
    )
    assert isinstance(reply, OSError)
    assert not refused_folder.exists()
    asyncio.run(request(cluster, "client", {"op": "who_has", "keys": ToPickle(MakesFolder(str(control_folder)))}))
    assert control_folder.exists(), "the control failed: Dask no longer loads pickles sent to the scheduler"
    assert "a pickled object from" in scheduler_log(cluster)


@pytest.mark.parametrize(
    "message",
    [
        {"op": "run_function", "function": b"", "wait": True},
        {"op": "register-worker", "address": "tls://10.1.2.3:40000", "nanny": None},
        {"op": "retire_workers", "names": ["i-0123456789abcdef0-0"]},
        {"op": "heartbeat_worker", "address": "tls://10.1.2.3:40000"},
    ],
    ids=["run a function", "register another host's worker", "retire workers by name", "another host's heartbeat"],
)
def test_a_worker_key_asks_only_what_workers_ask_about_its_own_host(cluster, message):
    reply = asyncio.run(request(cluster, "worker", dict(message)))
    assert isinstance(reply, OSError), reply
    assert "refused and disconnected" in scheduler_log(cluster)
    with cluster.client() as client:  # nothing changed: the same worker, and no stranger
        assert [w["host"] for w in client.scheduler_info()["workers"].values()] == ["127.0.0.2"]


def test_the_gateway_serves_only_the_client_certificate(cluster):
    from experiments.cluster.forwarder import client_context

    from .test_node_gateway import files, http_get, refused

    for role in ("worker", "scheduler"):
        assert refused(cluster.gateway_port, client_context(*files(cluster.tls_dir, role)))
    assert http_get(cluster.gateway_port, client_context(*files(cluster.tls_dir))).startswith(b"HTTP/1.1 ")


def in_a_process_of_its_own(code: str) -> None:
    """Run `code` where importing the preload (which installs it) changes nothing of the tests'."""
    result = subprocess.run([sys.executable, "-c", code], env=loopback_cluster.node_environment(),
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.stdout.strip() == "ok", result.stderr


def test_every_message_a_worker_sends_is_allowed():
    """Against distributed's own list of what a worker's state machine sends the scheduler: an
    upgrade that adds one fails here, not as a worker the scheduler disconnects mid-search."""
    in_a_process_of_its_own("""
from distributed.worker_state_machine import SendMessageToScheduler
from dask_node import trust

def every(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from every(sub)

sent = {sub.op for sub in every(SendMessageToScheduler)} | {"keep-alive", "log-event", "worker-status-change"}
missing = sent - trust.STREAM
assert len(sent) > 8 and not missing, missing
print("ok")
""")


def test_a_workers_error_reply_reaches_the_scheduler_as_text_only(tmp_path):
    """The scheduler would unpickle the exception in a worker's error reply: it gets a new one,
    made from the reply's text, and the worker's pickle is never loaded."""
    in_a_process_of_its_own(f"""
import os, pickle
from distributed.protocol import pickle as dask_pickle
from dask_node import trust

class MakesFolder:
    def __reduce__(self):
        return os.mkdir, ({str(tmp_path / "loaded")!r},)

reply = {{"status": "uncaught-error", "exception": pickle.dumps(MakesFolder()), "traceback": pickle.dumps(MakesFolder()),
         "exception_text": "boom", "traceback_text": "..."}}
rebuilt = trust._reply_text_only(reply)
error = dask_pickle.loads(rebuilt["exception"])
assert isinstance(error, RuntimeError) and str(error) == "boom", error
assert not os.path.exists({str(tmp_path / "loaded")!r})
assert trust._reply_text_only({{"status": "OK", "result": 1}}) == {{"status": "OK", "result": 1}}
print("ok")
""")
