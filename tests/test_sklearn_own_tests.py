"""scikit-learn's own search tests, from the installed scikit-learn, with every search fitted
through `fit_on_cluster` on worker processes (tests/sklearn_on_cluster.py): what passes plainly
passes through the cluster, but for the listed differences, which plain scikit-learn with
n_jobs=2 shares."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from .conftest import ROOT
from .sklearn_on_cluster import DIFFERENCES

MODULES = ["sklearn.model_selection.tests.test_search", "sklearn.model_selection.tests.test_successive_halving"]


def run_sklearn_tests(tmp_path: Path, mode: str, *, only_differences: bool = False) -> tuple[dict, object]:
    """Each test's outcome (passed, failed, skipped, xfailed...) by its id, from a pytest run of
    its own: scikit-learn's conftest and settings, not this project's."""
    import sklearn

    report = tmp_path / f"{mode}.xml"
    env = {
        **os.environ,
        "SKLEARN_SEARCH_MODE": mode,
        "SKLEARN_ONLY_DIFFERENCES": "1" if only_differences else "",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "image")]),
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.sklearn_on_cluster", "--pyargs", *MODULES, "-q",
         "-p", "no:cacheprovider", "--rootdir", str(Path(sklearn.__file__).parent), "-o", "addopts=",
         "--junitxml", str(report)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):  # noqa: S314 (what our own pytest run wrote)
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        skipped = next((child for child in case if child.tag == "skipped"), None)
        if skipped is not None and skipped.get("type") == "pytest.xfail":
            outcomes[name] = "xfailed"
        else:
            outcomes[name] = kinds[0] if kinds else "passed"
    return outcomes, run


@pytest.mark.slow
def test_scikit_learns_search_tests_pass_through_the_cluster_but_for_the_listed_differences(tmp_path):
    outcomes, run = run_sklearn_tests(tmp_path, "cluster")
    failed = sorted(name for name, outcome in outcomes.items() if outcome in ("failure", "error"))
    assert not failed, "\n".join(failed) + run.stdout[-5000:]
    assert sum(outcome == "passed" for outcome in outcomes.values()) > 200, "the two modules ran"
    assert run.returncode == 0, run.stdout[-5000:]


@pytest.mark.slow
def test_each_listed_difference_fails_with_plain_scikit_learn_and_two_jobs_too(tmp_path):
    outcomes, run = run_sklearn_tests(tmp_path, "n_jobs=2", only_differences=True)
    assert outcomes and set(outcomes.values()) == {"xfailed"}, run.stdout[-5000:]
    assert len(outcomes) >= len(DIFFERENCES)
