"""Processes started with multiprocessing's spawn (the plotting helper, a local cluster's worker
processes) without running the user's script again.

multiprocessing's spawn runs the parent's main script again in each child, as `__mp_main__`,
when `__main__` names its file or module, so that the child can unpickle the script's
functions. A script whose top-level code is its search (no `if __name__ == "__main__":`) would
then run its search again in every child. What these children run is never in the script (the
plots are this package's functions; Dask's workers get the script's functions by value, with
cloudpickle), so while they start, `__main__` names no file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def main_script_hidden() -> Iterator[None]:
    """While processes are spawned: `__main__` without its file and spec, then as it was."""
    main = sys.modules["__main__"]
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)
