"""The content hash that tags the computation image. Pure Python: the laptop's library uses it
too, to tell whether a cluster runs this checkout's node image, without loading cdktf."""

from __future__ import annotations

import hashlib
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Everything the Dockerfile copies or reads: the tag changes exactly when one of these does.
IMAGE_INPUTS = ("image", ".dockerignore")


def image_content_hash(root: Path = PROJECT_ROOT) -> str:
    """A short sha256 over the names and bytes of every image input, in a stable order."""
    digest = hashlib.sha256()
    for top in IMAGE_INPUTS:
        path = root / top
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
