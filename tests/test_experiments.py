"""svc_digits for real: locally, against a TLS cluster on loopback, through a lost worker, and
with every mistake a user can make. No mocks of Dask."""

from __future__ import annotations

import argparse
import csv
import gc
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import cluster as connect_module
from experiments.search import fit_on_cluster

from . import loopback_cluster
from .conftest import ROOT

SCRIPT = ROOT / "experiments" / "svc_digits.py"


@pytest.fixture(scope="module", autouse=True)
def aws_on_loopback():
    """EC2's API played by moto on loopback: runs price themselves against it, never against AWS."""
    import os

    from moto.server import ThreadedMotoServer

    port = loopback_cluster.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing"
    )
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


LOCAL = argparse.Namespace(stack=None, scheduler=None)  # connect's arguments for a local run
BEST_LINE = "Best parameters: {'C': 1, 'class_weight': None, 'gamma': 0.001}"


def run_experiment(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def only_run_folder(results: Path) -> Path:
    (folder,) = results.iterdir()
    return folder


def cv_scores(folder: Path) -> dict[str, float]:
    with (folder / "cv_results.csv").open() as file:
        return {row["params"]: float(row["mean_test_score"]) for row in csv.DictReader(file)}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("local")
    run = run_experiment("--results", str(folder / "results"), cwd=folder)
    assert run.returncode == 0, run.stderr
    return run, only_run_folder(folder / "results")


def test_local_run_prints_dashboard_progress_and_result(local_run):
    run, _ = local_run
    assert run.stdout.startswith("Dask dashboard: http://127.0.0.1:")
    assert BEST_LINE in run.stdout
    assert "Best mean CV score: 0.98" in run.stdout
    assert "Classification report on the held-out data" in run.stdout and "weighted avg" in run.stdout
    assert "54/54" in run.stderr, "the progress bar counts the 54 fits"
    assert "Traceback" not in run.stderr


def test_local_run_matches_plain_scikit_learn(local_run):
    """Same split, same grid: the same mean score for every candidate as GridSearchCV."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV, train_test_split
    from sklearn.svm import SVC

    from experiments.svc_digits import PARAM_GRID

    X, y = load_digits(return_X_y=True)
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    reference = GridSearchCV(SVC(kernel="rbf"), PARAM_GRID, cv=3).fit(X_train, y_train)
    ours = cv_scores(local_run[1])
    theirs = {
        json.dumps(p): s
        for p, s in zip(reference.cv_results_["params"], reference.cv_results_["mean_test_score"], strict=True)
    }
    assert ours.keys() == theirs.keys()
    for params, score in theirs.items():
        assert ours[params] == pytest.approx(score, abs=1e-12), params
    assert BEST_LINE.removeprefix("Best parameters: ") == str(reference.best_params_)


def test_local_run_writes_every_result_file(local_run):
    _, folder = local_run
    assert sorted(p.name for p in folder.iterdir()) == [
        "cv_results.csv",
        "dask-report.html",
        "heatmap.png",
        "summary.json",
    ]
    with (folder / "cv_results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 18
    assert {
        "param_C",
        "param_gamma",
        "param_class_weight",
        "split0_test_score",
        "mean_test_score",
        "rank_test_score",
    } <= rows[0].keys()
    assert sorted(int(r["rank_test_score"]) for r in rows)[0] == 1
    png = (folder / "heatmap.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > height > 300, "two panels side by side, C x gamma each"
    html = (folder / "dask-report.html").read_text()
    assert "Dask Performance Report" in html and "Task Stream" in html
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["best_params"] == {"C": 1, "class_weight": None, "gamma": 0.001}
    assert summary["search"] == "dask_ml.GridSearchCV" and summary["engine"] == "dask-ml"
    assert {"C": 1, "class_weight": None, "gamma": 0.001} in summary["tied_for_best"]
    assert summary["candidates"] == 18 and summary["splits"] == 3 and summary["seed"] == 0
    assert summary["where"]["kind"] == "local" and summary["where"]["threads"] >= 1
    assert set(summary["timings_seconds"]) == {"connect", "search", "total"}
    assert 0.9 < summary["test_accuracy"] <= 1


def test_local_cluster_listens_on_loopback_only():
    """A laptop's cluster runs any code sent to it: nothing may listen beyond loopback."""
    import psutil

    with connect_module.connect(LOCAL) as (client, where):
        listening = [c.laddr for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert client.submit(sum, [1, 2]).result() == 3
    assert listening, "the dashboard should be listening"
    assert all(address.ip == "127.0.0.1" for address in listening), listening
    assert where.kind == "local" and where.dashboard.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("outcome", ["success", "user error"])
def test_run_starts_without_the_garbage_collector_and_connect_turns_it_back_on(outcome):
    seen = {}
    frozen_when_connected: list[int] = []
    made_after_connecting: list[object] = []

    def main():
        seen["starting"] = gc.isenabled()
        with connect_module.connect(LOCAL):
            seen["connected"] = gc.isenabled()
        frozen_when_connected.append(gc.get_freeze_count())
        made_after_connecting.extend([] for _ in range(1000))  # tracked by the collector, alive at exit
        if outcome == "user error":
            raise connect_module.ClusterError("something the user can fix")
        return 0

    try:
        with pytest.raises(SystemExit) as exited:
            connect_module.run(main)
        frozen_at_exit = gc.get_freeze_count()
    finally:
        gc.unfreeze()
    assert exited.value.code == (0 if outcome == "success" else 2)
    assert seen == {"starting": False, "connected": True}
    assert gc.isenabled()
    assert frozen_at_exit >= frozen_when_connected[0] + len(made_after_connecting), "the heap is frozen at exit"


def test_connect_leaves_the_collector_of_a_caller_that_runs_it_alone():
    """A notebook keeps its collector as it was: nothing it holds is frozen out of collection."""
    frozen = gc.get_freeze_count()
    with connect_module.connect(LOCAL):
        assert gc.isenabled()
    assert gc.get_freeze_count() == frozen


def test_plotting_helper_loads_neither_scikit_learn_nor_dask(tmp_path):
    """It loads matplotlib on the core the main process's startup leaves free; loading those
    as well would take that core back."""
    from experiments import report

    candidates = [
        {"C": c, "gamma": g, "class_weight": w} for c in (1, 10) for g in (0.1, 1) for w in (None, "balanced")
    ]
    scores = np.linspace(0.1, 0.9, len(candidates))
    cv_results = {"params": candidates, "mean_test_score": scores, "std_test_score": scores / 10}
    with report.Plotter() as plotter:
        options = {"rows": "C", "columns": "gamma", "panels": "class_weight", "title": "test"}
        plotter.heatmap(tmp_path / "heatmap.png", cv_results, **options).result()
        plotter.candidates(tmp_path / "candidates.png", cv_results, 7, title="test").result()
        loaded = plotter._pool.submit(eval, "list(__import__('sys').modules)").result()
    for name in ("heatmap.png", "candidates.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    assert "matplotlib" in loaded
    assert not {name.split(".")[0] for name in loaded} & {"sklearn", "scipy", "dask", "distributed"}


def test_script_top_loads_nothing_heavy():
    """The plotting helper re-imports the top of the script: the heavy imports live in main."""
    for script in ("svc_digits", "pipeline_search"):
        code = f"import sys; sys.path.insert(0, sys.argv[1]); import experiments.{script}; print(*sys.modules)"
        run = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True)
        loaded = {name.split(".")[0] for name in run.stdout.split()}
        assert "experiments" in loaded
        assert not loaded & {"sklearn", "numpy", "dask", "distributed", "matplotlib", "dask_ml"}, script


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    cluster = loopback_cluster.start(tmp_path_factory.mktemp("loopback"))
    yield cluster
    cluster.stop()


def test_remote_run_through_an_outputs_file(loopback, local_run, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    run = run_experiment(
        "--stack", "loopback", "--outputs", str(outputs), "--timeout", "60", "--results", "results", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert "worker nodes: 2/2" in run.stderr
    # The dashboard is behind the TLS gateway: the printed link is the local forwarder's.
    (dashboard,) = re.findall(r"Dask dashboard: (http://127\.0\.0\.1:\d+/status)\n", run.stdout)
    assert f":{loopback.gateway_port}/" not in dashboard and f":{loopback.dashboard_port}/" not in dashboard
    assert BEST_LINE in run.stdout
    folder = only_run_folder(tmp_path / "results")
    assert cv_scores(folder) == cv_scores(local_run[1]), "the cluster must find exactly what the laptop finds"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["where"] == {
        "kind": "remote", "scheduler": loopback.address, "dashboard": dashboard,
        "worker_nodes": 2, "threads": 2, "stack": "loopback",
        "cost_basis": {"region": "us-east-1", "worker_instance_types": ["c6i.xlarge", "c5.xlarge"], "scheduler_instance_type": "m6i.large", "scheduler_market": "spot"},
        "adaptive": None,
    }  # fmt: skip
    assert summary["worker_nodes"]["peak"] == 2
    # Priced against moto's EC2 (it quotes every type at USD 0.00001 an hour).
    cost = summary["cost"]
    search_hours = summary["timings_seconds"]["search"] / 3600
    # The scheduler for the search phase, the two worker nodes for as long as the meter saw them
    # (the fits: a little less than the phase, which also writes the run's folder).
    assert cost["worker_node_hours"] == summary["worker_nodes"]["worker_node_hours"]
    assert cost["node_hours"] == pytest.approx(cost["worker_node_hours"] + search_hours, abs=2e-4)
    assert cost["worker_node_hours"] == pytest.approx(2 * search_hours, rel=0.15)
    assert cost["worker_price_usd_per_hour"] == 0.00001 and cost["scheduler_price_usd_per_hour"] == 0.00001
    assert "Cost: " in run.stdout and "node-hours, about USD" in run.stdout


def test_remote_run_with_scheduler_address_and_tls_files(loopback, tmp_path):
    tls = loopback.tls_dir
    run = run_experiment(
        "--scheduler", loopback.address, "--tls-ca", str(tls / "ca.pem"), "--tls-cert", str(tls / "client.pem"),
        "--tls-key", str(tls / "client.key"), "--workers", "2", "--timeout", "60", "--results", "results", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert BEST_LINE in run.stdout


def test_stale_image_is_reported(loopback, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    document = json.loads(outputs.read_text())
    document["loopback"]["image_uri"] = document["loopback"]["image_uri"].rpartition(":")[0] + ":0000000000000000"
    outputs.write_text(json.dumps(document))
    run = run_experiment(
        "--stack", "loopback", "--outputs", str(outputs), "--workers", "5", "--timeout", "1", cwd=tmp_path
    )
    assert "warning: the nodes run image 0000000000000000, built from other code than this checkout" in run.stderr
    assert "run `cdktf deploy` to ship your changes" in run.stderr


def test_client_tls_files_are_private_and_removed(tmp_path):
    outputs = {"tls_ca_pem": "ca", "tls_client_cert_pem": "cert", "tls_client_key_pem": "key"}
    with connect_module.private_tls_files(outputs) as paths:
        for path in paths.values():
            assert Path(path).stat().st_mode & 0o777 == 0o600
        assert Path(paths["key"]).parent.stat().st_mode & 0o777 == 0o700
        assert Path(paths["key"]).read_text() == "key"
    assert not Path(paths["key"]).exists()


@pytest.mark.parametrize("engine", ["dask-ml", "scikit-learn"])
def test_search_survives_a_lost_worker_node(tmp_path, engine):
    """A node dies (nanny and worker killed) a few fits into the search: the same answer, from
    either engine."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from experiments.svc_digits import grid_search

    X, y = load_digits(return_X_y=True)
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    cluster = loopback_cluster.start(tmp_path)
    try:
        with cluster.client(wait_for_nodes=2) as client:
            undisturbed = fit_on_cluster(client, grid_search(engine), X_train, y_train)
            done = []
            killed = threading.Event()

            def progress(n: int) -> None:
                done.append(n)
                if sum(done) >= 10 and not killed.is_set():
                    cluster.kill("worker-127.0.0.3")
                    killed.set()

            disturbed = fit_on_cluster(client, grid_search(engine), X_train, y_train, on_fits=progress)
            assert killed.is_set() and sum(done) == 54, "every fit counted once, retried ones included"
            # The scheduler's view settles asynchronously (slowly on a loaded machine).
            deadline = time.monotonic() + 30
            while connect_module.worker_nodes(client) != 1 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert connect_module.worker_nodes(client) == 1, "the killed node must really be gone"
    finally:
        cluster.stop()
    assert disturbed.best_params_ == undisturbed.best_params_
    assert disturbed.best_score_ == undisturbed.best_score_
    np.testing.assert_array_equal(disturbed.cv_results_["mean_test_score"], undisturbed.cv_results_["mean_test_score"])


def test_both_engines_find_what_scikit_learn_finds(local_run, tmp_path):
    run = run_experiment("--engine", "scikit-learn", "--results", "results", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "54/54" in run.stderr
    folder = only_run_folder(tmp_path / "results")
    assert cv_scores(folder) == pytest.approx(cv_scores(local_run[1]), abs=1e-12)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["search"] == "sklearn.GridSearchCV" and summary["engine"] == "scikit-learn"


def test_a_pipeline_searched_by_successive_halving(tmp_path):
    script = ROOT / "experiments" / "pipeline_search.py"
    run = subprocess.run(
        [sys.executable, str(script), "--samples", "600", "--features", "12", "--candidates", "9", "--results", "r"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Best parameters: {'pca__n_components': " in run.stdout and "Traceback" not in run.stderr
    folder = only_run_folder(tmp_path / "r")
    assert sorted(p.name for p in folder.iterdir()) == [
        "candidates.png", "cv_results.csv", "dask-report.html", "summary.json"
    ]  # fmt: skip
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["search"] == "sklearn.HalvingRandomSearchCV"
    assert summary["samples"] == 600 and summary["features"] == 12
    with (folder / "cv_results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert {"iter", "n_resources", "param_svc__C", "mean_test_score"} <= rows[0].keys()
    assert len({row["iter"] for row in rows}) >= 2, "several rounds, each with more rows"
    fits = sum(int(count) for count in re.findall(r"fits: (\d+)fit", run.stderr)[-1:])
    assert fits == 3 * len(rows), "the progress bar counts every fit of every round"


def test_pipeline_search_refuses_a_too_small_problem(tmp_path):
    script = ROOT / "experiments" / "pipeline_search.py"
    run = subprocess.run([sys.executable, str(script), "--samples", "50"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 2
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .endswith("--samples: at least 100, for a held-out part and three folds, got 50")
    )


# ---- what a user can get wrong: one line, exit status 2, no traceback ----


PROGRESS = ("connecting to ", "  still waiting ")  # what the client says while it waits


def assert_one_line_error(run: subprocess.CompletedProcess, expected: str) -> None:
    assert run.returncode == 2, run.stdout + run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith(PROGRESS)]
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert run.stderr.rstrip().endswith(lines[0])
    assert expected in lines[0], lines[0]
    assert "Traceback" not in run.stderr


def test_no_outputs_file(tmp_path):
    run = run_experiment("--stack", "dask", cwd=tmp_path)
    assert_one_line_error(
        run, "outputs.json: not found; deploy first with `cdktf deploy dask --outputs-file outputs.json"
    )


def test_unknown_stack(loopback, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    run = run_experiment("--stack", "big", "--outputs", str(outputs), cwd=tmp_path)
    assert_one_line_error(run, "no stack named 'big' (stacks found: loopback)")


def test_outputs_file_missing_a_key(loopback, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    document = json.loads(outputs.read_text())
    del document["loopback"]["tls_client_key_pem"]
    outputs.write_text(json.dumps(document))
    run = run_experiment("--stack", "loopback", "--outputs", str(outputs), cwd=tmp_path)
    assert_one_line_error(
        run,
        "has no output 'tls_client_key_pem'; redeploy with `cdktf deploy loopback --outputs-file outputs.json --outputs-file-include-sensitive-outputs` (sensitive outputs need",
    )


def test_scheduler_unreachable_within_the_timeout(loopback, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    document = json.loads(outputs.read_text())
    address = f"tls://127.0.0.1:{loopback_cluster.free_port()}"
    document["loopback"]["scheduler_address"] = address
    outputs.write_text(json.dumps(document))
    run = run_experiment("--stack", "loopback", "--outputs", str(outputs), "--timeout", "2", cwd=tmp_path)
    assert_one_line_error(
        run, f"{address}: scheduler not reachable within 2 s; is the cluster up, and is your address in allowed_cidrs?"
    )


def test_tls_rejected(loopback, tmp_path):
    strangers = loopback_cluster.make_tls(tmp_path / "other-ca")
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    document = json.loads(outputs.read_text())
    document["loopback"].update(
        tls_ca_pem=strangers["ca.pem"],
        tls_client_cert_pem=strangers["client.pem"],
        tls_client_key_pem=strangers["client.key"],
    )
    outputs.write_text(json.dumps(document))
    run = run_experiment("--stack", "loopback", "--outputs", str(outputs), "--timeout", "10", cwd=tmp_path)
    assert_one_line_error(run, f"{loopback.address}: TLS rejected (")


def test_too_few_workers_within_the_timeout(loopback, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json", workers=3)
    run = run_experiment("--stack", "loopback", "--outputs", str(outputs), "--timeout", "3", cwd=tmp_path)
    assert run.returncode == 2
    assert "worker nodes: 2/3" in run.stderr, "the user sees how many arrived"
    assert run.stderr.strip().splitlines()[-1] == (
        "error: only 2 of 3 worker nodes joined within 3 s; check the worker group in the AWS console, or pass --workers/--timeout"
    )


def test_missing_tls_files_with_a_scheduler_address(tmp_path):
    run = run_experiment("--scheduler", "tls://127.0.0.1:8786", "--tls-ca", "ca.pem", cwd=tmp_path)
    assert_one_line_error(run, "--tls-cert, --tls-key: required with the other TLS options")


def versions_of(**changes) -> dict:
    """One party's part of Client.get_versions(), with some versions changed."""
    base = {
        "python": "3.11.7.final.0",
        "dask": "2026.8.0",
        "distributed": "2026.8.0",
        "sklearn": "1.9.1",
        "numpy": "2.4.6",
        "cloudpickle": "3.1.3",
    }
    return {"packages": base | changes}


def test_version_mismatches_are_named():
    versions = {
        "client": versions_of(),
        "scheduler": versions_of(python="3.11.14.final.0"),  # a patch release pickles alike
        "workers": {
            "tls://10.0.0.5:40000": versions_of(numpy="2.3.0", sklearn="1.8.0"),
            "tls://10.0.0.6:40000": versions_of(numpy="2.3.0"),
        },
    }
    assert connect_module.version_mismatches(versions) == [
        "scikit-learn: client 1.9.1, tls://10.0.0.5:40000 1.8.0",
        "numpy: client 2.4.6, tls://10.0.0.5:40000 2.3.0 (and 1 more)",
    ]
    versions["scheduler"] = versions_of(python="3.12.1.final.0")
    assert connect_module.version_mismatches(versions)[0] == "python: client 3.11, scheduler 3.12"


def test_matching_versions_pass_on_a_real_cluster(loopback):
    with loopback.client(wait_for_nodes=2) as client:
        connect_module.check_versions(client)  # raises ClusterError on any difference


def test_differing_versions_refuse_to_run_naming_them():
    class Cluster:  # stands in for a Client; only get_versions is asked for
        def get_versions(self, packages):
            assert packages == ["sklearn"]
            worker = {"tls://10.0.0.5:4000": versions_of(dask="2025.1.0")}
            return {"client": versions_of(), "scheduler": versions_of(), "workers": worker}

    with pytest.raises(connect_module.ClusterError) as caught:
        connect_module.check_versions(Cluster())
    assert str(caught.value) == (
        "client and cluster differ: dask: client 2026.8.0, tls://10.0.0.5:4000 2025.1.0 - install requirements.txt and redeploy"
    )


def test_benchmark_times_every_engine_and_compares_them(tmp_path):
    """One round of the README's speed benchmark, end to end: every command runs and is compared."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "benchmark_local.py"), "--runs", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and "median" not in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| GridSearchCV(n_jobs=-1)",
        "| svc_digits.py (dask-ml, local)",
        "| svc_digits.py (scikit-learn + joblib's Dask backend, local)",
    ]
    for row in rows:
        cells = [float(cell) for cell in row.strip(" |").split(" | ")[1:]]
        assert len(cells) == 4 and all(cell > 0 for cell in cells), row
    assert run.stdout.count("/ scikit-learn, ratio of medians: whole process") == 2
    assert run.stdout.count("median of the 1 per-round ratios") == 2
    assert not list(tmp_path.iterdir()), "its runs write their results in a folder of their own"


def test_waiting_is_visible_and_ctrl_c_ends_it_in_one_line(loopback, tmp_path):
    """A scheduler that never answers: the client says so every 10 s, and Ctrl-C (SIGINT to the
    whole process group, as a terminal sends it, plotting helper included) ends it cleanly."""
    import os
    import signal
    import socket
    import time

    # A port held but never listened on: nothing else can take it while the client waits.
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    address = f"tls://127.0.0.1:{held.getsockname()[1]}"
    tls = loopback.tls_dir
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--scheduler", address, "--timeout", "60",
         "--tls-ca", str(tls / "ca.pem"), "--tls-cert", str(tls / "client.pem"), "--tls-key", str(tls / "client.key")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    lines, started = [], time.monotonic()
    try:
        while not any(line.startswith("  still waiting") for line in lines):
            line = process.stderr.readline()
            assert line, f"stderr closed early: {lines}"
            lines.append(line)
        waited = time.monotonic() - started
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = "".join(process.stderr), process.wait(timeout=30)
    finally:
        held.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert lines[0].startswith(f"connecting to {address} (for up to 60 s)"), lines
    assert f"still waiting for the scheduler at {address}: " in lines[-1] and " s left" in lines[-1], lines
    assert 9 <= waited <= 20, "a line at least every 10 s"
    assert (process.returncode, rest.strip()) == (130, "interrupted")
    assert "Traceback" not in "".join(lines) + rest


def test_help_shows_every_default():
    run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    text = " ".join(run.stdout.split())
    for default in ("(default: 0)", "(default: results)", "(default: outputs.json)", "(default: 600)"):
        assert default in text, default


def test_dask_report_opens_offline(local_run):
    """The performance report embeds Bokeh: no script or style sheet is fetched from anywhere
    (a favicon link may stay: a browser offline just shows no icon)."""
    from html.parser import HTMLParser

    class Fetches(HTMLParser):
        def __init__(self):
            super().__init__()
            self.urls: list[str] = []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "script" and attrs.get("src"):
                self.urls.append(attrs["src"])
            if tag == "link" and "stylesheet" in (attrs.get("rel") or "") and attrs.get("href"):
                self.urls.append(attrs["href"])

    _, folder = local_run
    html = (folder / "dask-report.html").read_text()
    parser = Fetches()
    parser.feed(html)
    assert parser.urls == []
    assert "Bokeh" in html and len(html) > 500_000, "Bokeh's JavaScript is inlined"


def test_heatmap_marks_every_best_cell(tmp_path):
    from experiments.report import write_heatmap

    candidates = [{"C": c, "gamma": g, "w": w} for w in (None, "balanced") for c in (1, 10) for g in (0.1, 1)]
    scores = [0.5, 0.9, 0.7, 0.9, 0.2, 0.3, 0.4, 0.6]
    best = write_heatmap(tmp_path / "h.png", candidates, scores, rows="C", columns="gamma", panels="w", title="t")
    assert best == [{"C": 1, "gamma": 1, "w": None}, {"C": 10, "gamma": 1, "w": None}]
    assert (tmp_path / "h.png").stat().st_size > 10_000


def test_outputs_readable_by_others_are_made_private_with_one_line(loopback, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    state = tmp_path / "terraform.loopback.tfstate"
    state.write_text("{}")
    for path in (outputs, state):
        path.chmod(0o644)
    run = run_experiment("--stack", "big", "--outputs", str(outputs), cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines()[0] == (
        f"warning: {outputs} holds the cluster's TLS keys and others could read it (mode 0644); made it 0600"
    )
    assert outputs.stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o644, "only the named stack's state is touched"
    run = run_experiment(
        "--stack", "loopback", "--outputs", str(outputs), "--timeout", "1", "--workers", "9", cwd=tmp_path
    )
    assert f"warning: {state} holds the cluster's TLS keys" in run.stderr
    assert state.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("flag", "content", "message"),
    [
        ("--tls-ca", "", "--tls-ca: {path} is empty"),
        ("--tls-cert", "\n\n", "--tls-cert: {path} is empty"),
        ("--tls-key", "", "--tls-key: {path} is empty"),
        ("--tls-cert", "client.key", "--tls-cert: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ("--tls-key", "client.pem", "--tls-key: {path} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"),
        (
            "--tls-ca",
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
            "--tls-ca: {path} is not a valid CA certificate",
        ),
        ("--tls-key", "worker.key", "--tls-cert, --tls-key: "),
    ],
)
def test_bad_tls_files_get_one_line_naming_the_flag(loopback, tmp_path, flag, content, message):
    files = {
        flag_: str(loopback.tls_dir / name)
        for flag_, name in (("--tls-ca", "ca.pem"), ("--tls-cert", "client.pem"), ("--tls-key", "client.key"))
    }
    bad = tmp_path / "bad.pem"
    source = loopback.tls_dir / content
    bad.write_text(source.read_text() if content.endswith((".pem", ".key")) else content)
    files[flag] = str(bad)
    args = [item for pair in files.items() for item in pair]
    run = run_experiment("--scheduler", loopback.address, *args, "--timeout", "5", cwd=tmp_path)
    assert_one_line_error(run, message.format(path=bad))
    if flag == "--tls-key" and content == "worker.key":
        assert "are not a certificate and its own key" in run.stderr


def test_an_unreadable_tls_file_is_named(monkeypatch, tmp_path):
    """Root reads everything, so the refusal is played by the file system call itself."""
    (tmp_path / "ca.pem").write_text("x")
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name == "ca.pem":
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(
        connect_module.ClusterError, match=rf"^--tls-ca: cannot read {tmp_path}/ca.pem \(permission denied\)$"
    ):
        connect_module.check_tls_files(str(tmp_path / "ca.pem"), "c.pem", "k.pem")


def test_scale_benchmark_runs_every_part_at_tiny_size(tmp_path):
    """The benchmark behind the README's scale table cannot rot: each part runs once, small."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "benchmark_scale.py"), "--small", "--runs", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and not line.startswith("| engine")]
    rows = [row for row in rows if not row.startswith("| slots")]
    engines = [row.split(" | ")[0].strip("| ") for row in rows]
    assert engines == [
        "scikit-learn n_jobs=-1", "dask-ml", "scikit-learn + joblib Dask",  # tenfold
        "4",  # scale: one row per slot count
        "dask-ml", "scikit-learn + joblib Dask",  # bytes
    ], run.stdout  # fmt: skip
    cells = [float(cell) for cell in rows[3].strip(" |").split(" | ")]
    efficiencies, first_fit_after, busy = cells[4::4], cells[5::4], cells[6::4]  # per engine
    assert len(efficiencies) == 2 and all(0 < e <= 1.05 for e in efficiencies), rows[3]
    assert all(0 <= s < 2.4 for s in first_fit_after) and all(0 < b <= 1.0 for b in busy), rows[3]
    copies = [float(row.strip(" |").split(" | ")[2]) for row in rows[4:]]
    assert all(c >= 1 for c in copies), "the data reaches the cluster at least once"


def test_waiting_for_nodes_says_how_many_joined_and_the_time_left(monkeypatch, capsys):
    """The client waiting for worker nodes says so at every interval (shortened here)."""

    class TwoNodes:
        def scheduler_info(self, n_workers):
            return {"workers": {"tls://10.0.0.1:4000": {}, "tls://10.0.0.2:4000": {}}}

    monkeypatch.setattr(connect_module, "HEARTBEAT_SECONDS", 0.3)
    reports = []
    with pytest.raises(connect_module.ClusterError, match=r"^only 2 of 3 worker nodes joined within 2 s"):
        connect_module.wait_for_nodes(TwoNodes(), 3, 2.0, lambda n, of: reports.append((n, of)))
    assert reports == [(2, 3)], "a change of count is reported once"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 2, lines  # the loop looks once a second
    assert all(
        re.fullmatch(r"  still waiting for 3 worker node\(s\), 2 joined: \d s left \(Ctrl-C to stop\)", line)
        for line in lines
    ), lines


def test_cv_table_leaves_a_parameter_a_candidate_lacks_empty(tmp_path):
    """A grid of several dicts masks the parameters a candidate does not have: never 0."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    from experiments.report import write_cv_table

    X, y = load_iris(return_X_y=True)
    search = GridSearchCV(SVC(), [{"kernel": ["linear"]}, {"kernel": ["rbf"], "gamma": [0.1]}], cv=3).fit(X, y)
    write_cv_table(tmp_path / "cv.csv", search.cv_results_)
    with (tmp_path / "cv.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(row["param_kernel"], row["param_gamma"]) for row in rows] == [("linear", ""), ("rbf", "0.1")]
    assert [json.loads(row["params"]) for row in rows] == [{"kernel": "linear"}, {"kernel": "rbf", "gamma": 0.1}]


def test_an_adaptive_stack_is_not_waited_for_and_its_nodes_are_metered(loopback, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json", workers=0)
    document = json.loads(outputs.read_text())
    document["loopback"]["max_workers"] = 3
    outputs.write_text(json.dumps(document))
    run = run_experiment("--stack", "loopback", "--outputs", str(outputs), "--timeout", "60", "--results", "results",
                         cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "an adaptive cluster of 0 to 3 worker nodes" in run.stderr
    assert "waiting for" not in run.stderr and "worker nodes: 2/" not in run.stderr
    summary = json.loads((only_run_folder(tmp_path / "results") / "summary.json").read_text())
    assert summary["where"]["adaptive"] == [0, 3] and summary["worker_nodes"]["peak"] == 2
    search_hours = summary["timings_seconds"]["search"] / 3600
    assert summary["worker_nodes"]["worker_node_hours"] == pytest.approx(2 * search_hours, rel=0.05, abs=1e-4)


def test_the_node_meter_reports_changes_and_adds_up_node_seconds():
    class Cluster:  # a client's view: worker addresses, two per node
        def __init__(self) -> None:
            self.hosts = ["10.0.0.1"]

        def scheduler_info(self, n_workers):
            assert n_workers == -1
            return {"workers": {f"tls://{h}:{p}": {} for h in self.hosts for p in (4000, 4001)}}

    client, changes = Cluster(), []
    with connect_module.NodeMeter(client, lambda was, now: changes.append((was, now)), interval=0.05) as meter:
        time.sleep(0.3)
        client.hosts = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        time.sleep(0.3)
        client.hosts = ["10.0.0.2"]
        time.sleep(0.3)
    assert changes == [(1, 3), (3, 1)] and meter.peak == 3
    assert meter.node_seconds == pytest.approx(0.3 + 3 * 0.3 + 0.3, abs=0.25)


def tiny_svc_search():
    """A two-candidate scikit-learn search and its data: the smallest thing fit_on_cluster runs."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    return GridSearchCV(SVC(), {"C": [1, 2]}, cv=2), np.arange(40.0).reshape(20, 2), np.arange(20) % 2


def test_a_scikit_learn_search_on_a_cluster_without_workers_waits_then_says_so():
    from distributed import Client, LocalCluster

    search, X, y = tiny_svc_search()
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty, Client(empty) as client:
        started = time.monotonic()
        with pytest.raises(connect_module.ClusterError) as error:
            fit_on_cluster(client, search, X, y, wait_for_workers=1)
        assert 1 <= time.monotonic() - started < 10
    assert str(error.value) == (
        "no worker node joined within 1 s; check the worker group in the AWS console, or pass --timeout"
    )


def test_scikit_learn_searches_submit_every_fit_of_a_round_at_once():
    """So that an adaptive cluster sees the whole round, not two fits per thread it had at the start."""
    from distributed import Client, LocalCluster

    search, X, y = tiny_svc_search()
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        fit_on_cluster(client, search, X, y)
    assert search.pre_dispatch == "all" and len(search.cv_results_["params"]) == 2


def test_scikit_learn_fits_travel_as_plain_pickles_and_the_callers_warning_filters_come_back(monkeypatch):
    """Python's default warning filter for `__main__`, sent with every fit, would make distributed
    pickle every task twice, the second time with cloudpickle (slow, in the client and the scheduler)."""
    import warnings

    import cloudpickle
    from distributed import Client, LocalCluster

    by_value = []
    pickle_by_value = cloudpickle.dumps
    monkeypatch.setattr(cloudpickle, "dumps", lambda x, *a, **k: by_value.append(x) or pickle_by_value(x, *a, **k))
    search, X, y = tiny_svc_search()
    with (
        warnings.catch_warnings(),
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")  # as Python starts
        warnings.filterwarnings("ignore", message="a user's own filter")
        filters = list(warnings.filters)
        fit_on_cluster(client, search, X, y)
        assert [type(x).__name__ for x in by_value] == []
        assert warnings.filters == filters
    assert len(search.cv_results_["params"]) == 2


def test_a_scikit_learn_search_keeps_a_worker_busy_while_its_data_goes_out(monkeypatch):
    """An adaptive cluster retires idle nodes only: a busy one is there for the data."""
    from distributed import Client, LocalCluster

    search, X, y = tiny_svc_search()
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        busy_while_scattering = []
        scatter = client.scatter

        def scatter_and_look(*args, **kwargs):
            busy_while_scattering.append(sum(map(len, client.processing().values())))
            return scatter(*args, **kwargs)

        monkeypatch.setattr(client, "scatter", scatter_and_look)
        fit_on_cluster(client, search, X, y)
        monkeypatch.undo()
        assert busy_while_scattering == [1]
        deadline = time.monotonic() + 10
        while any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(client.processing().values())  # released once the data is out
        assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.extensions["events"]._events) == {}


@pytest.mark.parametrize("start", ["no worker", "its only worker leaving"])
def test_a_scikit_learn_search_without_a_worker_for_it_asks_for_one_and_goes_on_when_it_joins(start):
    """A leaving worker is in the state the autoscaler's retirement puts a worker in: still listed, given no
    more work. Data sent then would wait for a worker that nothing asks for."""
    from distributed import Client, LocalCluster

    search, X, y = tiny_svc_search()
    leaving = start == "its only worker leaving"
    with (
        LocalCluster(n_workers=int(leaving), processes=False, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        if leaving:
            client.run_on_scheduler(
                lambda dask_scheduler: [
                    dask_scheduler.handle_worker_status_change("closing_gracefully", address, "test-leaving")
                    for address in list(dask_scheduler.workers)
                ]
            )
        outcome = []
        searching = threading.Thread(target=lambda: outcome.append(fit_on_cluster(client, search, X, y)))
        searching.start()
        if leaving:
            time.sleep(1)
            assert not any(client.processing().values()), "nothing runs on a leaving worker"
            local.scale(0)  # the retirement ends: the worker is gone
            deadline = time.monotonic() + 10
            while client.scheduler_info(n_workers=-1)["workers"]:
                assert time.monotonic() < deadline, "the leaving worker did not go"
                time.sleep(0.1)
        deadline = time.monotonic() + 10
        while not client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.adaptive_target()):
            assert time.monotonic() < deadline, "an adaptive cluster would not add a node"
            time.sleep(0.1)
        local.scale(1)
        searching.join(timeout=60)
    assert outcome == [search] and len(search.cv_results_["params"]) == 2
