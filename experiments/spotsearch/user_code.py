"""The user's own code on the nodes: modules a search uses that the image does not have.

A search whose pipeline uses a transformer from the user's own module (`mytools.py` beside the
script, or a package `src/`) is pickled by reference to that module: the scheduler and every
worker must import it, and the image holds only its pinned packages and the node daemons. Before
the search, `ship` finds the modules the search refers to, sends the user's own (source files
on this machine, not installed packages) to the scheduler and every worker, present and future
(Dask's upload plugins), and names in one line any module the nodes still cannot import.

This project's own node code (experiments/spotsearch/on_nodes.py, under its hashed name: see
node_code.py) travels the same way, before each search: no image holds it, so a laptop edit
never makes a cluster stale, and any Dask cluster with the pinned packages runs a search.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

from spotsearch import node_code
from spotsearch.cluster.messages import ClusterError, console

# The interpreter's own, or this package's (whose node code `ship` sends itself).
NOT_SENT = {"__main__", "builtins", "spotsearch", node_code.NAME}


def referenced_modules(*objects) -> set[str]:
    """Top-level names of the modules that pickling `objects` by reference would need."""
    import cloudpickle

    found: set[str] = set()

    class Recorder(cloudpickle.Pickler):
        def persistent_id(self, obj):
            owner = obj if isinstance(obj, type) or (callable(obj) and hasattr(obj, "__qualname__")) else type(obj)
            module = getattr(owner, "__module__", None)
            if isinstance(module, str):
                found.add(module.partition(".")[0])
            return None

    # Data buffers are skipped (protocol 5, out of band): only the objects' kinds matter here.
    # What cannot be pickled at all (a cv generator, say) is not sent as such by every engine
    # (dask-ml splits on the client); where it must be, the search fails saying so.
    with contextlib.suppress(pickle.PicklingError, TypeError, AttributeError):
        Recorder(io.BytesIO(), protocol=5, buffer_callback=lambda _: False).dump(objects)
    return found


def own_source(name: str) -> Path | None:
    """The file or package folder of `name` when it is the user's own code: a source file on
    this machine that is neither part of Python nor an installed package."""
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if name in NOT_SENT or not file or not file.endswith(".py"):
        return None
    installed = {Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    path = Path(file).resolve()
    if any(path.is_relative_to(folder) for folder in installed):
        return None
    return path.parent if path.name == "__init__.py" else path


def package_files(name: str, folder: Path) -> list[Path]:
    """The files of package `name` (at `folder`) to send, relative to it: the source of each of
    its modules this process has imported (what unpickling the search imports there), and the
    `__init__.py` of every package they are in. Nothing else: not the package's other files, no
    hidden folder or virtual environment in it, and no file whose real path leaves it (a
    `creds.py` that links to a credentials file)."""
    root = folder.resolve()
    # The package as its modules name their files (the project's path may hold a symlink).
    seen = Path(os.path.abspath(sys.modules[name].__file__)).parent
    chosen: set[Path] = set()
    for module_name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not (module_name == name or module_name.startswith(name + ".")) or not file or not file.endswith(".py"):
            continue
        path = Path(os.path.abspath(file))
        if not path.is_relative_to(seen) or not path.resolve().is_relative_to(root):
            continue
        relative = path.relative_to(seen)
        if any(part.startswith(".") for part in relative.parts) or _in_a_virtual_environment(root, relative):
            continue
        chosen.add(relative)
        for parent in relative.parents:
            if (root / parent / "__init__.py").is_file() and not (root / parent / "__init__.py").is_symlink():
                chosen.add(parent / "__init__.py")
    return sorted(chosen)


def _in_a_virtual_environment(root: Path, relative: Path) -> bool:
    return any((root / parent / "pyvenv.cfg").exists() for parent in relative.parents)


def _missing(client, names: list[str]) -> dict[str, str]:
    """Module name -> where it is missing (the scheduler, or a worker's address)."""
    missing_on_the_cluster = node_code.module().missing_on_the_cluster
    where: dict[str, str] = {}
    for name in client.run_on_scheduler(missing_on_the_cluster, names):
        where.setdefault(name, "the scheduler")
    for worker, missing in client.run(missing_on_the_cluster, names).items():
        for name in missing:
            where.setdefault(name, f"worker {worker}")
    return where


def _upload(client, name: str, source: Path, files: list[Path] | None, *, scheduler: bool) -> list[str]:
    """Module `name` to every worker, those that join later included, and to the scheduler if
    asked: the file `source`, or the `files` (relative to it) of the package folder `source`.
    Named after the module, so that a newer upload replaces an older one. Returns the files sent."""
    from distributed.diagnostics.plugin import SchedulerUploadFile, UploadFile

    with tempfile.TemporaryDirectory(prefix="dask-user-code-") as folder:
        if files is not None:  # a package: a zip of its source files, importable from sys.path
            upload = Path(folder) / f"{name}.zip"
            with zipfile.ZipFile(upload, "w") as archive:
                for relative in files:
                    archive.write(source / relative, Path(name) / relative)
            sent = [str(Path(name) / relative) for relative in files]
        else:
            upload = Path(folder) / f"{name}.py"
            upload.write_bytes(source.read_bytes())
            sent = [upload.name]
        # Loaded there at once (a zip is put on sys.path): a module that fails to import says so
        # now, and a newer upload replaces a module imported before.
        try:
            if scheduler:
                client.register_plugin(SchedulerUploadFile(str(upload)), name=f"user-code-{name}")
            client.register_plugin(UploadFile(str(upload)), name=f"user-code-{name}")
        except Exception as error:
            raise ClusterError(
                f"the nodes cannot import `{name}`, which the search uses: {type(error).__name__}: {error}"
            ) from None
    return sent


def ship(client, *objects) -> list[str]:
    """Send the user's own modules that `objects` need to the cluster; returns their names.
    ClusterError naming a module the nodes cannot import, before any work is sent."""
    needed = sorted(referenced_modules(*objects) - NOT_SENT)
    # A scheduler or workers in this process (the local default) import what this process
    # imports; loading an upload there would reload the user's module under their objects.
    here = os.getpid()
    scheduler_elsewhere = client.run_on_scheduler(os.getpid) != here
    workers = client.run(os.getpid)
    workers_elsewhere = any(pid != here for pid in workers.values()) if workers else scheduler_elsewhere
    if not (scheduler_elsewhere or workers_elsewhere):
        return []
    if workers_elsewhere:
        _upload(client, node_code.NAME, node_code.SOURCE, None, scheduler=scheduler_elsewhere)
    if not needed:
        return []
    own = {name: source for name in needed if (source := own_source(name)) is not None}
    if workers_elsewhere and own:
        sent = [
            file
            for name, source in own.items()
            for file in _upload(
                client, name, source, package_files(name, source) if source.is_dir() else None,
                scheduler=scheduler_elsewhere,
            )
        ]  # fmt: skip
        console(f"sent your own code to the cluster: {', '.join(sent)}")
    if missing := _missing(client, needed):
        name, where = next(iter(sorted(missing.items())))
        hint = (
            "it is your own module and could not be sent"
            if name in own
            else "add its package to image/requirements.txt (and requirements.txt) and redeploy"
        )
        raise ClusterError(f"the nodes cannot import `{name}` ({where}), which the search uses: {hint}")
    return sorted(own)
