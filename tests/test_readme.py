"""README.md works as written: CI runs its test command, a fresh clone runs its main job, and
the cdktf wrapper sets what the tools need so the user's shell need not."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def command_after(heading: str) -> str:
    """The first ```bash block after the line that contains `heading`."""
    start = README.index(heading)
    match = re.compile(r"```bash\n(.*?)\n```", re.S).search(README, start)
    assert match, f"no command block after {heading!r}"
    return match.group(1)


MAIN_JOB = command_after("Run the main job")
TESTS = command_after("Run the tests")


def test_ci_runs_the_readme_test_command_character_for_character():
    ci_lines = (ROOT / ".ci/run").read_text().splitlines()
    assert "\n" not in TESTS
    assert TESTS in ci_lines, f"README's test command {TESTS!r} is not a line of .ci/run"


def test_readme_needs_no_file_outside_the_repository():
    for name in re.findall(r"\b([\w./-]+\.md)\b", README):
        assert (ROOT / name).exists(), f"README refers to {name}, which is not in the repository"


def clean_environment(home: Path) -> dict[str, str]:
    """A new shell: no venv active, none of the variables the project sets for itself."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("PIP_", "LANG", "LC_")) or k in ("TERM", "TMPDIR")}
    path = [p for p in os.environ["PATH"].split(os.pathsep) if not Path(p, "activate").exists()]
    env.update(PATH=os.pathsep.join(path), HOME=str(home))
    return env


@pytest.mark.slow
def test_a_fresh_clone_runs_the_main_job_command_as_written(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    env = clean_environment(Path.home())  # the user's own pip cache, as on a laptop
    run = subprocess.run(
        ["bash", "-c", MAIN_JOB], cwd=clone, env=env, capture_output=True, text=True, timeout=900
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Dask dashboard: http://127.0.0.1:" in run.stdout
    assert "Best parameters: " in run.stdout and "Results in results/svc_digits-" in run.stdout
    for alarming in ("Traceback", "!!!!", "end-of-life", "ERROR"):
        assert alarming not in run.stdout + run.stderr, alarming
    (folder,) = (clone / "results").iterdir()
    assert {p.name for p in folder.iterdir()} >= {"cv_results.csv", "heatmap.png", "dask-report.html", "summary.json"}


def test_cdktf_wrapper_keeps_secrets_private_and_the_cli_quiet(tmp_path):
    """The wrapper `make cdktf` writes: umask 077 (outputs.json and the state hold keys), no
    checkpoint calls, no jsii banner, and the venv's python for `python main.py`."""
    wrapper = shutil.which("cdktf")
    assert wrapper, "cdktf not on PATH: `make cdktf` installs it as .venv/bin/cdktf"
    fake = tmp_path / "venv"
    (fake / "bin").mkdir(parents=True)
    (fake / "node/node_modules/.bin").mkdir(parents=True)
    shutil.copy(wrapper, fake / "bin/cdktf")
    (fake / "node/node_modules/.bin/cdktf").write_text(
        '#!/bin/sh\numask\necho "$CHECKPOINT_DISABLE $JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION $*"\n'
        "command -v python\necho secret >outputs.json\n"
    )
    (fake / "node/node_modules/.bin/cdktf").chmod(0o755)
    (fake / "bin/python").symlink_to(sys.executable)
    env = clean_environment(tmp_path)
    run = subprocess.run(
        [str(fake / "bin/cdktf"), "deploy", "dask"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert run.stdout.splitlines() == ["0077", "1 20 deploy dask", str(fake / "bin/python")]
    assert (tmp_path / "outputs.json").stat().st_mode & 0o777 == 0o600
