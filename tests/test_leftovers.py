"""The session-end check (tests/leftovers.py) sees a process whose parent is gone, and ends it."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def test_an_orphaned_process_is_found_and_killed():
    # In a process of its own: this one's session check must not see the orphan.
    code = (
        "import subprocess, sys; sys.path.insert(0, sys.argv[1]); from tests import leftovers\n"
        "leftovers.GRACE_SECONDS = 1; leftovers.become_subreaper()\n"
        "subprocess.run(['sh', '-c', 'sleep 300 & exit 0'], check=True)\n"
        "left = leftovers.leftover_processes(); print([p.cmdline() for p in left]); leftovers.kill(left)\n"
        "print(leftovers.leftover_processes())\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["[['sleep', '300']]", "[]"]
