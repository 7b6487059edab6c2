"""The suite wherever the project is cloned: a clone in a 0700 folder (root's home on most
distributions) boots an emulated scheduler node whose containers, run as the image's user, use
the clone's own venv, although that user cannot enter the folder."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import ROOT
from .emulated.harness import EmulatedDeploy

pytestmark = pytest.mark.slow


def private_clone(home: Path) -> tuple[Path, Path]:
    """A clone of this project under `home` (0700) and a venv of its own with this venv's packages.

    The venv is made as `make test` makes it, without installing again: a .pth file points at the
    packages already installed here, and `dask`, the one console script the image's commands run,
    is written as pip writes it, for the clone's own interpreter.
    """
    home.mkdir(mode=0o700)
    clone = home / "project"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True, timeout=120)
    venv = clone / ".venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site_packages,) = venv.glob("lib/python*/site-packages")
    (site_packages / "project-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = (Path(sys.prefix) / "bin" / "dask").read_text().split("\n", 1)[1]
    (venv / "bin" / "dask").write_text(f"#!{venv}/bin/python3\n{script}")
    (venv / "bin" / "dask").chmod(0o755)
    return clone, venv


def test_a_clone_in_a_private_folder_boots_a_node(emulated_stack, tmp_path):
    settings, document = emulated_stack
    clone, venv = private_clone(tmp_path / "home")
    assert (tmp_path / "home").stat().st_mode & 0o777 == 0o700
    with EmulatedDeploy(settings, document, tmp_path / "deploy", project=clone, venv=venv) as deploy:
        scheduler = deploy.boot("scheduler")
        scheduler.wait_until(lambda: "scheduler up" in scheduler.log(), 180, "scheduler up")
        for container in ("dask-scheduler", "dask-tls-gateway", "dask-autoscaler"):
            assert scheduler.container(container)["status"] == "running", scheduler.container_output(container)
            assert "Permission denied" not in scheduler.container_output(container)
    assert deploy.image["env"]["PATH"].startswith(f"{venv}/bin:"), "the clone's venv, not this one"
    assert (deploy.image_root / "opt" / "dask" / "dask_node" / "gateway.py").read_text() == (
        clone / "image" / "dask_node" / "gateway.py"
    ).read_text()
