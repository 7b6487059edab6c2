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
import time
from pathlib import Path

import pytest
from distributed import Client
from distributed.comm import connect
from distributed.protocol.serialize import ToPickle
from distributed.security import Security

from dask_node import cost_cap

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
    from spotsearch.cluster.forwarder import client_context

    from .gateway_probes import files, http_get, refused

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


# --- what a worker's key sends, and what the scheduler hands on ---


async def fake_worker(cluster, address: str, **extra):
    """A connection registered as a worker at `address` (on the peer's own host), as a task
    holding its worker's key could open one; its comm, or the error the registration raised."""
    with cluster.client() as client:
        (real,) = [info for info in client.scheduler_info(n_workers=-1)["workers"].values() if info["name"] != "fake"]
        versions = client.get_versions()["scheduler"]
    comm = await connect(cluster.address, **security(cluster, "worker").get_connection_args("client"))
    await comm.write({
        "op": "register-worker", "reply": False, "address": address, "status": "running", "nthreads": 1,
        "name": "fake", "now": time.time(), "resources": {}, "memory_limit": 0, "local_directory": "/tmp",
        "services": {}, "nanny": None, "pid": os.getpid(), "versions": versions, "metrics": real["metrics"],
        "extra": extra, "stimulus_id": "fake-registration", "server_id": f"fake-{address}",
    })  # fmt: skip
    try:
        reply = await asyncio.wait_for(comm.read(), 30)
    except Exception as error:
        comm.abort()
        return error
    assert reply["status"] == "OK", reply
    return comm


def worker_statuses(cluster) -> dict[str, str]:
    with cluster.client() as client:
        return {address: info["status"] for address, info in client.scheduler_info(n_workers=-1)["workers"].items()}


def real_worker(cluster) -> str:
    (address,) = [address for address in worker_statuses(cluster) if "127.0.0.2" in address]
    return address


async def until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout:g} s"
        await asyncio.sleep(0.1)


def test_a_worker_key_cannot_leave_a_pickle_for_the_scheduler_to_hand_on(cluster, tmp_path):
    """The scheduler keeps a pickle it does not load and hands it on: to the worker autoscaler's
    and the laptop's `identity` calls, to every client. Refused; the plain control registers."""
    from distributed.protocol.serialize import to_serialize

    loaded = tmp_path / "loaded"
    refused = asyncio.run(fake_worker(cluster, "tls://127.0.0.9:40001", note=to_serialize(MakesFolder(str(loaded)))))
    assert isinstance(refused, OSError), refused
    with cluster.client() as client:  # a Client loads what the scheduler hands on: nothing of it
        assert "tls://127.0.0.9:40001" not in client.scheduler_info(n_workers=-1)["workers"]
    assert not loaded.exists()
    assert "a Serialized in 'register-worker' (extra)" in scheduler_log(cluster)

    async def control() -> dict:
        comm = await fake_worker(cluster, "tls://127.0.0.9:40002", note="plain text")
        try:
            with cluster.client() as client:
                return client.scheduler_info(n_workers=-1)["workers"]["tls://127.0.0.9:40002"]
        finally:
            comm.abort()

    assert asyncio.run(control())["name"] == "fake"


def test_a_worker_stream_speaks_only_for_its_own_worker(cluster):
    """distributed merges a stream message over the stream's worker: `worker` in it would act
    on another. Refused; the same message about itself goes through (the control)."""
    other = real_worker(cluster)

    async def pause(fake: str, target: str, handled) -> dict[str, str]:
        comm = await fake_worker(cluster, fake)
        try:
            await comm.write([{"op": "worker-status-change", "status": "paused", "worker": target, "stimulus_id": "t"}])
            await until(handled, "the scheduler's answer to the stream message")
            return worker_statuses(cluster)
        finally:
            comm.abort()

    refusal = f"'worker-status-change' about {other} on the stream of tls://127.0.0.9:40003"
    assert (
        asyncio.run(pause("tls://127.0.0.9:40003", other, lambda: refusal in scheduler_log(cluster)))[other]
        == "running"
    )
    itself = "tls://127.0.0.9:40004"
    paused = asyncio.run(pause(itself, itself, lambda: worker_statuses(cluster).get(itself) == "paused"))
    assert paused[itself] == "paused"


@pytest.mark.parametrize("topic", ["print", "warn", cost_cap.TOPIC])
def test_a_worker_key_cannot_send_the_events_a_client_acts_on(cluster, topic):
    """A Client prints `print` events on the terminal and unpickles `warn` ones; a search ends
    when the cost cap's say the cluster has ended."""
    reply = asyncio.run(request(cluster, "worker", {"op": "log_event", "topic": topic, "msg": {"args": ("\x1b]0;x",)}}))
    assert isinstance(reply, OSError), reply
    assert f"an event on topic ['{topic}']" in scheduler_log(cluster)
    reply = asyncio.run(request(cluster, "worker", {"op": "log_event", "topic": f"notes-{topic}", "msg": "kept"}))
    assert not isinstance(reply, Exception), reply
    with cluster.client() as client:  # the control: another topic is logged
        assert [message for _, message in client.get_events(f"notes-{topic}")] == ["kept"]


def test_a_tasks_print_event_is_dropped_and_its_other_events_arrive(cluster, capsys):
    def print_and_note() -> int:  # made here: it travels by value, as a script's function does
        from distributed import get_worker
        from distributed import print as dask_print

        dask_print("printed from a task")
        get_worker().log_event("task-notes", "noted from a task")
        return 1

    with cluster.client() as client:
        assert client.submit(print_and_note, pure=False).result(timeout=120) == 1
        deadline = time.monotonic() + 30
        while not client.get_events("task-notes") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [message for _, message in client.get_events("task-notes")] == ["noted from a task"]
        assert not client.get_events("print")
    assert "printed from a task" not in capsys.readouterr().out
    assert "dropped an event on topic ['print']" in scheduler_log(cluster)


def test_the_nodes_daemons_and_the_laptops_meter_unpickle_nothing_the_scheduler_hands_on(tmp_path):
    """On a scheduler without the preload, a worker leaves a pickle in its `extra`: a Client's
    `scheduler_info` loads it (the control); the autoscaler's rpc and the node meter do not."""
    from distributed import Client, LocalCluster
    from distributed.protocol.serialize import to_serialize

    from dask_node import tls
    from spotsearch.cluster.waiting import worker_nodes

    loaded = tmp_path / "loaded"

    async def leave_a_pickle(address: str, path: Path):
        comm = await connect(address)
        await comm.write({
            "op": "register-worker", "reply": False, "address": "tcp://127.0.0.9:40005", "status": "running",
            "nthreads": 1, "name": "fake", "now": time.time(), "resources": {}, "memory_limit": 0,
            "local_directory": "/tmp", "services": {}, "nanny": None, "pid": os.getpid(), "versions": {},
            "metrics": {}, "extra": {"note": to_serialize(MakesFolder(str(path)))}, "stimulus_id": "fake",
            "server_id": "fake",
        })  # fmt: skip
        return comm

    async def through_the_daemons_rpc(address: str):
        async with tls.scheduler_rpc(address, None) as scheduler:
            return await scheduler.identity(n_workers=-1)

    with (
        LocalCluster(n_workers=0, processes=False, protocol="tcp", dashboard_address=None) as local,
        Client(local) as client,
    ):
        comm = client.sync(leave_a_pickle, local.scheduler_address, loaded)
        with pytest.raises(TypeError, match="only able to deserialize data with \\['msgpack'\\]"):
            asyncio.run(through_the_daemons_rpc(local.scheduler_address))
        with pytest.raises(TypeError, match="only able to deserialize data with \\['msgpack'\\]"):
            worker_nodes(client)
        assert not loaded.exists()
        client.scheduler_info(n_workers=-1)
        assert loaded.exists(), "the control: a Client loads what the scheduler hands on"
        comm.abort()
