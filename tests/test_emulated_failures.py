"""Nodes that cannot finish booting, on the emulated deploy (tests/emulated/harness.py): each
says why in its log, powers off once, and its user-data exits non-zero with no later step run.
"""

from __future__ import annotations

import re

import pytest

from .conftest import EMULATED_MAX_WAIT_SECONDS
from .emulated.harness import EmulatedDeploy

pytestmark = pytest.mark.slow


def later_steps(node) -> list[list[str]]:
    """Calls a node makes only once its bootstrap has succeeded."""
    return [c for c in node.calls() if c[:2] == ["docker", "run"] or c[-1:] == ["watch"]]


def test_failed_bootstrap_step_stops_the_node_once_and_fails_the_script(emulated_stack, tmp_path):
    settings, document = emulated_stack
    # The image was never pushed (the scheduler's pull fails) and the worker's key was never
    # stored in SSM (the worker's TLS fetch fails).
    broken = {"worker/worker.key": ""}
    with EmulatedDeploy(settings, document, tmp_path, push_image=False, tls_overrides=broken) as deploy:
        scheduler, worker = deploy.boot("scheduler"), deploy.boot("worker")
        for node in (scheduler, worker):
            node.wait_powered_off(EMULATED_MAX_WAIT_SECONDS + 60)
        desired = deploy.desired_capacity()

    assert f"gave up on image pull after {EMULATED_MAX_WAIT_SECONDS} s" in scheduler.log()
    assert "manifest unknown" in scheduler.log(), "docker's reason is in the log"
    assert f"gave up on TLS material in SSM after {EMULATED_MAX_WAIT_SECONDS} s" in worker.log()
    assert "ParameterNotFound" in worker.log(), "the AWS CLI's reason is in the log"
    for node in (scheduler, worker):
        assert "stopping this node: bootstrap failed" in node.log()
        assert node.calls().count(["systemctl", "poweroff"]) == 1, node.name
        assert node.user_data_exit() == 1, f"{node.name}: user-data must fail after a failed step"
        assert later_steps(node) == [], node.name
        assert not re.search(r"(scheduler|worker) up", node.log())
    assert desired == 0, "a scheduler that cannot boot ends the cluster: the worker group goes to 0"


@pytest.mark.parametrize("role", ["scheduler", "worker"])
def test_crash_looping_dask_is_reported_as_such_not_as_up(emulated_stack, tmp_path, role):
    """A key Dask cannot load: the container exits at every start until docker gives up."""
    settings, document = emulated_stack
    broken = {f"{role}/{role}.key": "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"}
    with EmulatedDeploy(settings, document, tmp_path, tls_overrides=broken) as deploy:
        scheduler = deploy.boot("scheduler")
        if role == "worker":
            scheduler.wait_until(lambda: "scheduler up" in scheduler.log(), 300, "scheduler up")
            node = deploy.boot("worker")
        else:
            node = scheduler
        node.wait_powered_off(180)

    log = node.log()
    container = f"dask-{role}"
    assert f"{role} up" not in log
    assert re.search(
        rf"Dask {role} is not up: container {container} exited, exit code [1-9]\d*, 5 restart\(s\)", log
    ), log
    assert "  | " in log, "the container's last output is in the log"
    assert f"stopping this node: the Dask {role} did not " in log
    assert node.container(container)["restarts"] == 5
    assert node.calls().count(["systemctl", "poweroff"]) == 1
    assert node.user_data_exit() == 1
    assert [c for c in later_steps(node) if container not in c] == [], "nothing started after it"
