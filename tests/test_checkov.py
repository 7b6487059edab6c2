"""checkov over the synthesized JSON: zero failed checks; skips only those in .checkov.yaml."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

CONFIG = ROOT / ".checkov.yaml"


def checkov_binary() -> str:
    """checkov lives in a virtual environment of its own (.ci/run makes .venv-checkov)."""
    for candidate in (os.environ.get("CHECKOV"), str(ROOT / ".venv-checkov/bin/checkov"), shutil.which("checkov")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("checkov not found: run .ci/run, or set CHECKOV to its path")


def expand_dynamic_overrides(doc: dict) -> dict:
    """checkov 3.3.30 crashes on `dynamic` blocks in JSON and then silently drops the graph
    checks of the whole file. Expand the worker group's overrides for the variable's default,
    exactly as Terraform would, so that every check runs."""
    doc = copy.deepcopy(doc)
    for group in doc["resource"]["aws_autoscaling_group"].values():
        template = group["mixed_instances_policy"]["launch_template"]
        template.pop("dynamic")
        types = doc["variable"]["worker_instance_types"]["default"]
        template["override"] = [{"instance_type": t} for t in types]
    return doc


def skipped_in_config() -> set[str]:
    lines = CONFIG.read_text().splitlines()
    skips = {m.group(1) for line in lines if (m := re.match(r"\s*- (CKV2?_\w+)\s*$", line))}
    for check in skips:
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {check}")
        assert lines[index - 1].lstrip().startswith("#"), f"{check} is skipped without a reason in {CONFIG.name}"
    return skips


@pytest.mark.parametrize("variant", ["default", "ondemand", "custom"])
def test_checkov_finds_only_what_the_config_skips_for_a_reason(variant, synthesized, tmp_path):
    """Run without the config's skips, so that they are counted: every finding must be one the
    config skips, and every skip must still be found (a skip nothing needs is removed)."""
    (tmp_path / "cdk.tf.json").write_text(json.dumps(expand_dynamic_overrides(synthesized[variant])))
    run = subprocess.run(
        [checkov_binary(), "--framework", "terraform_json", "--skip-download", "--compact", "-d", str(tmp_path),
         "-o", "json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,  # not the project: checkov reads .checkov.yaml there
    )  # fmt: skip
    report = json.loads(run.stdout)
    results = report["results"]
    assert report["summary"]["parsing_errors"] == 0
    assert "Failed to add block" not in run.stderr, "checkov dropped resources from its graph checks"
    failed = {c["check_id"] for c in results["failed_checks"]}
    unexpected = [f"{c['check_id']} {c['check_name']} ({c['resource']})" for c in results["failed_checks"]
                  if c["check_id"] not in skipped_in_config()]  # fmt: skip
    assert not unexpected, "checkov findings:\n" + "\n".join(unexpected)
    assert failed == skipped_in_config(), f"skipped in {CONFIG.name} but not found: {skipped_in_config() - failed}"
    passed = {c["check_id"] for c in results["passed_checks"]}
    # Checkov has no check of a launch template's volume encryption (CKV_AWS_8 reads instances and
    # launch configurations only): tests/test_stack.py asserts it for both launch templates.
    assert {"CKV_AWS_79", "CKV_AWS_136", "CKV_AWS_163", "CKV2_AWS_34"} <= passed, (
        "IMDSv2, ECR encryption and scanning, SSM encryption must be checked"
    )
    # The graph checks ran too: security groups attached to something (CKV2_AWS_5) and IAM
    # policies not attached to users (CKV2_AWS_40) need the graph of resources.
    assert {"CKV2_AWS_5", "CKV2_AWS_40"} <= passed, "the graph checks ran too"
