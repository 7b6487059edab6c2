"""An experiment's command line (experiments/spotsearch/cluster/cli.py): exit status, the collector at startup,
and what a user can get wrong, in one line with exit status 2 and no traceback."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spotsearch.cluster import cli
from spotsearch.cluster.connect import connect
from spotsearch.cluster.messages import ClusterError

from .experiment_runs import (
    ROOT,
    SCRIPT,
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


PIPELINE = ROOT / "experiments" / "pipeline_search.py"
OUTPUTS = {
    "scheduler_address": "tls://127.0.0.1:8786",
    "dashboard_url": "https://127.0.0.1:8787/status",
    "workers": 1,
    "tls_ca_pem": "-----BEGIN CERTIFICATE-----",
    "tls_client_cert_pem": "-----BEGIN CERTIFICATE-----",
    "tls_client_key_pem": "-----BEGIN PRIVATE KEY-----",
}
# (command line, what the outputs file holds if any, what the one line says). {dir} is the
# test's folder, which also holds a file named `file`.
BAD_COMMAND_LINES = [
    (["--timeout", "-5"], None, "argument --timeout: must be a number of seconds above 0 and at most 604800, got '-5'"),
    (["--timeout", "nan"], None, "argument --timeout: must be a number of seconds above 0"),
    (["--stack", "dask", "--timeout", "1e308"], None, "got '1e308'"),
    (["--timeout", "soon"], None, "got 'soon'"),
    (["--workers", "-1"], None, "argument --workers: must be a whole number of at least 0, got '-1'"),
    (["--workers", "1.5"], None, "argument --workers: must be a whole number of at least 0, got '1.5'"),
    (["--seed", "-1"], None, "argument --seed: must be a whole number from 0 to 4294967295, got '-1'"),
    (["--seed", "4294967296"], None, "got '4294967296'"),
    (["--scheduler", "tls://"], None, "argument --scheduler: must be tls://HOST:PORT"),
    (["--scheduler", "tls://203.0.113.7"], None, "got 'tls://203.0.113.7'"),
    (["--scheduler", "tls://[::1"], None, "got 'tls://[::1'"),
    (["--scheduler", "tcp://203.0.113.7:8786"], None, "got 'tcp://203.0.113.7:8786'"),
    (["--scheduler", "tls://203.0.113.7:99999"], None, "got 'tls://203.0.113.7:99999'"),
    (["--scheduler", "tls://" + "a" * 1000], None, "(1008 chars)"),
    (["--processes", "0"], None, "argument --processes: must be a whole number from 1 to 256, got '0'"),
    (["--processes", "2", "--stack", "dask"], {"dask": OUTPUTS}, "processes (--processes): only for the local cluster"),
    (["--results", ""], None, "argument --results: must name a folder, got ''"),
    # (the value itself is echoed first, shortened past 80 characters, as a long tmp folder makes it)
    (["--results", "{dir}/file"], None, "{dir}/file is not a folder"),
    (["--results", "{dir}/file/runs"], None, "{dir}/file is not a folder"),
    (["--engine", "spark"], None, "argument --engine: invalid choice: 'spark'"),
    (["--bogus"], None, "unrecognized arguments: --bogus"),
    (["--stack", "dask", "--outputs", "{dir}"], None, "{dir}: not a file"),
    (["--stack", "dask"], {"dask": "tls://127.0.0.1:8786"}, "stack 'dask' must be an object of outputs, got 'tls://"),
    (["--stack", "dask"], {"dask": {**OUTPUTS, "workers": "abc"}}, "output 'workers' must be a whole number of at least 0, got 'abc'"),
    (["--stack", "dask"], {"dask": {**OUTPUTS, "dashboard_url": ["x"]}}, "output 'dashboard_url' must be an https:// URL, got ['x']"),
    (["--stack", "dask"], {"dask": {**OUTPUTS, "scheduler_address": "http://x"}}, "output 'scheduler_address' must be tls://HOST:PORT"),
    (["--stack", "dask"], {"dask": {**OUTPUTS, "tls_ca_pem": 5}}, "output 'tls_ca_pem' must be a PEM text, got 5"),
    (["--stack", "dask"], {"dask": {**OUTPUTS, "max_workers": -2}}, "output 'max_workers' must be a whole number"),
    (["--resume", "nothing-here"], None, "--resume: nothing-here is not a run with saved fits"),
    ([PIPELINE, "--samples", "50"], None, "argument --samples: must be a whole number of at least 100, got '50'"),
    ([PIPELINE, "--samples", "10000000", "--features", "100000"], None, "--samples 10000000 x --features 100000: the data needs about"),
    ([PIPELINE, "--candidates", "100000000000"], None, "--candidates 100000000000: their parameters and results need about"),
    ([PIPELINE, "--features", "0"], None, "argument --features: must be a whole number of at least 2, got '0'"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "outputs", "message"), BAD_COMMAND_LINES, ids=lambda v: str(v)[:60])
def test_every_bad_value_is_one_line_before_anything_starts_or_is_written(tmp_path, args, outputs, message):
    (tmp_path / "file").write_text("a file, not a folder\n")
    if outputs is not None:
        (tmp_path / "outputs.json").write_text(json.dumps(outputs))
        (tmp_path / "outputs.json").chmod(0o600)
    before = sorted(tmp_path.rglob("*"))
    script, args = (args[0], args[1:]) if isinstance(args[0], Path) else (SCRIPT, args)
    args = [arg.replace("{dir}", str(tmp_path)) for arg in args]
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert_one_line_error(run, message.replace("{dir}", str(tmp_path)))
    assert len(run.stderr) < 400, "a long value is shortened"
    assert sorted(tmp_path.rglob("*")) == before, "nothing written"
    assert time.monotonic() - started < 60, "refused before any cluster started"
