"""The tutorial's search, end to end (experiments/svc_digits.py through the runner,
experiments/spotsearch/experiment.py): a local run, remote runs on a loopback cluster, the files it writes."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT
from .experiment_runs import (
    BEST_LINE,
    SCRIPT,
    assert_one_line_error,
    cv_scores,
    only_run_folder,
    run_experiment,
)

# Remote runs price themselves: against moto on loopback, never against AWS.
pytestmark = pytest.mark.usefixtures("aws_on_loopback")


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
        "fits",
        "heatmap.png",
        "summary.json",
    ]
    assert len(list((folder / "fits").glob("*.fit"))) == 54, "every fit, saved as it finished"
    assert (folder / "fits" / "search.json").is_file()
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


def test_both_engines_find_what_scikit_learn_finds(local_run, tmp_path):
    run = run_experiment("--engine", "scikit-learn", "--results", "results", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "54/54" in run.stderr
    folder = only_run_folder(tmp_path / "results")
    assert cv_scores(folder) == pytest.approx(cv_scores(local_run[1]), abs=1e-12)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["search"] == "sklearn.GridSearchCV" and summary["engine"] == "scikit-learn"


def test_remote_run_through_an_outputs_file(loopback, local_run, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    run = run_experiment(
        "--stack", "loopback", "--outputs", str(outputs), "--timeout", "60", "--results", "results", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert "worker nodes: 2/2" in run.stderr
    # The dashboard is behind the TLS gateway: the printed link is the local forwarder's.
    (link,) = re.findall(r"Dask dashboard: (http://127\.\d+\.\d+\.\d+:\d+/status\?dask_link=[\w-]+)\n", run.stdout)
    dashboard = link.split("?")[0]  # what the summary keeps: the link's key opened it while the run lasted
    assert f":{loopback.gateway_port}/" not in dashboard and f":{loopback.dashboard_port}/" not in dashboard
    assert BEST_LINE in run.stdout
    folder = only_run_folder(tmp_path / "results")
    assert cv_scores(folder) == cv_scores(local_run[1]), "the cluster must find exactly what the laptop finds"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["where"] == {
        "kind": "remote", "scheduler": loopback.address, "dashboard": dashboard,
        "worker_nodes": 2, "threads": 2, "stack": "loopback",
        "cost_basis": {"region": "us-east-1", "worker_instance_types": ["c6i.xlarge", "c5.xlarge"], "scheduler_instance_types": ["m6i.large", "m5.large"], "scheduler_market": "spot"},
        "adaptive": None, "data_sources": [], "uploads_bucket": None,
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


@pytest.mark.parametrize(
    ("signum", "launched_with"),
    [(signal.SIGTERM, signal.SIG_DFL), (signal.SIGHUP, signal.SIG_DFL), (signal.SIGHUP, signal.SIG_IGN)],
    ids=["SIGTERM", "SIGHUP", "SIGHUP under nohup"],
)
def test_sigterm_or_sighup_mid_search_ends_it_as_ctrl_c_does_and_removes_the_client_key(
    loopback, tmp_path, signum, launched_with
):
    import os
    import time

    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    temporary = tmp_path / "tmp"
    temporary.mkdir()

    def as_launched() -> None:  # from a terminal, or under nohup (whatever launched these tests)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, launched_with)

    search = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--stack", "loopback", "--outputs", str(outputs), "--results", "results"],
        cwd=tmp_path, env={**os.environ, "TMPDIR": str(temporary)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=as_launched,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob("results/*/fits/*.fit")):
        assert search.poll() is None and time.monotonic() < deadline, search.stderr.read()
        time.sleep(0.02)
    assert list(temporary.glob("dask-tls-*/key.pem")), "the client key is in its temporary folder meanwhile"
    search.send_signal(signum)
    stdout, stderr = search.communicate(timeout=240)
    if launched_with is signal.SIG_IGN:  # nohup's choice is kept: the search goes on to its end
        assert search.returncode == 0, stderr
        assert BEST_LINE in stdout
    else:
        assert search.returncode == 128 + signum, stderr
        assert f"stopped ({signal.Signals(signum).name})" in stderr and "Traceback" not in stderr
        assert "finished fits are saved; to run only the others: --resume" in stderr
    assert not list(temporary.iterdir()), "the client's TLS files are gone"


def test_remote_run_with_scheduler_address_and_tls_files(loopback, tmp_path):
    tls = loopback.tls_dir
    run = run_experiment(
        "--scheduler", loopback.address, "--tls-ca", str(tls / "ca.pem"), "--tls-cert", str(tls / "client.pem"),
        "--tls-key", str(tls / "client.key"), "--workers", "2", "--timeout", "60", "--results", "results", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert BEST_LINE in run.stdout


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
    assert summary["worker_nodes"]["worker_node_hours"] == pytest.approx(2 * search_hours, rel=0.3, abs=1e-4)


def test_ctrl_c_mid_search_then_resume_runs_only_the_unsaved_fits(local_run, tmp_path):
    import os
    import signal
    import time

    search = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--results", "results"], cwd=tmp_path, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while len(list(tmp_path.glob("results/*/fits/*.fit"))) < 5:
        assert search.poll() is None and time.monotonic() < deadline, "the search ended before it was interrupted"
        time.sleep(0.02)
    os.killpg(search.pid, signal.SIGINT)  # Ctrl-C at a terminal: the whole foreground group
    _, stderr = search.communicate(timeout=120)
    assert search.returncode == 130, stderr
    run = only_run_folder(tmp_path / "results")
    saved = len(list((run / "fits").glob("*.fit")))
    assert 5 <= saved < 54, "interrupted mid-search"
    assert f"{saved} finished fits are saved; to run only the others: --resume {run.relative_to(tmp_path)}" in stderr
    stopped = json.loads((run / "summary.json").read_text())
    assert stopped["status"] == "interrupted" and "best_params" not in stopped, "marked, and not taken for a result"
    assert stopped["command"] == [str(SCRIPT), "--results", "results"] and stopped["ended_at"] >= stopped["started_at"]

    resumed = run_experiment("--results", "results", "--resume", run.name, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run.relative_to(tmp_path)}: {saved} fits saved" in resumed.stderr
    assert "54/54" in resumed.stderr, "the progress counts the saved fits too"
    assert only_run_folder(tmp_path / "results") == run, "the run is finished in its own folder"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["command"][-2:] == ["--resume", run.name]
    assert summary["resumed"] == {"fits_reused": saved}
    assert summary["best_params"] == {"C": 1, "class_weight": None, "gamma": 0.001}
    assert cv_scores(run) == pytest.approx(cv_scores(local_run[1]), abs=1e-12)
    assert len(list((run / "fits").glob("*.fit"))) == 54


def unfinished_copy(run: Path, tmp_path: Path) -> Path:
    """The run as a search stopped mid-way would leave it: its fits, no summary."""
    import shutil

    copy = tmp_path / "results" / run.name
    shutil.copytree(run, copy)
    (copy / "summary.json").unlink()
    return copy


@pytest.mark.parametrize(
    ("resume", "extra", "expected"),
    [
        ("{run}", ["--seed", "1"], "are of another data (data: X, y differs)"),
        ("{run}", ["--engine", "scikit-learn"], "are of another search (dask_ml.model_selection._search.GridSearchCV, "
         "not sklearn.model_selection._search.GridSearchCV)"),
        ("no-such-run", [], "--resume: no-such-run is not a run with saved fits"),
    ],
)  # fmt: skip
def test_a_resume_that_does_not_match_its_run_is_refused_before_the_cluster_starts(
    local_run, tmp_path, resume, extra, expected
):
    copy = unfinished_copy(local_run[1], tmp_path)
    run = run_experiment("--results", str(copy.parent), "--resume", resume.format(run=copy), *extra, cwd=tmp_path)
    assert_one_line_error(run, expected)
    assert "Dask dashboard" not in run.stdout


def test_a_resume_of_a_finished_run_says_so_and_keeps_its_summary(local_run, tmp_path):
    summary = (local_run[1] / "summary.json").read_bytes()
    run = run_experiment("--resume", str(local_run[1]), cwd=tmp_path)
    assert_one_line_error(
        run, f"--resume: {local_run[1]} has finished (its results are in {local_run[1]}/summary.json)"
    )
    assert (local_run[1] / "summary.json").read_bytes() == summary


def test_a_resume_of_a_read_only_run_is_refused_before_the_cluster_starts(local_run, tmp_path):
    """Read-only as a mount makes it (root, who runs the tests, ignores permission bits)."""
    copy = unfinished_copy(local_run[1], tmp_path)
    mounted = (
        f"mount --bind {copy} {copy} && mount -o remount,bind,ro {copy} && "
        f"exec {sys.executable} {SCRIPT} --resume {copy}"
    )
    run = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", mounted], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert_one_line_error(run, f"cannot write in {copy} (Read-only file system)")
    assert "Dask dashboard" not in run.stdout


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


def test_script_top_loads_nothing_heavy():
    """The plotting helper re-imports the top of the script: the heavy imports live in main."""
    for script in ("svc_digits", "pipeline_search"):
        code = f"import sys; sys.path.insert(0, sys.argv[1]); import experiments.{script}; print(*sys.modules)"
        run = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True)
        loaded = {name.split(".")[0] for name in run.stdout.split()}
        assert "experiments" in loaded
        assert not loaded & {"sklearn", "numpy", "dask", "distributed", "matplotlib", "dask_ml"}, script
