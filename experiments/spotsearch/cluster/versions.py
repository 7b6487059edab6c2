"""The client's packages against the cluster's, and node code older than this checkout."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from spotsearch.cluster.messages import ClusterError

# The project folder this library was installed from (editable): its stacks/ tag the node image.
CHECKOUT = Path(__file__).resolve().parents[3]

# What must be identical on the client and every node, or pickled work breaks in odd ways.
MATCHED_PACKAGES = ("python", "dask", "distributed", "sklearn", "numpy", "cloudpickle")


def version_mismatches(versions: dict) -> list[str]:
    """'package: client X, <where> Y' for every matched package that differs anywhere."""

    def normalized(package: str, version: str | None) -> str | None:
        # Python patch releases pickle alike; minor releases do not.
        return ".".join(version.split(".")[:2]) if package == "python" and version else version

    client = versions["client"]["packages"]
    nodes = {"scheduler": versions["scheduler"]["packages"]}
    nodes.update({address: info["packages"] for address, info in versions["workers"].items()})
    problems = []
    for package in MATCHED_PACKAGES:
        mine = normalized(package, client.get(package))
        theirs = {where: normalized(package, p.get(package)) for where, p in nodes.items()}
        different = {where: v for where, v in theirs.items() if v != mine}
        if different:
            where, version = next(iter(sorted(different.items())))
            more = f" (and {len(different) - 1} more)" if len(different) > 1 else ""
            name = "scikit-learn" if package == "sklearn" else package
            problems.append(f"{name}: client {mine}, {where} {version}{more}")
    return problems


def check_versions(client) -> None:
    problems = version_mismatches(client.get_versions(packages=["sklearn"]))
    if problems:
        raise ClusterError(
            "client and cluster differ: " + "; ".join(problems) + " - install requirements.txt and redeploy"
        )


def stale_code_warning(image_uri: str) -> str | None:
    """A warning when the nodes run another node image (image/: the daemons and the pinned
    packages) than this checkout builds. The laptop's library is not in the image: its node code
    travels with each search, so an edit to it never makes a cluster stale."""
    content = CHECKOUT / "stacks" / "content.py"
    if not content.is_file():  # spotsearch installed from a copy without the checkout around it
        return None
    spec = importlib.util.spec_from_file_location("spotsearch_checkout_content", content)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    deployed, local = image_uri.rpartition(":")[2].removesuffix("-lab"), module.image_content_hash(CHECKOUT)
    if deployed == local:
        return None
    return (
        f"warning: the nodes run image {deployed}, built from other node code (image/) than this checkout's "
        f"({local}); the search runs, with the nodes' daemons as deployed - run `cdktf deploy` to ship your changes"
    )
