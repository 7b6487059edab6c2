"""`cdktf deploy --var` overrides are checked by real Terraform before anything is created.

Terraform cannot download the AWS provider here, but variables and their validation need no
provider: the stack's own `variable` blocks are planned on their own, offline.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from .conftest import terraform_env


@pytest.fixture(scope="module")
def variables_only(synthesized, tmp_path_factory):
    """A directory holding the custom stack's variables and locals, and outputs that read them."""
    folder = tmp_path_factory.mktemp("variables")
    variables, local_values = synthesized["custom"]["variable"], synthesized["custom"]["locals"]
    outputs = {name: {"value": f"${{var.{name}}}"} for name in variables}
    outputs |= {name: {"value": f"${{local.{name}}}"} for name in local_values}
    config = {"variable": variables, "locals": local_values, "output": outputs}
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


def planned_outputs(run: subprocess.CompletedProcess) -> dict[str, str]:
    """`name = value` lines of a plan's "Changes to Outputs"."""
    return dict(re.findall(r"^\s*\+ (\w+)\s+= (.+)$", run.stdout, re.M))


def test_good_overrides_are_accepted(variables_only):
    run = plan(
        variables_only,
        "-var=min_workers=1",
        "-var=max_workers=12",
        '-var=worker_instance_types=["m6i.2xlarge","m5.2xlarge"]',
        "-var=spot_max_price=",
        "-var=max_cost_usd=7.5",
    )
    assert run.returncode == 0, run.stderr
    outputs = planned_outputs(run)
    assert (outputs["min_worker_nodes"], outputs["max_worker_nodes"]) == ("1", "12")
    assert outputs["max_cost_usd"] == "7.5"


@pytest.mark.parametrize(
    ("arguments", "bounds"),
    [
        ((), ("0", "2")),  # cdktf.json's defaults: adaptive from 0 to 2
        (("-var=max_workers=6",), ("0", "6")),
        (("-var=workers=5",), ("5", "5")),  # fixed, as before
        (("-var=workers=3", "-var=min_workers=9", "-var=max_workers=4"), ("3", "3")),  # workers wins
    ],
)
def test_workers_fixes_the_size_and_min_max_bound_it(variables_only, arguments, bounds):
    run = plan(variables_only, *arguments)
    assert run.returncode == 0, run.stderr
    outputs = planned_outputs(run)
    assert (outputs["min_worker_nodes"], outputs["max_worker_nodes"]) == bounds


def test_environment_overrides_are_checked_too(variables_only):
    run = plan(variables_only, env={"TF_VAR_max_workers": "-2"})
    assert run.returncode != 0
    assert "max_workers: must be a whole number from 1 to 500, got -2." in " ".join(run.stderr.split())


PRICE = 'spot_max_price: must be empty or a positive price in USD per hour such as "0.25", got'
TYPES = "worker_instance_types: each entry must be an x86_64 EC2 instance type such as c6i.xlarge"
BAD = [
    ("-var=workers=-1", "workers: must be a whole number from 1 to 500 (a fixed size), or 0 to use min_workers and max_workers, got -1."),
    ("-var=workers=2.5", "workers: must be a whole number from 1 to 500 (a fixed size), or 0 to use min_workers and max_workers, got 2.5."),
    ("-var=min_workers=-1", "min_workers: must be a whole number from 0 to 500, got -1."),
    ("-var=min_workers=501", "min_workers: must be a whole number from 0 to 500, got 501."),
    ("-var=max_workers=0", "max_workers: must be a whole number from 1 to 500, got 0."),
    ("-var=max_workers=1.5", "max_workers: must be a whole number from 1 to 500, got 1.5."),
    ("-var=min_workers=3", "min_workers: must be at most max_workers, got 3 > 2."),
    ("-var=worker_instance_types=[]", "worker_instance_types: must not be empty, got []."),
    ('-var=worker_instance_types=["c7g.xlarge"]', TYPES),
    ('-var=worker_instance_types=["c6i.large","big"]', 'cannot run a node), got ["c6i.large","big"].'),
    ('-var=worker_instance_types=["c6i.huge"]', 'cannot run a node), got ["c6i.huge"].'),
    ('-var=worker_instance_types=["mac2.metal"]', 'cannot run a node), got ["mac2.metal"].'),
    ('-var=worker_instance_types=["t2.large"]', 'cannot run a node), got ["t2.large"].'),
    ('-var=worker_instance_types=["c6i.large","c6i.large"]', 'at most 40 types, each listed once, got ["c6i.large","c6i.large"].'),
    ("-var=workers=501", "got 501."),
    ("-var=spot_max_price=abc", f'{PRICE} "abc".'),
    ("-var=spot_max_price=-1", f'{PRICE} "-1".'),
    ("-var=spot_max_price=0", f'{PRICE} "0".'),
    ("-var=max_cost_usd=0", "max_cost_usd: must be an amount of USD above 0 and at most 100000, such as 20, got 0."),
    ("-var=max_cost_usd=-5", "max_cost_usd: must be an amount of USD above 0 and at most 100000, such as 20, got -5."),
    ("-var=max_cost_usd=100001", "such as 20, got 100001."),
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
    from stacks.checks import node_instance_types

    (condition, *_) = [
        v["condition"] for v in synthesized["default"]["variable"]["worker_instance_types"]["validation"]
        if "contains(" in v["condition"]
    ]  # fmt: skip
    listed = json.loads(condition.split("contains(", 1)[1].rsplit(", t)", 1)[0])
    assert listed == list(node_instance_types())
    assert "c6i.xlarge" in listed and "c7g.xlarge" not in listed and "mac2.metal" not in listed
