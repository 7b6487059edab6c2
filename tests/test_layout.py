"""The code sorted by who runs it: imports go one way, with no circle, and the nodes' package
never imports the laptop's code."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

# Where each top-level package lives, and so what a dotted name refers to.
# The library first: its folder is inside the scripts'.
PACKAGES = {
    "spotsearch": ROOT / "experiments" / "spotsearch",
    "experiments": ROOT / "experiments",
    "stacks": ROOT / "stacks",
    "dask_node": ROOT / "image" / "dask_node",
}


def module_name(path: Path) -> str:
    for package, folder in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def project_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for folder in PACKAGES.values() for path in folder.rglob("*.py")}
    return {name: project_imports(path, set(files)) - {name} for name, path in files.items()}


def test_node_code_does_not_import_the_laptops():
    graph = import_graph()
    for name, imported in graph.items():
        if name.startswith("dask_node"):
            assert not {i for i in imported if not i.startswith("dask_node")}, name


def test_the_node_code_imports_nothing_of_the_project():
    """on_nodes.py runs on nodes that have none of it (tests/test_plain_dask_cluster.py)."""
    graph = import_graph()
    assert graph["spotsearch.on_nodes"] == set()
    assert graph["spotsearch.joblib_backend"], "the control: the graph sees the library's imports"


def test_no_import_circle():
    graph = import_graph()
    assert graph["spotsearch.cluster.connect"], "the graph must see the project's imports"

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, "import circle: " + " -> ".join((*path[path.index(name) :], name))
        for imported in graph.get(name, ()):
            visit(imported, (*path, name))

    for name in graph:
        visit(name, ())


MAX_MODULE_LINES = 300


def test_no_module_is_over_300_lines():
    """One job a module: a module that grows past this holds several, and is split."""
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for folder in PACKAGES.values()
        for path in folder.rglob("*.py")
    }
    assert sizes["experiments/spotsearch/joblib_backend.py"] > 100, "the control: the sizes are read"
    assert {path: lines for path, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}
