#!/usr/bin/env python
"""Mutation testing (`make mutation`): mutmut changes the code of the chosen modules one small
change at a time and runs their tests against each change; a change no test notices (a
surviving mutant) is behaviour the suite does not check.

mutmut names a module after its path from the folder it runs in, less a leading `src/`, and
the tests import `spotsearch` and `dask_node` by their package names: so the run happens in a
copy of the project laid out as mutmut expects (.mutation/: src/spotsearch, src/dask_node,
stacks, tests), with the project's pytest settings. Prints each module's score and writes
.mutation/survivors.txt (every surviving mutant, with its diff). Not part of `make test`: it
takes about half an hour on two cores.

    python tests/mutation.py [MODULE ...]     (default: every module in MODULES)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / ".mutation"
# The modules whose behaviour the suite checks in-process or with cheap processes, and their tests.
MODULES = {
    "stacks/checks.py": ["tests/test_config.py"],
    "stacks/config.py": ["tests/test_config.py"],
    "stacks/data_sources.py": ["tests/test_config.py", "tests/test_data_sources.py"],
    "src/spotsearch/cost.py": ["tests/test_cost.py"],
    "src/spotsearch/data_file.py": ["tests/test_data_file.py"],
    "src/spotsearch/study_loop.py": ["tests/test_study_loop.py"],
    "src/spotsearch/search_space.py": ["tests/test_search_space.py"],
    "src/dask_node/worker_autoscaler.py": ["tests/test_node_worker_autoscaler.py"],
    "src/dask_node/cost_cap.py": ["tests/test_node_cost_cap.py"],
}
GOAL = 0.8  # of a module's mutants killed
# Functions whose mutants are listed but not scored: a process's wiring (its flags, its boto3
# clients, its connection to the scheduler), which runs in a process of its own on the emulated
# deploy (tests/test_emulated_adaptive.py, test_emulated_cost_cap.py), never in the in-process
# tests mutmut can follow.
NOT_SCORED = {"dask_node.worker_autoscaler": ("x_main", "x_serve"), "dask_node.cost_cap": ("x_start",)}
LAYOUT = {  # the copy's folders, from the project's
    "src/spotsearch": "experiments/spotsearch",
    "src/dask_node": "image/dask_node",
    "stacks": "stacks",
    "tests": "tests",
    "cdktf.json": "cdktf.json",  # the committed settings, which test_config.py reads
}
# Tests left out of the mutation run: they run the code in a process of their own, where the
# mutated code looks for mutmut's settings in another folder (and fails whatever the mutant),
# or a whole script, which the copy does not hold.
LEFT_OUT = [
    "tests/test_config.py::test_main_prints_one_line_and_exits_non_zero_on_bad_settings",
    "tests/test_data_file.py::test_a_shipped_script_searches_the_users_file",
]
PYPROJECT = """[tool.pytest.ini_options]
pythonpath = ["."]
addopts = "-ra --strict-markers -p no:cacheprovider"
timeout = 600
markers = ["slow: starts real processes or tools; still part of the default run"]

[tool.mutmut]
source_paths = ["src", "stacks"]
only_mutate = {only}
also_copy = ["cdktf.json"]
# A mutant that makes a test hang counts as caught once the test takes 5 times its usual time
# (mutmut's default, 15, spent most of the run waiting on the autoscaler's hanging mutants).
timeout_multiplier = 5.0
pytest_add_cli_args = {args}
pytest_add_cli_args_test_selection = {tests}
"""


def stage(modules: list[str]) -> None:
    shutil.rmtree(STAGE, ignore_errors=True)
    for copy, original in LAYOUT.items():
        if (ROOT / original).is_file():
            shutil.copy2(ROOT / original, STAGE / copy)
        else:
            shutil.copytree(
                ROOT / original, STAGE / copy, ignore=shutil.ignore_patterns("__pycache__", "__snapshots__")
            )
    tests = sorted({test for module in modules for test in MODULES[module]})
    args = ["-p", "no:xdist", *(f"--deselect={test}" for test in LEFT_OUT)]
    settings = PYPROJECT.format(only=json.dumps(modules), tests=json.dumps(tests), args=json.dumps(args))
    (STAGE / "pyproject.toml").write_text(settings)


def results() -> dict[str, Counter]:
    """Each mutated module's mutants by outcome (killed, survived, timeout, ...)."""
    listing = subprocess.run(["mutmut", "results", "--all", "true"], cwd=STAGE, capture_output=True, text=True)
    by_module: dict[str, Counter] = {}
    for name, status in re.findall(r"^\s*([\w.ǁ]+__mutmut_\d+): (.+)$", listing.stdout, flags=re.M):
        module = re.split(r"\.x[_ǁ]", name)[0]  # mutmut's names: module.x_function or module.xǁClassǁmethod
        function = name.removeprefix(f"{module}.").split("__mutmut_")[0]
        scored = function not in NOT_SCORED.get(module, ())
        by_module.setdefault(module, Counter())[status.strip() if scored else "not scored"] += 1
    return by_module


def survivors() -> str:
    listing = subprocess.run(["mutmut", "results"], cwd=STAGE, capture_output=True, text=True).stdout
    names = re.findall(r"^\s*([\w.ǁ]+__mutmut_\d+): survived", listing, flags=re.M)
    diffs = [
        subprocess.run(["mutmut", "show", name], cwd=STAGE, capture_output=True, text=True).stdout for name in names
    ]
    return "\n".join(diffs)


def main(argv: list[str]) -> int:
    modules = argv or list(MODULES)
    unknown = [module for module in modules if module not in MODULES]
    if unknown:
        print(f"error: not a module of this run: {', '.join(unknown)} (known: {', '.join(MODULES)})", file=sys.stderr)
        return 2
    stage(modules)
    with (STAGE / "run.log").open("w") as log:  # mutmut's progress spinner: kept out of the terminal
        run = subprocess.run(["mutmut", "run"], cwd=STAGE, stdout=log, stderr=subprocess.STDOUT)
    if run.returncode != 0:
        print(f"error: mutmut failed; its output: {STAGE / 'run.log'}", file=sys.stderr)
        return run.returncode
    (STAGE / "survivors.txt").write_text(survivors())
    low = []
    print("\n| module | mutants | killed | survived | no test | not scored | score |\n|---|---|---|---|---|---|---|")
    for module, outcomes in sorted(results().items()):
        total = sum(outcomes.values()) - outcomes["not scored"]
        killed = outcomes["killed"] + outcomes["timeout"]  # a mutant that hangs the tests is caught too
        untested = total - killed - outcomes["survived"]
        score = killed / total if total else 1.0
        print(
            f"| {module} | {total + outcomes['not scored']} | {killed} | {outcomes['survived']} | {untested} | "
            f"{outcomes['not scored']} | {score:.0%} |"
        )
        if score < GOAL:
            low.append(module)
    print(f"\nsurvivors, with their diffs: {STAGE / 'survivors.txt'}")
    if low:
        print(f"below {GOAL:.0%}: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
