"""The README and the docs pages work as written: every Python block of the README and of the
searches page runs, and so does every shell block of theirs that needs no AWS account (```bash;
those that need one are ```console). The public entry points' docstring examples run too."""

from __future__ import annotations

import doctest
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow

RUN_AS_WRITTEN = [ROOT / "README.md", ROOT / "docs" / "searches.md"]
TESTED_ELSEWHERE = {"make test"}  # CI runs it (tests/test_readme.py); the main job in a fresh clone too


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for page in RUN_AS_WRITTEN:
        for index, match in enumerate(
            re.finditer(rf"^( *)```{language}\n(.*?)\n\1```$", page.read_text(), re.S | re.M)
        ):
            code = "\n".join(line.removeprefix(match.group(1)) for line in match.group(2).splitlines())
            found.append((f"{page.name}-{index}", code))
    return found


def in_the_venv() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def data_in_s3(request) -> None:
    """The S3 object the blocks on data in S3 name, in moto's S3 on loopback (the user's AWS)."""
    import io

    import boto3
    from sklearn.datasets import load_breast_cancer

    request.getfixturevalue("aws_on_loopback")
    s3 = boto3.session.Session().client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="my-data")
    body = io.BytesIO()
    load_breast_cancer(as_frame=True).frame.rename(columns={"target": "label"}).to_parquet(body)
    s3.put_object(Bucket="my-data", Key="emails/train.parquet", Body=body.getvalue())


@pytest.mark.parametrize(("where", "code"), blocks("python"), ids=[name for name, _ in blocks("python")])
def test_every_python_block_runs_as_written(where, code, tmp_path, request):
    if "s3://" in code:
        data_in_s3(request)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=in_the_venv(), capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stderr


SHELL = [(name, code) for name, code in blocks("bash") if code not in TESTED_ELSEWHERE and "venv" not in code]


@pytest.mark.parametrize(("where", "code"), SHELL, ids=[name for name, _ in SHELL])
def test_every_shell_block_without_aws_runs_as_written(where, code, tmp_path):
    """In a copy of the project as the user has it (its tracked files), with the venv active."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in listed.splitlines():
        if (ROOT / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tmp_path / name)
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=in_the_venv(),
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]


def test_the_readme_is_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    pages = {path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").glob("*.md")}
    assert pages == set(re.findall(r"\]\((docs/[\w-]+\.md)\)", readme)), "every page, and no other, linked"


def test_blocks_are_found():
    """The control: the tests above would pass on pages with no block at all."""
    assert len(blocks("python")) >= 4 and SHELL


@pytest.mark.parametrize("entry", ["spotsearch.search.fit_on_cluster", "spotsearch.cluster.connect.Cluster",
                                   "spotsearch.script.run"])  # fmt: skip
def test_the_public_entry_points_examples_run(entry, tmp_path, monkeypatch):
    import importlib

    module_name, _, name = entry.rpartition(".")
    target = getattr(importlib.import_module(module_name), name)
    assert "Parameters" in target.__doc__ and ">>> " in target.__doc__
    monkeypatch.chdir(tmp_path)
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(target, name, globs={}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries >= 3
