"""What counts as use of a cluster (image/dask_node/idle_shutdown.py), rule by rule, on a stand-in
scheduler and clock. The real scheduler process is tested in test_node_lifecycle.py."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from dask_node import idle_shutdown

IDLE, GRACE = 60.0, 300.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts():
    closed = []
    scheduler = SimpleNamespace(
        workers={}, clients={"fire-and-forget": object()}, idle_since=1.0,
        close=lambda reason: closed.append(reason),
        _ongoing_background_tasks=SimpleNamespace(call_soon=lambda f, **kw: f(**kw)),
    )  # fmt: skip
    clock = Clock()
    monitor = idle_shutdown.IdleShutdown(scheduler, IDLE, GRACE, None, clock=clock)
    return scheduler, clock, monitor, closed


def advance(clock, monitor, seconds: float, step: float = 1.0) -> None:
    for _ in range(int(seconds / step)):
        clock.now += step
        monitor.check()


def test_closes_after_the_idle_time_once_a_worker_has_joined(parts):
    scheduler, clock, monitor, closed = parts
    scheduler.workers = {"tls://10.0.0.5:1234": object()}
    advance(clock, monitor, IDLE - 2)
    assert closed == []
    advance(clock, monitor, 3)
    assert closed == ["cluster-idle"]
    advance(clock, monitor, 10)
    assert closed == ["cluster-idle"], "closes once"


@pytest.mark.parametrize(
    "use, reason",
    [
        (lambda s: setattr(s, "idle_since", None), "tasks are running"),
        (lambda s: s.clients.update({"Client-5e2f-11f1": object()}), "1 client(s) connected"),
    ],
)
def test_tasks_or_a_connected_client_keep_the_cluster(parts, use, reason):
    scheduler, clock, monitor, closed = parts
    scheduler.workers = {"w": object()}
    use(scheduler)
    assert monitor.in_use() == reason
    advance(clock, monitor, 10 * IDLE, step=10)
    assert closed == []


def test_clients_that_tasks_open_on_workers_are_not_users(parts):
    scheduler, clock, monitor, closed = parts
    scheduler.workers = {"w": object()}
    scheduler.clients["Client-worker-4a402096-e9fc-11f1"] = object()
    assert monitor.in_use() is None
    advance(clock, monitor, IDLE + 1)
    assert closed == ["cluster-idle"]


def test_the_idle_time_counts_from_the_last_use(parts):
    scheduler, clock, monitor, closed = parts
    scheduler.workers = {"w": object()}
    advance(clock, monitor, IDLE - 5)
    scheduler.idle_since = None  # a search runs
    advance(clock, monitor, 20)
    scheduler.idle_since = clock.now
    advance(clock, monitor, IDLE - 5)
    assert closed == []
    advance(clock, monitor, 6)
    assert closed == ["cluster-idle"]


def test_a_running_jupyterlab_keeps_the_cluster(parts):
    scheduler, clock, _, closed = parts
    scheduler.workers = {"w": object()}
    with socket.socket() as jupyter:
        jupyter.bind(("127.0.0.1", 0))
        jupyter.listen()
        monitor = idle_shutdown.IdleShutdown(scheduler, IDLE, GRACE, jupyter.getsockname()[1], clock=clock)
        assert monitor.in_use() == "JupyterLab is running"
        advance(clock, monitor, 2 * IDLE, step=10)
        assert closed == []
    advance(clock, monitor, IDLE + 1)  # JupyterLab stopped itself: the idle time runs
    assert closed == ["cluster-idle"]


def test_before_the_first_worker_the_boot_grace_applies_then_the_idle_time(parts):
    _, clock, monitor, closed = parts
    assert monitor.in_use() == "waiting for the first worker"
    advance(clock, monitor, GRACE - 1)
    assert closed == []
    advance(clock, monitor, IDLE + 2)
    assert closed == ["cluster-idle"], "workers that never come do not keep a cluster forever"


def test_a_worker_that_joined_and_left_does_not_restart_the_grace(parts):
    scheduler, clock, monitor, closed = parts
    scheduler.workers = {"w": object()}
    monitor.check()
    scheduler.workers = {}
    advance(clock, monitor, IDLE + 1)
    assert closed == ["cluster-idle"]
