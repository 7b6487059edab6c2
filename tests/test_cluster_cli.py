"""An experiment's command line (experiments/cluster/cli.py): exit status, the collector at startup,
and what a user can get wrong, in one line with exit status 2 and no traceback."""

from __future__ import annotations

import gc

import pytest

from experiments.cluster import cli
from experiments.cluster.connect import connect
from experiments.cluster.messages import ClusterError

from .experiment_runs import (
    assert_one_line_error,
    run_experiment,
)


@pytest.mark.parametrize("outcome", ["success", "user error"])
def test_run_starts_without_the_garbage_collector_and_connect_turns_it_back_on(outcome):
    seen = {}
    frozen_when_connected: list[int] = []
    made_after_connecting: list[object] = []

    def main():
        seen["starting"] = gc.isenabled()
        with connect():
            seen["connected"] = gc.isenabled()
        frozen_when_connected.append(gc.get_freeze_count())
        made_after_connecting.extend([] for _ in range(1000))  # tracked by the collector, alive at exit
        if outcome == "user error":
            raise ClusterError("something the user can fix")
        return 0

    try:
        with pytest.raises(SystemExit) as exited:
            cli.run(main)
        frozen_at_exit = gc.get_freeze_count()
    finally:
        gc.unfreeze()
    assert exited.value.code == (0 if outcome == "success" else 2)
    assert seen == {"starting": False, "connected": True}
    assert gc.isenabled()
    assert frozen_at_exit >= frozen_when_connected[0] + len(made_after_connecting), "the heap is frozen at exit"


def test_missing_tls_files_with_a_scheduler_address(tmp_path):
    run = run_experiment("--scheduler", "tls://127.0.0.1:8786", "--tls-ca", "ca.pem", cwd=tmp_path)
    assert_one_line_error(run, "--tls-cert, --tls-key: required with the other TLS options")
