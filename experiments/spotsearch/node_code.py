"""This project's node code (on_nodes.py) as the nodes and this process import it: under a name
made of its content's hash, `spotsearch_nodes_<hash>`.

What a fit's task refers to by name is then exactly this checkout's code: a cluster that kept
an older laptop's version (an upload replaces a module file but not the module a worker has
imported) or that serves two laptops runs each one's own, and nothing of the node code can
shadow an installed spotsearch (a worker process of this machine has it). `user_code.ship`
sends the file before each search.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).with_name("on_nodes.py")
NAME = "spotsearch_nodes_" + hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


def module() -> ModuleType:
    """The node code, imported under its hashed name (once per process)."""
    if NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(NAME, SOURCE)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[NAME] = loaded
        spec.loader.exec_module(loaded)
    return sys.modules[NAME]
