"""The real `cdktf synth` (npm cdktf-cli) and `python main.py` produce the same configuration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ALLOWED, ROOT

PROJECT_FILES = ("main.py", "stacks", "userdata", "image", "experiments", ".dockerignore")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project with two clusters configured, as a user would write them."""
    folder = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, folder / name)
    config = json.loads((ROOT / "cdktf.json").read_text())
    config["context"]["clusters"] = {
        "dask": {"allowed_cidrs": ALLOWED},
        "big": {"allowed_cidrs": ALLOWED, "workers": 10, "scheduler_market": "on-demand"},
    }
    (folder / "cdktf.json").write_text(json.dumps(config, indent=2))
    return folder


def environment() -> dict[str, str]:
    # Neither variable the tools need: the cdktf wrapper and main.py set them themselves.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CHECKPOINT_DISABLE", "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION")
    }
    # `app` in cdktf.json is `python main.py`: the CLI must find this interpreter as `python`.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["TF_CLI_CONFIG_FILE"] = os.devnull
    return env


def stacks(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("stacks/*/cdk.tf.json"))}


def test_cdktf_cli_and_python_main_agree(project, tmp_path):
    cdktf = shutil.which("cdktf")
    assert cdktf, "cdktf CLI not on PATH: `make cdktf` installs it as .venv/bin/cdktf"
    run = subprocess.run(
        [cdktf, "synth", "--output", str(tmp_path / "cli.out")],
        cwd=project, env=environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "big" in run.stdout and "dask" in run.stdout, run.stdout
    assert "!!!" not in run.stdout + run.stderr and "[ERROR]" not in run.stdout + run.stderr, "no jsii banner"

    run = subprocess.run(
        [sys.executable, "main.py"], cwd=project, env=environment(), capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == "", "no jsii banner"

    from_cli, from_python = stacks(tmp_path / "cli.out"), stacks(project / "cdktf.out")
    assert set(from_cli) == {"dask", "big"}, "one stack per configured cluster"
    assert from_cli == from_python
    assert (
        from_cli["big"]["variable"]["min_workers"]["default"]
        == from_cli["big"]["variable"]["max_workers"]["default"]
        == 10
    )
    for name in from_cli:
        assets = project / "cdktf.out/stacks" / name / "assets/userdata"
        (folder,) = assets.iterdir()
        assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (ROOT / "userdata").iterdir())


def test_cdktf_cli_reports_bad_settings_in_one_line(project, tmp_path):
    config = json.loads((project / "cdktf.json").read_text())
    config["context"]["clusters"]["dask"]["scheduler_market"] = "cheap"
    bad = tmp_path / "bad"
    shutil.copytree(project, bad, ignore=shutil.ignore_patterns("cdktf.out"))
    (bad / "cdktf.json").write_text(json.dumps(config))
    run = subprocess.run(
        [shutil.which("cdktf") or "cdktf", "synth"],
        cwd=bad,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0
    assert 'clusters.dask.scheduler_market: must be "spot" or "on-demand", got "cheap"' in run.stdout + run.stderr
    assert not (bad / "cdktf.out/stacks/dask").exists()
