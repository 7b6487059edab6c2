"""Shared fixtures. The AWS provider's jsii import costs ~20 s: stacks are synthesized once
per test session, and only by the tests that ask for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CHECKPOINT_DISABLE", "1")
# The tools the tests run (shellcheck, hadolint, ruff, the cdktf wrapper) live next to this
# interpreter: `.venv/bin/python -m pytest` finds them without an activated venv.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"

from stacks.config import parse_cluster  # noqa: E402

ALLOWED = ["198.51.100.0/24"]

# Settings of each synthesized variant, as a user would write them in cdktf.json.
VARIANTS: dict[str, dict] = {
    "default": {"allowed_cidrs": ALLOWED},
    "ondemand": {"allowed_cidrs": ALLOWED, "scheduler_market": "on-demand", "workers": 4},
    "custom": {
        "allowed_cidrs": ["198.51.100.7/32", "2001:db8::/48"],
        "region": "eu-west-1",
        "subnet_ids": ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"],
        "tags": {"Department": "Data science", "contact": "ml-team"},
        "worker_instance_types": ["c6i.2xlarge", "c5.2xlarge"],
        "spot_max_price": "0.35",
        "worker_processes": 4,
        "worker_threads": 2,
        "idle_timeout_minutes": 15,
        "jupyter": True,
        "max_cost_usd": 50,
        "data_sources": ["s3://ml-team-data/emails/", "s3://shared.datasets/2026/digits.parquet"],
    },
}


# The emulated deploy's cluster (tests/emulated/): two small worker nodes, the shortest idle
# timeout a user can set, and bootstrap steps retried for 30 s instead of 15 minutes.
EMULATED = {
    "allowed_cidrs": ALLOWED,
    "workers": 2,
    "worker_processes": 1,
    "worker_threads": 2,
    "idle_timeout_minutes": 1,
}
EMULATED_MAX_WAIT_SECONDS = 30
# A replacement scheduler boots in seconds here (minutes on AWS): workers wait 2 minutes for it.
EMULATED_REPLACEMENT_WAIT_SECONDS = 120
# The adaptive cluster of the emulated deploy: none to three worker nodes, which go after 8 s
# of less work (60 s on AWS), looked at every second (5 s).
EMULATED_ADAPTIVE = {**{k: v for k, v in EMULATED.items() if k != "workers"}, "min_workers": 0, "max_workers": 3}
EMULATED_PACE = {"AUTOSCALER_INTERVAL_SECONDS": 1, "SCALE_DOWN_AFTER_SECONDS": 8, "COST_METER_SECONDS": 1}
# The emulated deploy's cluster with a dollar cap of USD 1: at moto's spot price (USD 0.00001 an
# hour) it would take days to spend; a test sets a price that reaches it in seconds.
EMULATED_COST_CAP = {**EMULATED, "workers": 1, "max_cost_usd": 1}
# The emulated deploy's cluster whose workers may read one prefix of a bucket (moto's S3).
EMULATED_DATA_SOURCE = "s3://emu-data/emails/"
EMULATED_S3 = {**EMULATED, "data_sources": [EMULATED_DATA_SOURCE]}


def terraform_env(folder: Path) -> dict[str, str]:
    """Terraform offline in `folder`: no user configuration, no checkpoint calls."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env.update(CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_CLI_CONFIG_FILE=os.devnull)
    env["TF_DATA_DIR"] = str(folder / ".terraform")
    return env


def terraform_outputs(folder: Path, config: dict) -> dict:
    """Apply a provider-less configuration with real Terraform; its outputs' values by name."""
    (folder / "main.tf.json").write_text(json.dumps(config))
    env = terraform_env(folder)
    for command in (["init", "-input=false"], ["apply", "-auto-approve", "-input=false"]):
        subprocess.run(["terraform", *command], cwd=folder, env=env, check=True, capture_output=True, timeout=120)
    run = subprocess.run(["terraform", "output", "-json"], cwd=folder, env=env, check=True, capture_output=True)
    return {name: output["value"] for name, output in json.loads(run.stdout).items()}


def pytest_configure(config):
    import signal

    from . import leftovers

    leftovers.become_subreaper()
    # Started in the background by a shell without job control, this process ignores SIGINT, and
    # so would every script a test starts: their Ctrl-C tests would prove nothing. A handler here
    # (exec resets it to the default in children) gives them the SIGINT a terminal gives users.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# What `make test-fast` leaves out (`-m "not slow"`): tests on real clusters of processes, whole
# experiment processes, scanners and Terraform. `make test` runs everything.
SLOW_FIXTURES = {"loopback", "process_cluster", "gateway_scheduler", "local_run", "plain_cluster"}
SLOW_MODULES = {
    "test_benchmarks", "test_checkov", "test_cli_synth", "test_cluster_cli", "test_cluster_outputs",
    "test_cluster_waiting", "test_conformance", "test_deploy_time_variables", "test_docs", "test_experiment",
    "test_node_gateway", "test_node_idle_shutdown", "test_node_lifecycle", "test_node_trust",
    "test_node_worker_autoscaler", "test_pipeline_search", "test_script", "test_sklearn_own_tests",
    "test_svc_digits", "test_userdata",
}  # fmt: skip


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in SLOW_MODULES or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_session():
    """Set up first, torn down last: a process the session started and left running fails it."""
    from . import leftovers

    yield
    # joblib's process pool (plain scikit-learn with n_jobs=-1) keeps its workers for reuse: ours.
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)
    left = leftovers.leftover_processes()
    described = [leftovers.describe(process) for process in left]
    leftovers.kill(left)
    assert not left, "processes outlived the tests that started them:\n" + "\n".join(described)


@pytest.fixture(scope="session")
def aws_on_loopback():
    """EC2's API played by moto on loopback: runs price themselves against it, never against AWS."""
    from moto.server import ThreadedMotoServer

    from . import loopback_cluster

    port = loopback_cluster.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        yield
    server.stop()


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    """A real cluster on loopback (tests/loopback_cluster.py): a scheduler and two worker nodes."""
    from . import loopback_cluster

    cluster = loopback_cluster.start(tmp_path_factory.mktemp("loopback"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def process_cluster():
    """A client of a local cluster with two worker processes: every fit is pickled and sent."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def gateway_scheduler(tmp_path_factory):
    """A scheduler on loopback behind its TLS gateway, without workers."""
    from . import loopback_cluster

    cluster = loopback_cluster.start(tmp_path_factory.mktemp("gateway"), workers=())
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def local_run(tmp_path_factory):
    """`python experiments/svc_digits.py` as the README runs it: its output and its run folder."""
    from .experiment_runs import only_run_folder, run_experiment

    folder = tmp_path_factory.mktemp("local")
    run = run_experiment("--results", str(folder / "results"), cwd=folder)
    assert run.returncode == 0, run.stderr
    return run, only_run_folder(folder / "results")


@pytest.fixture(scope="session")
def settings():
    return {name: parse_cluster(name, raw) for name, raw in VARIANTS.items()}


@pytest.fixture(scope="session")
def synthesized(settings) -> dict[str, dict]:
    """Each variant's Terraform JSON, from cdktf's Testing.synth, keyed by variant name."""
    from cdktf import Testing

    from stacks.stack import DaskClusterStack

    app = Testing.app()
    stacks = {name: DaskClusterStack(app, name, settings=s) for name, s in settings.items()}
    return {name: json.loads(Testing.synth(stack)) for name, stack in stacks.items()}


def emulated_synth(raw: dict) -> tuple:
    """Settings and Terraform JSON of an emulated deploy's stack, "emu", with its waits shortened."""
    from cdktf import Testing

    from stacks import userdata
    from stacks.stack import DaskClusterStack

    settings = parse_cluster("emu", raw)
    shortened = {
        "MAX_WAIT_SECONDS": EMULATED_MAX_WAIT_SECONDS,
        "REPLACEMENT_WAIT_SECONDS": EMULATED_REPLACEMENT_WAIT_SECONDS,
        **EMULATED_PACE,
    }
    defaults = {name: getattr(userdata, name) for name in shortened}
    for name, value in shortened.items():
        setattr(userdata, name, value)
    try:
        document = json.loads(Testing.synth(DaskClusterStack(Testing.app(), "emu", settings=settings)))
    finally:
        for name, value in defaults.items():
            setattr(userdata, name, value)
    return settings, document


@pytest.fixture(scope="session")
def emulated_stack():
    """The emulated deploy's cluster of fixed size."""
    return emulated_synth(EMULATED)


@pytest.fixture(scope="session")
def emulated_cost_cap_stack():
    """The emulated deploy's cluster with a dollar cap."""
    return emulated_synth(EMULATED_COST_CAP)


@pytest.fixture(scope="session")
def emulated_s3_stack():
    """The emulated deploy's cluster with data_sources."""
    return emulated_synth(EMULATED_S3)


@pytest.fixture(scope="session")
def emulated_adaptive_stack():
    """The emulated deploy's adaptive cluster."""
    return emulated_synth(EMULATED_ADAPTIVE)
