"""`cdktf deploy --var` overrides are checked by real Terraform before anything is created.

Terraform cannot download the AWS provider here, but variables and their validation need no
provider: the stack's own `variable` blocks are planned on their own, offline.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import terraform_env


@pytest.fixture(scope="module")
def variables_only(synthesized, tmp_path_factory):
    """A directory holding the default stack's variables, and outputs that read them."""
    folder = tmp_path_factory.mktemp("variables")
    variables = synthesized["custom"]["variable"]
    config = {"variable": variables, "output": {name: {"value": f"${{var.{name}}}"} for name in variables}}
    (folder / "main.tf.json").write_text(json.dumps(config))
    subprocess.run(
        ["terraform", "init", "-input=false"], cwd=folder, env=terraform_env(folder), check=True, capture_output=True
    )
    return folder


def plan(folder, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["terraform", "plan", "-input=false", "-no-color", *args],
        cwd=folder, env={**terraform_env(folder), **(env or {})}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_defaults_come_from_cdktf_json_and_plan_cleanly(variables_only):
    run = plan(variables_only)
    assert run.returncode == 0, run.stderr
    assert 'spot_max_price        = "0.35"' in run.stdout
    assert '"c6i.2xlarge"' in run.stdout


def test_good_overrides_are_accepted(variables_only):
    run = plan(
        variables_only,
        "-var=workers=12",
        '-var=worker_instance_types=["m6i.2xlarge","m5.2xlarge"]',
        "-var=spot_max_price=",
    )
    assert run.returncode == 0, run.stderr
    assert "workers               = 12" in run.stdout


def test_environment_overrides_are_checked_too(variables_only):
    run = plan(variables_only, env={"TF_VAR_workers": "-2"})
    assert run.returncode != 0
    assert "workers: must be a whole number from 1 to 500, got -2." in " ".join(run.stderr.split())


PRICE = 'spot_max_price: must be empty or a positive price in USD per hour such as "0.25", got'
TYPES = "worker_instance_types: each entry must be an x86_64 EC2 instance type such as c6i.xlarge"
BAD = [
    ("-var=workers=0", "workers: must be a whole number from 1 to 500, got 0."),
    ("-var=workers=2.5", "workers: must be a whole number from 1 to 500, got 2.5."),
    ("-var=worker_instance_types=[]", "worker_instance_types: must not be empty, got []."),
    ('-var=worker_instance_types=["c7g.xlarge"]', TYPES),
    ('-var=worker_instance_types=["c6i.large","big"]', 'cannot run a node), got ["c6i.large","big"].'),
    ('-var=worker_instance_types=["c6i.huge"]', 'cannot run a node), got ["c6i.huge"].'),
    ('-var=worker_instance_types=["mac2.metal"]', 'cannot run a node), got ["mac2.metal"].'),
    ('-var=worker_instance_types=["t2.large"]', 'cannot run a node), got ["t2.large"].'),
    ('-var=worker_instance_types=["c6i.large","c6i.large"]', 'at most 40 types, each listed once, got ["c6i.large","c6i.large"].'),
    ("-var=workers=501", "workers: must be a whole number from 1 to 500, got 501."),
    ("-var=spot_max_price=abc", f'{PRICE} "abc".'),
    ("-var=spot_max_price=-1", f'{PRICE} "-1".'),
    ("-var=spot_max_price=0", f'{PRICE} "0".'),
]  # fmt: skip


@pytest.mark.parametrize(("argument", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_overrides_fail_at_plan_naming_setting_and_value(variables_only, argument, message):
    run = plan(variables_only, argument)
    assert run.returncode != 0, f"{argument} was accepted"
    assert "Invalid value for variable" in run.stderr
    text = " ".join(run.stderr.replace("│", " ").split())
    assert message in text, f"the error does not name the setting and value: {run.stderr}"


def test_terraform_and_cdktf_json_accept_the_same_instance_types(synthesized):
    """One source, botocore's EC2 model: the two checks cannot drift apart."""
    from stacks.config import node_instance_types

    (condition, *_) = [
        v["condition"] for v in synthesized["default"]["variable"]["worker_instance_types"]["validation"]
        if "contains(" in v["condition"]
    ]  # fmt: skip
    listed = json.loads(condition.split("contains(", 1)[1].rsplit(", t)", 1)[0])
    assert listed == list(node_instance_types())
    assert "c6i.xlarge" in listed and "c7g.xlarge" not in listed and "mac2.metal" not in listed
