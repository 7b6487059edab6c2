"""`make mutation`'s setup (tests/mutation.py): every module it mutates and every test it runs
exists in the copy it makes, so a rename cannot quietly leave a module out of the run."""

from __future__ import annotations

import subprocess
import sys

from . import mutation
from .conftest import ROOT


def in_the_project(copy: str) -> str:
    """A path of the copy, as the path of the project it comes from."""
    for copied, original in mutation.LAYOUT.items():
        if copy == copied or copy.startswith(f"{copied}/"):
            return original + copy.removeprefix(copied)
    raise AssertionError(f"{copy} is in none of the copied folders")


def test_every_mutated_module_and_its_tests_exist():
    for module, tests in mutation.MODULES.items():
        assert (ROOT / in_the_project(module)).is_file(), module
        for test in tests:
            assert (ROOT / in_the_project(test)).is_file(), test
    for test in mutation.LEFT_OUT:
        path, _, name = test.partition("::")
        assert f"def {name}(" in (ROOT / in_the_project(path)).read_text(), test


def test_an_unknown_module_is_refused_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "mutation.py"), "stacks/nowhere.py"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.startswith("error: not a module of this run: stacks/nowhere.py (known: stacks/checks.py")
    assert len(run.stderr.splitlines()) == 1
