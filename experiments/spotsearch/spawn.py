"""Processes started with multiprocessing's spawn (the plotting helper, a local cluster's worker
processes) without running the user's script again, and the local workers' environment.

multiprocessing's spawn runs the parent's main script again in each child, as `__mp_main__`,
when `__main__` names its file or module, so that the child can unpickle the script's
functions. A script whose top-level code is its search (no `if __name__ == "__main__":`) would
then run its search again in every child. What these children run is never in the script (the
plots are this package's functions; Dask's workers get the script's functions by value, with
cloudpickle), so while they start, `__main__` names no file.
"""

from __future__ import annotations

import os
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


TRIM = "MALLOC_TRIM_THRESHOLD_"


@contextmanager
def glibc_allocator_defaults() -> Iterator[None]:
    """Dask worker processes started in the block keep glibc's own allocator settings.

    Dask sets MALLOC_TRIM_THRESHOLD_ in its workers (`distributed.nanny.pre-spawn-environ`):
    glibc then hands freed memory back to the system at once, and a text pipeline's fits ran
    12-15% slower (docs/speed.md); a laptop's workers live as long as one run. Dask's nannies
    also leave the variable in the starting process's environment (`os.environ.update`), where
    every later child inherits it: a value equal to Dask's own is taken out for the block, and
    put back after it; a value of the user's own is left alone. The thread limits
    (OMP_NUM_THREADS=1, ...) stay."""
    import dask
    import distributed  # noqa: F401 (loads Dask's distributed settings)

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    dasks = environ.pop(TRIM, None)
    left = os.environ.get(TRIM)
    left_by_dask = dasks is not None and left == str(dasks)
    if left_by_dask:
        del os.environ[TRIM]
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            yield
    finally:
        if left_by_dask:
            os.environ[TRIM] = left
